"""The CMO's nightly batch-record export: CSV files dropped in a directory, ingested with the
mapping machinery (mappings/cmo/batch_record). Each row is archived as its own payload (the header
line plus that row), so one bad row is quarantined and the rest of the file goes on. A file moves
to done/ once its transaction committed, or to failed/ when it is not a CSV with a header at all
(archived whole and quarantined)."""

from __future__ import annotations

import os
from pathlib import Path

from cgthub import pipeline, routing
from cgthub.archive import Inbound
from cgthub.store import session_scope
from cgthub.tables import utcnow
from connectors.common.sync_state import SyncReport

DROP_DIR_ENV = "CGTHUB_CMO_DROP_DIR"


def drop_dir() -> Path:
    from cgthub.settings import var_dir

    return Path(os.environ.get(DROP_DIR_ENV) or var_dir() / "drop" / "cmo")


def _rows(data: bytes) -> list[bytes]:
    """Header + one row per payload; [] when the file has no header and rows (not a batch export)."""
    lines = [line for line in data.replace(b"\r\n", b"\n").split(b"\n") if line.strip()]
    if len(lines) < 2 or b"," not in lines[0]:
        return []
    return [lines[0] + b"\n" + line + b"\n" for line in lines[1:]]


def pull(*, database_url: str | None = None, directory: Path | None = None) -> SyncReport:
    folder = directory or drop_dir()
    report = SyncReport(partner="cmo", stream="batch_records")
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    orders: set[str] = set()
    for path in files:
        data = path.read_bytes()
        rows = _rows(data)
        items = [
            Inbound(
                "cmo",
                "batch_record",
                "file",
                payload,
                utcnow(),
                dedupe_key=f"file:{path.name}:{n}",
                content_type="text/csv",
            )
            for n, payload in enumerate(rows or [data], start=1)
        ]
        with session_scope(database_url) as session:
            results = pipeline.ingest_batch(session, items, routing.mapper_for(session))
        report.payloads += len(items)
        report.records += len(rows)
        for result in results:
            report.appended += result.appended
            report.duplicates += result.duplicates
            report.quarantined += result.quarantined
            orders |= result.order_ids
            report.errors.extend(f"{path.name}: {reason}" for reason in result.reasons)
        target = folder / ("done" if rows else "failed")
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)
    report.order_ids = sorted(orders)
    return report
