"""A CRM record's market is one the hub serves while the hub runs: the `market` transform reads
config/markets as it is when each page arrives. A market file added is accepted from the next page,
one removed refuses the next page's record again (the transform remembers a market it found only
while the folder is unchanged)."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import func, select

from cgthub import partner_sync, pipeline
from cgthub.archive import Inbound
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, QuarantineEntry, utcnow
from tests.test_markets_baseline import config_copy  # noqa: F401 - the fixture: config/ copied, read by the hub


def _page(n: int, country: str) -> bytes:
    record = {
        "id": f"CRM-{n:06d}",
        "status": "ENROLLED",
        "modifiedAt": "2026-03-02T09:05:00",
        "enrolledAt": "2026-03-02T09:00:00",
        "product": "KYM-CD19",
        "site": {"id": "US-BOS-01", "country": country},
        "patient": {"coiId": f"CHW123426{n:06d}", "mrn": f"MRN{n:08d}"},
    }
    return orjson.dumps({"items": [record], "nextCursor": None})


def _ingest(url: str, n: int, country: str) -> pipeline.IngestResult:
    """One page as the CRM sync applies it (`partner_sync.mapper_for`, routed by the record's site)."""
    item = Inbound("crm", "enrollment", "rest", _page(n, country), utcnow(), content_type="application/json")
    with session_scope(url) as session:
        (result,) = pipeline.ingest_batch(session, [item], partner_sync.mapper_for(session))
    return result


def _quarantined(url: str) -> list[tuple[str, str]]:
    with session_scope(url) as session:
        rows = session.execute(select(QuarantineEntry.stage, QuarantineEntry.reason))
        return [(stage, reason) for stage, reason in rows]


def test_a_market_file_counts_from_the_next_page_and_not_once_removed(db_url: str, config_copy: Path) -> None:  # noqa: F811
    served = config_copy / "markets" / "US.yaml"
    assert _ingest(db_url, 1, "US").appended == 1

    moved = served.with_suffix(".away")
    served.rename(moved)  # the operator takes US out of service
    refused = _ingest(db_url, 2, "US")
    assert refused.appended == 0 and refused.quarantined == 1
    assert any("is no market the hub serves" in reason for _stage, reason in _quarantined(db_url))
    again = _ingest(db_url, 3, "US")
    assert again.appended == 0 and again.quarantined == 1  # refused for as long as the file is away

    moved.rename(served)  # and back
    assert _ingest(db_url, 4, "US").appended == 1
    assert _ingest(db_url, 5, "us").appended == 1  # written in capitals, as before

    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 3
    reasons = [reason for _stage, reason in _quarantined(db_url)]
    assert len(reasons) == 2
    assert all("CRM-" not in reason and "MRN" not in reason for reason in reasons)  # no record value quoted
