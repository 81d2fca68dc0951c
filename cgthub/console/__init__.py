"""The order console inside Airflow: server-rendered pages signed in through Airflow's auth manager."""

from cgthub.console.app import console_app

__all__ = ["console_app"]
