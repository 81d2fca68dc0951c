"""What the Airflow plugin mounts: the hub's API and the order console.

Airflow's API server does not authenticate plugin apps, so nothing here is served without auth:
the API (cgthub.api.create_app) checks the hub's bearer keys on every data route, and the console
(cgthub.console) checks the Airflow user's own JWT through Airflow's auth manager on every page.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse


def plugin_app(database_url: str | None = None) -> FastAPI:
    """The app the plugin mounts under /cgthub: /api (the hub's API) and /console (the pages)."""
    from cgthub.api import create_app
    from cgthub.console import console_app

    app = FastAPI(title="cgthub in Airflow", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ui/orders", include_in_schema=False)
    def orders_page(request: Request) -> RedirectResponse:
        """The old address of the Orders page (bookmarks, Airflow's navigation before the console)."""
        return RedirectResponse(f"{request.scope.get('root_path', '')}/console/orders", status_code=308)

    app.mount("/api", create_app(database_url))
    app.mount("/console", console_app(database_url))
    return app
