"""Airflow plugin: the hub's order API and order console inside Airflow's API server and navigation.

- `fastapi_apps` mounts cgthub.orders_view.plugin_app under /cgthub: the order transparency API at
  /cgthub/api (the hub's own bearer-key auth on every data route: Airflow does not protect plugin
  apps) and the console at /cgthub/console (the signed-in Airflow user, through Airflow's own auth
  manager; roles map to hub scopes in config/console_roles.yaml).
- `external_views` adds the console's pages to Airflow's navigation; they open inside Airflow's UI.
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
            "name": name,
            "href": f"{URL_PREFIX}/console/{page}",
            "destination": "nav",
            "url_route": f"cgthub-{page}",
            "category": "browse",
        }
        for page, name in (
            ("orders", "Orders"),
            ("quarantine", "Quarantine"),
            ("partners", "Partner health"),
            ("mappings", "Mappings in force"),
        )
    ]
