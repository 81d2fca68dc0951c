"""Incremental sync costs in proportion to what changed.

The CRM sandbox holds N therapy-order records last modified over the past 30 days. A full sync reads and
applies all of them; then 100 records change and an incremental pull (modified-since watermark,
5-minute overlap) runs. Prints both times and the ratio. Target: incremental < 5% of full.
Run: .venv/bin/python -m bench.sync_bench [--records 100000] [--changed 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cgthub import runtime, settings, store
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync


def record(n: int) -> dict[str, object]:
    return {
        "id": f"CRM-{n:06d}",
        "status": "ENROLLED",
        "enrolledAt": "2026-03-02T09:00:00",
        "product": "KYM-CD19",
        "site": {"id": "US-BOS-01", "country": "US"},
        "patient": {"coiId": f"CHW123426{n:06d}", "mrn": f"MRN{n:08d}"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=100)
    args = parser.parse_args()
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'sync-bench.db'}"
    os.environ["CGTHUB_DATABASE_URL"] = url
    settings.get_settings.cache_clear()
    store.upgrade(url)
    runtime.tune_gc()
    app = crm_sandbox.create_app(token_ttl=3600)
    state = app.sandbox_state
    start = datetime.now(UTC) - timedelta(days=30)
    spacing = timedelta(days=29) / args.records
    for n in range(1, args.records + 1):
        state.upsert(record(n), modified_at=start + n * spacing)
    with SandboxServer(app) as server:
        os.environ["AIRFLOW_CONN_CRM_API"] = f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}"
        started = time.perf_counter()
        full = crm_sync.pull()
        full_s = time.perf_counter() - started
        for n in range(1, args.changed + 1):
            state.upsert(
                {
                    **record(n * (args.records // args.changed)),
                    "status": "CANCELLED",
                    "cancelledAt": "2026-03-05T10:00:00",
                    "cancelReason": "PAYER",
                }
            )
        started = time.perf_counter()
        incremental = crm_sync.pull()
        incremental_s = time.perf_counter() - started
    print(f"full sync:        {full.records:>7,} records, {full.appended:>7,} events in {full_s:7.2f} s")
    inc = incremental
    print(f"incremental sync: {inc.records:>7,} records, {inc.appended:>7,} events in {incremental_s:7.2f} s")
    print(f"incremental / full: {incremental_s / full_s:.2%} (target < 5%)")


if __name__ == "__main__":
    main()
