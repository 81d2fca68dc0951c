"""The CMO's nightly batch-record export: CSV files dropped in a directory, ingested with the
mapping machinery (mappings/cmo/batch_record). Each row is archived as its own payload (the header
line plus that row), so one bad row is quarantined and the rest of the file goes on. A file moves
to done/ once its transaction committed, or to failed/ when it is not a CSV with a header at all
(archived whole and quarantined)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from cgthub import drop_folder, partner_sync, partners
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
    """One page per dropped file ready (cgthub.drop_folder), its rows as payloads; the file moves once
    the page committed. Files left alone or set aside, and one that changed while it was read (left
    for the next run), are named in a last page of no payloads, as its problem."""
    folder = directory or drop_dir()
    listed = (
        drop_folder.scan(sorted(folder.iterdir()), wanted=lambda p: p.suffix == ".csv") if folder.is_dir() else None
    )
    notes = list(listed.skipped) if listed else []
    for path in listed.ready if listed else []:
        drop = drop_folder.read(path)
        if isinstance(drop, str):
            notes.append(drop)
            continue
        rows = _rows(drop.data)
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
            for n, payload in enumerate(rows or [drop.data], start=1)
        ]
        yield partners.Page(items, records=len(rows), after_commit=_mover(drop, "done" if rows else "failed", notes))
    if notes:  # the movers above ran before this is asked for: ingest_pages commits each page first
        yield partners.Page([], problem="; ".join(f"drop folder: {note}" for note in notes))


def _mover(drop: drop_folder.Drop, into: str, notes: list[str]) -> Callable[[], None]:
    def move() -> None:
        kept = drop_folder.release(drop, into)
        if kept:
            notes.append(kept)

    return move


def pull(*, database_url: str | None = None, directory: Path | None = None) -> SyncReport:
    """Every dropped file into the hub (what the CMO batch ingest DAG runs, for one directory)."""
    partner = partners.get("cmo_batch")
    return partner_sync.pull_stream(
        partner, partner.pulls[0], database_url=database_url, fetch=lambda mark: pages(mark, directory=directory)
    )
