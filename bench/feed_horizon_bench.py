"""What the PostgreSQL change feed's horizon costs a feed read, before and after it became the database's.

Every read of the feed (`GET /events`, webhook delivery, the outbound cursor) first asks for the
horizon. "before" is the server's xmin (`pg_snapshot_xmin(pg_current_snapshot())`), "after" is
`cgthub.changes._PG_HORIZON`: the snapshot's in-progress xids less those seen in another database.
Timed per call, best of `--repeat` rounds of `--calls` calls on one connection, as a server-side
prepared statement (psycopg prepares a statement from its sixth run on a connection, so a pooled
connection's steady state) and unprepared (its first five runs: parsed and planned each time).
Twice: with no transaction held by the bench, and with one holding an xid in the database `postgres`
(a later xid then completes, so the snapshot lists it), where the two horizons part.

Run: .venv/bin/python -m bench.feed_horizon_bench [--pg URL] [--calls 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import psycopg
from sqlalchemy import make_url

from cgthub.changes import _PG_HORIZON

PG = "postgresql://postgres@127.0.0.1:5432/test"
QUERIES = {"before": "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint", "after": _PG_HORIZON.text}


def _per_call_us(conn: psycopg.Connection, sql: str, prepare: bool, calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            conn.execute(sql, prepare=prepare).fetchone()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def _round(conn: psycopg.Connection, label: str, calls: int, repeat: int) -> None:
    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    horizons = {name: (conn.execute(sql).fetchone() or ("?",))[0] for name, sql in QUERIES.items()}
    snapshot = row[0] if row else "?"
    print(f"{label}: snapshot {snapshot}; horizon " + ", ".join(f"{k} {v}" for k, v in horizons.items()))
    for prepare in (True, False):
        timings = {name: _per_call_us(conn, sql, prepare, calls, repeat) for name, sql in QUERIES.items()}
        kind = "prepared  " if prepare else "unprepared"
        print(f"  {kind} us a call: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("CGTHUB_BENCH_PG_URL", PG))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    url = make_url(args.pg).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    other = url.set(database="postgres").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as error:
        print(f"PostgreSQL not reachable at {url.render_as_string()}: {str(error).splitlines()[0]}")
        return 2
    with conn, psycopg.connect(other) as holder:
        print(f"load average {os.getloadavg()[0]:.2f}")
        _round(conn, "nothing held by the bench", args.calls, args.repeat)
        holder.execute("SELECT pg_current_xact_id()")  # holder's transaction stays open, with an xid
        with psycopg.connect(dsn, autocommit=True) as later:
            later.execute("SELECT pg_current_xact_id()")  # completes: xmax passes the held xid
        _round(conn, "an xid held open in database postgres", args.calls, args.repeat)
        holder.rollback()
        print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
