"""How fast the core takes canonical events: archive -> ledger -> projection, in batches, on SQLite.

The mapper is a pass-through so the figure is the core's ceiling for any connector's ingest path.
Run: .venv/bin/python -m bench.ledger_bench [--orders N] [--batch B] [--database-url URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cgthub import pipeline, runtime, store
from cgthub.archive import Inbound
from cgthub.devtools.samples import happy_path
from cgthub.model import CanonicalEvent
from cgthub.tables import utcnow


class PassThrough:
    mapping_id, version = "bench/pass-through", "1"

    def __init__(self, by_payload: dict[bytes, CanonicalEvent]) -> None:
        self.by_payload = by_payload

    def map(self, payload, *, raw_id, checksum, received_at):
        return [self.by_payload[payload]]


def run(url: str, orders: int, batch: int) -> None:
    store.upgrade(url)
    events = [e for n in range(1, orders + 1) for e in happy_path(n)]
    by_payload = {f"{e.source_system}|{e.source_event_id}".encode(): e for e in events}
    mapper = PassThrough(by_payload)
    now = utcnow()
    items = [Inbound("bench", "event", "file", p, now + timedelta(microseconds=i)) for i, p in enumerate(by_payload)]
    # Per order, events arrive in time order, interleaved across orders as a live feed would deliver them.
    items.sort(key=lambda item: by_payload[item.payload].occurred_at)
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        with store.session_scope(url) as session:
            pipeline.ingest_batch(session, items[start : start + batch], lambda _i: mapper)
    elapsed = time.perf_counter() - started
    rate = len(items) / elapsed
    print(f"{len(items)} events for {orders} orders in batches of {batch}: {elapsed:.2f} s, {rate:,.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    runtime.tune_gc()
    run(url, args.orders, args.batch)


if __name__ == "__main__":
    main()
