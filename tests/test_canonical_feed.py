"""The canonical JSON drop folder, read the way the partner DAGs read it (`partner_sync.pull`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from cgthub import canonical_feed, partner_sync
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry, RawMessage


@pytest.fixture
def drop_folder(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CRM's drop folder in a var dir of this test's own; no connector is reached."""
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("CGTHUB_CONNECTORS", "none")
    return canonical_feed.inbox("crm")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"source_event_id": "caf\xe9"}', "not JSON: not UTF-8 text at byte 24"),
        (b"\xff\xff\xff\xff", "not JSON: not UTF-8 text at byte 0"),
        (b'{"source_event_id": ', "not JSON: Expecting value at byte 20"),
    ],
)
def test_a_file_that_is_not_json_text_is_quarantined_with_a_readable_reason(
    db_url: str, drop_folder: Path, payload: bytes, reason: str
) -> None:
    (drop_folder / "broken.json").write_bytes(payload)

    report = partner_sync.pull("crm", database_url=db_url)

    assert report["quarantined"] == 1
    assert not canonical_feed.pending_files("crm")  # taken: the archive keeps it, the folder moves on
    with session_scope(db_url, readonly=True) as session:
        entry = session.scalars(select(QuarantineEntry)).one()
        assert (entry.stage, entry.reason) == ("parse", reason)
        assert session.get(RawMessage, entry.raw_id) is not None
