"""Airflow plugin: the hub's order API and order console inside Airflow's API server and navigation.

- `fastapi_apps` mounts cgthub.orders_view.plugin_app under /cgthub: the order transparency API at
  /cgthub/api (the hub's own bearer-key auth on every data route: Airflow does not protect plugin
  apps) and the console at /cgthub/console (the signed-in Airflow user, through Airflow's own auth
  manager; roles map to hub scopes in config/console_roles.yaml).
- `external_views` adds the console's pages to Airflow's navigation; they open inside Airflow's UI.
- the courier's signed webhooks (its declared receiver, connectors/courier/webhook.py) at
  /cgthub/courier/webhooks/courier, as the `courier-webhook` service serves them on its own port:
  the HMAC signature is checked on every request; without CGTHUB_COURIER_WEBHOOK_SECRET every
  request is refused (503), never taken unsigned. Airflow's API server does not run a mounted app's
  lifespan, so the receiver's own loop that applies payloads it held (503) while the release was not
  in force does not run here: the `cgthub_courier_held` DAG applies them (dags/cgthub_courier_held.py).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from cgthub.orders_view import plugin_app

URL_PREFIX = "/cgthub"
COURIER_WEBHOOK_PREFIX = f"{URL_PREFIX}/courier"  # mounted before URL_PREFIX, which would take its paths


class CourierWebhook:
    """The courier's receiver, made on first use with the secret and database configured then (the
    plugin is imported once per process, before a deployment's settings may be complete)."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from fastapi.responses import JSONResponse

        from cgthub import partners
        from cgthub.settings import get_settings
        from cgthub.store import database_url

        if scope["type"] != "http":
            return
        secret, url = get_settings().courier_webhook_secret, database_url()
        declared = partners.registry().get("courier")
        if not secret.strip() or declared is None or declared.receiver is None:
            refused = JSONResponse({"error": "the courier webhook is not configured on this server"}, status_code=503)
            await refused(scope, receive, send)
            return
        app = self._made.get((secret, url))
        if app is None:
            app = self._made[(secret, url)] = partners.resolve(declared.receiver)(secret=secret, database_url=url)
        await app(scope, receive, send)


def courier_webhook_app() -> Any:
    """A FastAPI app (what Airflow expects a plugin to mount) around the courier's receiver."""
    from fastapi import FastAPI

    app = FastAPI(title="cgthub courier webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/", CourierWebhook())
    return app


class CgthubPlugin(AirflowPlugin):
    name = "cgthub"
    fastapi_apps = [
        {"app": courier_webhook_app(), "url_prefix": COURIER_WEBHOOK_PREFIX, "name": "cgthub courier webhook receiver"},
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
