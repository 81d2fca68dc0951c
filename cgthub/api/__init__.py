"""The order transparency API (FastAPI): orders, timeline, custody, FHIR, change feed, webhooks."""

from cgthub.api.app import create_app

__all__ = ["create_app"]
