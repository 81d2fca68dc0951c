"""What the Airflow plugin mounts: the hub's API, and an "Orders" page for Airflow's navigation.

Airflow's API server does not authenticate plugin apps, so nothing here is served without the
hub's own auth: the API (cgthub.api.create_app) checks its bearer keys on every data route, and
the Orders page is static HTML that holds no data. The page asks the operator for a hub API key
(kept in the browser tab's sessionStorage only) and reads /api/orders with it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cgthub orders</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5rem;color:#1b1f24}
 table{border-collapse:collapse;width:100%} th,td{padding:.35rem .6rem;border-bottom:1px solid #d0d7de;text-align:left}
 th{background:#f6f8fa} .held{color:#b35900;font-weight:600} .alerts{color:#cf222e;font-weight:600}
 form{margin-bottom:1rem} input{width:28rem}
</style></head><body>
<h2>Orders</h2>
<form id="key-form"><label>Hub API key (scope status:read):
 <input id="key" type="password" autocomplete="off"></label> <button>Show orders</button>
 <select id="market"><option value="">all markets</option><option>US</option><option>DE</option></select></form>
<p id="note">The hub answers only with a valid key; the key stays in this browser tab.</p>
<table><thead><tr>
 <th>order</th><th>market</th><th>site</th><th>status</th><th>since</th><th>open alerts</th>
</tr></thead>
<tbody id="rows"></tbody></table>
<script>
const api = new URL("../api/", document.baseURI);
const keyInput = document.getElementById("key");
keyInput.value = sessionStorage.getItem("cgthub-key") || "";
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}
async function load(event) {
  if (event) event.preventDefault();
  sessionStorage.setItem("cgthub-key", keyInput.value);
  const market = document.getElementById("market").value;
  const url = new URL("orders", api);
  url.searchParams.set("limit", "200");
  if (market) url.searchParams.set("market", market);
  const answer = await fetch(url, {headers: {Authorization: "Bearer " + keyInput.value}});
  const body = await answer.json();
  const rows = document.getElementById("rows"); rows.replaceChildren();
  if (!answer.ok) {
    document.getElementById("note").textContent = body.error ? body.error.message : answer.statusText;
    return;
  }
  document.getElementById("note").textContent = body.orders.length + " orders";
  for (const o of body.orders) {
    const tr = document.createElement("tr");
    tr.append(cell(o.id), cell(o.market), cell(o.site), cell(o.status, o.on_hold ? "held" : ""),
              cell((o.status_since || "").slice(0, 16).replace("T", " ")),
              cell(o.open_alerts || "", o.open_alerts ? "alerts" : ""));
    rows.append(tr);
  }
}
document.getElementById("key-form").addEventListener("submit", load);
if (keyInput.value) load();
</script></body></html>
"""


def plugin_app(database_url: str | None = None) -> FastAPI:
    """The app the plugin mounts under /cgthub: /api (the hub's API) and /ui/orders (the page)."""
    from cgthub.api import create_app

    app = FastAPI(title="cgthub in Airflow", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ui/orders", response_class=HTMLResponse, include_in_schema=False)
    def orders_page() -> str:
        return PAGE

    app.mount("/api", create_app(database_url))
    return app
