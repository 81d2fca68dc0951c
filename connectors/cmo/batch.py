"""The CMO's nightly batch-record export: CSV files dropped in a directory, ingested with the
mapping machinery (mappings/cmo/batch_record). Each row is archived as its own payload (the header
line plus that row), so one bad row is quarantined and the rest of the file goes on. A file moves
to done/ once its transaction committed, or to failed/ when it is not a CSV with a header at all
(archived whole and quarantined)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from cgthub import partner_sync, partners
from cgthub.archive import Inbound
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow

DROP_DIR_ENV = "CGTHUB_CMO_DROP_DIR"


def drop_dir() -> Path:
    from cgthub.settings import get_settings, var_dir

    return get_settings().cmo_drop_dir or var_dir() / "drop" / "cmo"


def _rows(data: bytes) -> list[bytes]:
    """Header + one row per payload; [] when the file has no header and rows (not a batch export)."""
    lines = [line for line in data.replace(b"\r\n", b"\n").split(b"\n") if line.strip()]
    if len(lines) < 2 or b"," not in lines[0]:
        return []
    return [lines[0] + b"\n" + line + b"\n" for line in lines[1:]]


def pages(mark: partners.Mark, *, directory: Path | None = None) -> Iterator[partners.Page]:
    """One page per dropped file, its rows as payloads; the file moves once the page committed."""
    folder = directory or drop_dir()
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
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
        yield partners.Page(items, records=len(rows), after_commit=_mover(path, "done" if rows else "failed"))


def _mover(path: Path, into: str) -> Callable[[], None]:
    def move() -> None:
        target = path.parent / into
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)

    return move


def pull(*, database_url: str | None = None, directory: Path | None = None) -> SyncReport:
    """Every dropped file into the hub (what the CMO batch ingest DAG runs, for one directory)."""
    partner = partners.get("cmo_batch")
    return partner_sync.pull_stream(
        partner, partner.pulls[0], database_url=database_url, fetch=lambda mark: pages(mark, directory=directory)
    )
