"""The Airflow plugin: the hub's API mounted in Airflow's API server behind the hub's own auth, and an Orders view."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cgthub.orders_view import plugin_app
from cgthub.store import session_scope
from tests.api_server import build_orders
from tests.factories import happy_path


@pytest.fixture(scope="module", autouse=True)
def default_hub_db():
    """Airflow imports the plugin once per process: its app serves the hub's configured database."""
    from cgthub import settings, store

    settings.get_settings.cache_clear()
    store.upgrade()


def test_airflow_loads_the_plugin_with_its_app_and_orders_view():
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()
    assert errors == {}
    plugin = next(p for p in plugins if p.name == "cgthub")
    apps, _middlewares = plugins_manager.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "cgthub order transparency API"] == ["/cgthub"]
    external_views, _react = plugins_manager._get_ui_plugins()
    console = [v for v in external_views if v["href"].startswith("/cgthub/console/")]
    assert console == plugin.external_views
    assert console[0]["name"] == "Orders" and console[0]["href"] == "/cgthub/console/orders"
    assert {v["destination"] for v in console} == {"nav"}


@pytest.fixture(scope="module")
def airflow_api():
    """Airflow's own API server app, with plugins mounted as `airflow api-server` does."""
    from airflow.api_fastapi.app import create_app

    with TestClient(create_app(apps="core")) as client:
        yield client
    from airflow import plugins_manager

    for mounted in plugins_manager.get_fastapi_plugins()[0]:
        for route in mounted["app"].routes:
            audit = getattr(getattr(getattr(route, "app", None), "state", None), "audit", None)
            if audit is not None:
                audit.close()


def test_mounted_api_answers_inside_airflow_and_refuses_requests_without_a_hub_key(airflow_api):
    assert airflow_api.get("/cgthub/api/health").json() == {"status": "ok"}
    refused = airflow_api.get("/cgthub/api/orders")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"]
    page = airflow_api.get("/cgthub/ui/orders", follow_redirects=False)
    assert page.status_code == 308 and page.headers["location"] == "/cgthub/console/orders"
    console = airflow_api.get("/cgthub/console/orders", follow_redirects=False)
    assert console.status_code == 303 and console.headers["location"].startswith("/auth/login")


def test_orders_through_the_plugin_app_with_a_scoped_key(db_url):
    from cgthub.api.auth import create_key

    build_orders(db_url, [happy_path(1)[:3], happy_path(2)[:6]])
    with session_scope(db_url) as session:
        _, us_only = create_key(session, name="liaison", scopes=["status:read"], markets=["US"])
    app = plugin_app(db_url)
    hub_api = next(route.app for route in app.routes if getattr(route, "path", "") == "/api")
    with TestClient(app) as client:
        assert client.get("/api/orders", headers={"Authorization": "Bearer nope"}).status_code == 401
        answer = client.get("/api/orders", headers={"Authorization": f"Bearer {us_only}"})
        assert answer.status_code == 200
        assert sorted(o["status"] for o in answer.json()["orders"]) == ["collected", "received_at_cmo"]
        page = client.get("/console/orders", follow_redirects=False)
        assert page.status_code == 303 and "ORD-" not in page.text  # no Airflow session, no data
    hub_api.state.audit.close()  # write the access log while this test's database still exists
