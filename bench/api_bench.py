"""How fast the order transparency API answers, on a hub-sized database, on SQLite and PostgreSQL.

Bulk-loads N orders with E ledger entries and E change-feed rows each (SQL bulk inserts / COPY, not
ledger.append), starts `cgthub api serve` (one uvicorn worker), then from a second process:
  * p50/p95/p99 latency of GET /orders/{id} for random ids under C concurrent keep-alive clients;
  * change-feed throughput: GET /events?limit=1000 pages from the start, events/s.

Run: .venv/bin/python -m bench.api_bench [--orders 100000] [--events-per-order 10]
     [--backend sqlite|postgresql|both] [--requests 5000] [--concurrency 4] [--feed-max 1000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from cgthub import store
from cgthub.api.auth import create_key
from cgthub.devtools import scratch_db
from cgthub.devtools.samples import happy_path
from cgthub.ledger import GENESIS, canonical_json
from cgthub.lifecycle import project

PG_ADMIN_URL = os.environ.get("CGTHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARKETS = ["US", "DE", "FR", "ES", "IT", "GB", "NL", "CH"]
TEMPLATE_ID = "ORD-TEMPLATE0000000"
CHANGED = '["status","milestones"]'


# ---------------------------------------------------------------------------------------------- data


def _templates(events_per_order: int) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """(ledger rows, projection JSON per prefix length, change rows) of one order, to stamp out N times."""
    events = happy_path(1)
    events = (events * (events_per_order // len(events) + 1))[:events_per_order]
    rows, projections, change_rows = [], [], []
    previous: dict[str, Any] = {}
    for k, event in enumerate(events, start=1):
        rows.append(
            {
                "event_type": event.event_type.value,
                "source_system": event.source_system.value,
                "occurred_at": event.occurred_at,
                "body": canonical_json(event.to_json_dict()),
            }
        )
        state = project(TEMPLATE_ID, events[:k]).model_dump(mode="json")
        projections.append(json.dumps(state))
        change_rows.append(
            {
                "status": state["status"],
                "previous_status": previous.get("status"),
                "on_hold": state["on_hold"],
                "milestones": json.dumps(state["milestones"]),
                "status_since": datetime.fromisoformat(state["status_since"]) if state["status_since"] else None,
            }
        )
        previous = state
    return rows, projections, change_rows


def _order_ids(orders: int) -> list[str]:
    return [f"ORD-B{n:015d}" for n in range(orders)]


def _order_row(n: int, order_id: str, projection_json: str, status: str, now: datetime, length: int) -> tuple[Any, ...]:
    market = MARKETS[n % len(MARKETS)]
    site = f"{market}-SITE-{n % 25}"
    body = projection_json.replace(TEMPLATE_ID, order_id).replace('"US-SITE-1"', f'"{site}"')
    return (
        order_id,
        "CART-19",
        market,
        site,
        "CMO-EAST",
        None,
        status,
        False,
        now,
        body,
        now,
        now,
        now,
        length,
        "f" * 64,
        length,
    )


ORDER_COLS = (
    "id, therapy, market, site, cmo, coi_id, status, on_hold, status_since, projection, last_event_at, "
    "created_at, updated_at, ledger_length, ledger_head, projected_length"
)
LEDGER_COLS = (
    "order_id, seq, source_system, source_event_id, event_type, occurred_at, recorded_at, body, prev_hash, entry_hash"
)
CHANGE_COLS = (
    "order_id, status, previous_status, on_hold, milestones, changed, status_since, market, site, cmo, recorded_at"
)


def _rows(orders: int, events_per_order: int) -> tuple[list[tuple], Any, Any]:
    """Order rows now; ledger and change rows as generators (interleaved as a live feed would be)."""
    ledger_t, projections, change_t = _templates(events_per_order)
    now = datetime.now(UTC)
    ids = _order_ids(orders)
    final = projections[-1]
    status = json.loads(final)["status"]
    order_rows = [_order_row(n, oid, final, status, now, events_per_order) for n, oid in enumerate(ids)]

    def ledger_rows():
        for n, oid in enumerate(ids):
            prev = GENESIS
            for k, t in enumerate(ledger_t, start=1):
                digest = f"{n:032x}{k:032x}"
                yield (oid, k, t["source_system"], f"bench:{n}:{k}", t["event_type"], t["occurred_at"], now,
                       t["body"], prev, digest)  # fmt: skip
                prev = digest

    def change_rows():
        for k, t in enumerate(change_t):
            for n, oid in enumerate(ids):
                market = MARKETS[n % len(MARKETS)]
                site = f"{market}-SITE-{n % 25}"
                at = now + timedelta(microseconds=k)
                status, previous, hold, since = t["status"], t["previous_status"], t["on_hold"], t["status_since"]
                yield (oid, status, previous, hold, t["milestones"], CHANGED, since, market, site, "CMO-EAST", at)

    return order_rows, ledger_rows, change_rows


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def load_sqlite(path: Path, orders: int, events_per_order: int) -> None:
    order_rows, ledger_rows, change_rows = _rows(orders, events_per_order)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        for table, cols, rows in (
            ("orders", ORDER_COLS, order_rows),
            ("ledger_entries", LEDGER_COLS, ledger_rows()),
            ("order_changes", CHANGE_COLS, change_rows()),
        ):
            marks = ", ".join("?" for _ in cols.split(","))
            db.executemany(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", ([_sqlite_value(v) for v in r] for r in rows)
            )
    db.execute("ANALYZE")
    db.close()


def load_postgres(url: str, orders: int, events_per_order: int) -> None:
    import psycopg

    order_rows, ledger_rows, change_rows = _rows(orders, events_per_order)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table, cols, rows in (
            ("orders", ORDER_COLS, order_rows),
            ("ledger_entries", LEDGER_COLS, ledger_rows()),
            ("order_changes", CHANGE_COLS, change_rows()),
        ):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")


# ---------------------------------------------------------------------------------------------- load


def _latency_worker(port: int, token: str, ids: list[str], count: int, seed: int, out: list[float]) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(count):
        path = f"/orders/{rng.choice(ids)}"
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
    conn.close()


def _feed_walk(port: int, token: str, feed_max: int) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    seen, cursor = 0, None
    started = time.perf_counter()
    while seen < feed_max:
        path = "/events?limit=1000" + (f"&after={cursor}" if cursor else "")
        conn.request("GET", path, headers=headers)
        page = json.loads(conn.getresponse().read())
        if not page["events"]:
            break
        seen += len(page["events"])
        cursor = page["next_cursor"]
    elapsed = time.perf_counter() - started
    conn.close()
    return seen, elapsed


def load_process(
    port: int, token: str, ids: list[str], requests: int, concurrency: int, feed_max: int, results
) -> None:
    """Runs in its own process: the client side must not share the server's interpreter."""
    warm: list[float] = []
    _latency_worker(port, token, ids, 200, 0, warm)
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    per = requests // concurrency
    threads = [
        threading.Thread(target=_latency_worker, args=(port, token, ids, per, i + 1, samples[i]))
        for i in range(concurrency)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies = sorted(x for s in samples for x in s)
    seen, feed_elapsed = _feed_walk(port, token, feed_max)
    results.put({"latencies": latencies, "wall": wall, "feed_events": seen, "feed_seconds": feed_elapsed})


def _serve(url: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "cgthub.cli", "api", "serve", "--port", "0", "--no-webhooks"]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert server.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # drain
            return server, int(found[1])
        if server.poll() is not None:
            break
    server.kill()
    raise RuntimeError("the API server did not start")


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with scratch_db.migrated(backend, PG_ADMIN_URL, prefix="bench") as url:
        started = time.perf_counter()
        if backend == "sqlite":
            load_sqlite(Path(make_url(url).database or ""), args.orders, args.events_per_order)
        else:
            load_postgres(url, args.orders, args.events_per_order)
        load_seconds = time.perf_counter() - started
        with store.session_scope(url) as session:
            _, token = create_key(session, name="bench", scopes=["status:read"], all_data=True)
        store.dispose_engines()
        server, port = _serve(url)
        try:
            results: Any = multiprocessing.get_context("spawn").Queue()
            ids = _order_ids(args.orders)
            proc = multiprocessing.get_context("spawn").Process(
                target=load_process,
                args=(port, token, ids, args.requests, args.concurrency, args.feed_max, results),
            )
            proc.start()
            outcome = results.get(timeout=3600)
            proc.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    latencies = outcome["latencies"]
    return {
        "backend": backend,
        "load_s": load_seconds,
        "requests": len(latencies),
        "rps": len(latencies) / outcome["wall"],
        "p50": _pct(latencies, 0.50),
        "p95": _pct(latencies, 0.95),
        "p99": _pct(latencies, 0.99),
        "feed_events": outcome["feed_events"],
        "feed_rate": outcome["feed_events"] / outcome["feed_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--events-per-order", type=int, default=10, help="ledger entries and feed changes per order")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--requests", type=int, default=5000, help="GET /orders/{id} requests to time")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent keep-alive clients")
    parser.add_argument("--feed-max", type=int, default=10**9, help="stop the feed walk after this many events")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    events = args.orders * args.events_per_order
    print(f"dataset: {args.orders:,} orders, {events:,} ledger events, {events:,} change-feed rows")
    print(f"load: {args.requests:,} GET /orders/{{id}} from {args.concurrency} clients in a second process; 1 worker")
    for backend in backends:
        r = run(backend, args)
        print(
            f"{r['backend']:>10}: bulk load {r['load_s']:.1f} s | GET /orders/{{id}} p50 {r['p50']:.1f} ms, "
            f"p95 {r['p95']:.1f} ms, p99 {r['p99']:.1f} ms, {r['rps']:,.0f} req/s | "
            f"change feed {r['feed_events']:,} events at {r['feed_rate']:,.0f} events/s"
        )
    print(f"machine: {os.cpu_count()} cores, shared; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
