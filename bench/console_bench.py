"""Server time of the console's orders board on a hub with 10,000 orders, on SQLite and PostgreSQL.

Bulk-loads N orders (3 partner references each; ~6% with open alerts, a third of those held or at
risk), then asks the console app in-process (the ASGI app Airflow mounts, signed in with a real
Airflow JWT) for the board: unfiltered, held only, has alerts, one partner reference. Server time
is the whole request inside the app (auth, query, template), without a network hop; the database
part is the `Server-Timing: db` the page reports.

Run: .venv/bin/python -m bench.console_bench [--orders 10000] [--requests 50] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

TARGET_MS = 300.0
PG_ADMIN_URL = os.environ.get("CGTHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARKETS = ["US", "DE", "FR", "ES", "IT", "GB"]
STATUSES = ["enrolled", "collected", "manufacturing", "qc_testing", "released", "infused"]


def load(url: str, orders: int) -> str:
    """N orders with their references and alerts, by bulk insert into a migrated database; returns one
    CRM id to search for."""
    from cgthub import store
    from cgthub.tables import Alert, Order, OrderKey

    now = datetime.now(UTC)
    order_rows, key_rows, alert_rows = [], [], []
    for n in range(orders):
        order_id = f"ORD-{n:016X}"
        held = n % 50 == 0
        order_rows.append(
            {
                "id": order_id,
                "therapy": "CART-19",
                "market": MARKETS[n % len(MARKETS)],
                "site": f"SITE-{n % 40}",
                "cmo": "CMO-EAST",
                "coi_id": f"CHW123426{n:06d}",
                "status": "on_hold" if held else STATUSES[n % len(STATUSES)],
                "on_hold": held,
                "status_since": now - timedelta(hours=n % 900),
                "projection": {},
                "created_at": now,
                "updated_at": now,
                "ledger_length": 5,
                "ledger_head": "0" * 64,
                "projected_length": 5,
            }
        )
        key_rows += [
            {"kind": "crm_order_id", "value": f"CRM-{n:06d}", "order_id": order_id},
            {"kind": "coi_id", "value": f"CHW123426{n:06d}", "order_id": order_id},
            {"kind": "hospital_placer_order", "value": f"PL-{n:06d}", "order_id": order_id},
        ]
        if n % 17 == 0:
            kind, severity = (
                ("coi_discrepancy", "critical")
                if held
                else ("vein_to_vein_at_risk", "warning")
                if n % 3 == 0
                else ("milestone_overdue", "warning")
            )
            alert_rows.append(
                {
                    "order_id": order_id,
                    "kind": kind,
                    "severity": severity,
                    "message": f"{kind} on {order_id}",
                    "details": {},
                    "dedupe_key": f"{kind}:{order_id}",
                    "status": "open",
                    "opened_at": now,
                }
            )
    engine = store.get_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(Order), order_rows)
        connection.execute(insert(OrderKey), key_rows)
        connection.execute(insert(Alert), alert_rows)
    if url.startswith("postgresql"):
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    return "CRM-004242"


def measure(url: str, requests: int, reference: str) -> dict[str, tuple[float, float, float]]:
    """{scenario: (p50 server ms, p95 server ms, p50 db ms)} for each board the coordinator opens."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from cgthub.airflow_env import migrate_metadata_db
    from cgthub.console import console_app

    migrate_metadata_db()
    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bench", role="op"))
    scenarios = {
        "board (all, 200 most urgent)": {},
        "held": {"held": "true"},
        "has alerts": {"has_alerts": "true"},
        "market DE, at risk": {"market": "DE", "at_risk": "true"},
        "search by CRM id": {"q": reference},
    }
    results = {}
    with TestClient(console_app(url), cookies={"_token": token}) as client:
        for name, params in scenarios.items():
            client.get("/orders", params=params)  # warm caches and the connection pool
            server, db = [], []
            for _ in range(requests):
                started = time.perf_counter()
                answer = client.get("/orders", params=params)
                server.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, answer.text[:300]
                db.append(float(answer.headers["server-timing"].split("dur=")[1]))
            server.sort()
            results[name] = (
                statistics.median(server),
                server[int(len(server) * 0.95) - 1],
                statistics.median(db),
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    os.environ.setdefault("CGTHUB_ENV", "dev")
    home = Path(tempfile.mkdtemp(prefix="cgthub-console-bench-"))
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    from cgthub import airflow_env

    airflow_env.configure()
    from cgthub.devtools.scratch_db import migrated

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    worst = 0.0
    for backend in backends:
        with migrated(backend, PG_ADMIN_URL, prefix="bench") as url:
            started = time.perf_counter()
            reference = load(url, args.orders)
            print(f"{backend}: {args.orders} orders loaded in {time.perf_counter() - started:.1f} s")
            for name, (p50, p95, db) in measure(url, args.requests, reference).items():
                worst = max(worst, p50)
                print(f"  {name:32s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  (db p50 {db:6.1f} ms)")
    verdict = "within" if worst < TARGET_MS else "OVER"
    print(f"worst p50 {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
