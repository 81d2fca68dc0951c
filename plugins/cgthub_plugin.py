"""Airflow plugin: the hub's order API inside Airflow's API server, and "Orders" in Airflow's navigation.

- `fastapi_apps` mounts cgthub.orders_view.plugin_app under /cgthub: the order transparency API at
  /cgthub/api (the hub's own bearer-key auth on every data route: Airflow does not protect plugin
  apps) and the Orders page at /cgthub/ui/orders.
- `external_views` adds "Orders" to Airflow's navigation; the page opens inside Airflow's UI.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cgthub.orders_view import plugin_app

URL_PREFIX = "/cgthub"


class CgthubPlugin(AirflowPlugin):
    name = "cgthub"
    fastapi_apps = [
        {"app": plugin_app(), "url_prefix": URL_PREFIX, "name": "cgthub order transparency API"},
    ]
    external_views = [
        {
            "name": "Orders",
            "href": f"{URL_PREFIX}/ui/orders",
            "destination": "nav",
            "url_route": "cgthub-orders",
            "category": "browse",
        },
    ]
