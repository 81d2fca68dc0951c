"""/docs and /redoc load every asset from the hub itself: no CDN, so they render with no internet."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from cgthub.api import create_app


def test_docs_pages_reference_only_assets_the_api_serves_itself(db_url):
    app = create_app(db_url)
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            external = re.findall(r"https?://[^\"' )]+", html.text)
            assert external == [], f"{page} loads from elsewhere: {external}"
            assets = re.findall(r"(?:src|href)=['\"](/[^'\"]+)['\"]", html.text) + re.findall(
                r"url: ['\"](/[^'\"]+)['\"]", html.text
            )
            assert assets, f"{page} names no asset"
            for asset in assets:
                answer = client.get(asset)
                assert answer.status_code == 200, f"{page}: {asset} answered {answer.status_code}"
        bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
        assert "SwaggerUIBundle" in bundle
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
