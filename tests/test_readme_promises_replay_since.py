"""README, Mappings (Adding a mapping version, step 6): `cgthub mappings replay ... --dry-run`
"(`--since 2027-01-01T00:00:00+00:00` narrows it)". Through the CLI on SQLite and PostgreSQL: of four
archived CRM payloads, two received before the given time, the dry run with --since maps the two
received since, and the replay with --since corrects only their order, the earlier ones untouched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from cgthub import archive
from cgthub.ledger import OrderKey
from cgthub.store import session_scope
from cgthub.tables import Order, RawMessage
from tests.test_mapping_replay_guard import _ingest_with_v1, _replay, config_dirs  # noqa: F401

SINCE = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds")  # README writes one such time


def _received_before_since(url: str) -> None:
    """CRM-00001's payloads (its enrolment and its resend) received months ago; the others now."""
    with session_scope(url) as s:
        raws = s.scalars(select(RawMessage).where(RawMessage.system == "crm").order_by(RawMessage.id)).all()
        early = [raw.id for raw in raws if b"CRM-00001" in archive.read(s, raw.id)]
        assert len(early) == 2
        s.execute(
            update(RawMessage)
            .where(RawMessage.id.in_(early))
            .values(received_at=datetime.now(UTC) - timedelta(days=90))
        )


def _therapies(url: str) -> dict[str, str | None]:
    with session_scope(url) as s:
        keys = s.execute(select(OrderKey.value, Order.therapy).join(Order, Order.id == OrderKey.order_id))
        return {value: therapy for value, therapy in keys if value.startswith("CRM-")}


def test_since_narrows_a_replay_to_the_payloads_received_from_then(db_url, config_dirs):  # noqa: F811
    _ingest_with_v1(db_url)
    _received_before_since(db_url)
    args = ("--version", "v2", "--market", "US", "--force")
    whole = _replay(db_url, config_dirs, *args, "--dry-run")
    narrowed = _replay(db_url, config_dirs, *args, "--dry-run", "--since", SINCE)
    assert whole.returncode == 0 and narrowed.returncode == 0, narrowed.stderr
    assert "4 payloads mapped" in whole.stdout and "correct 2, add 1" in whole.stdout
    assert "2 payloads mapped" in narrowed.stdout and "correct 1, add 1" in narrowed.stdout, narrowed.stdout

    before = _therapies(db_url)
    done = _replay(db_url, config_dirs, *args, "--since", SINCE)
    assert done.returncode == 0, done.stderr
    after = _therapies(db_url)
    assert after["CRM-00001"] == before["CRM-00001"]  # received before --since: left as v1 mapped it
    assert after["CRM-00003"] != before["CRM-00003"] and after["CRM-00002"] is not None  # corrected, added
