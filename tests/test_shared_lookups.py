"""A batch of hospital orders reads each order key and order row once: site qualification's lookup of
the orders the messages name is the one the ledger's correlation uses (`correlation.share_answers`),
and the sites correlation checks the senders against come with the ledger's lock of the order rows.
What was read in a transaction or savepoint rolled back since is not used."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from cgthub import correlation, qualification
from cgthub.bulk import rows_by_pairs
from cgthub.cli import app as cli
from cgthub.store import session_scope
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders, _orm


@contextmanager
def _statements() -> Iterator[list[str]]:
    """The statements run through SQLAlchemy's execute meanwhile (the bulk reads go to the driver)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def two_sites_orders_dropped(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Two orders enrolled through the CRM at two sites, and a drop folder holding one file with an
    ORM^O01 from each site: the folder `cgthub hl7 ingest` is given."""
    _enrol_through_crm(
        db_url, monkeypatch, [_crm_record(n, site, "US", "021zx") for n, site in ((4, "US-HOU-02"), (5, "US-SEA-03"))]
    )
    feed = tmp_path / "drop" / "orders.hl7"
    feed.parent.mkdir()
    feed.write_bytes(
        _orm(4, "US-HOU-02", crm="CRM-00004", placer="PL-4", control="B4")
        + _orm(5, "US-SEA-03", crm="CRM-00005", placer="PL-5", control="B5")
    )
    return feed.parent


def test_a_dropped_file_reads_each_order_key_and_row_once(db_url, monkeypatch, tmp_path: Path):
    drop = two_sites_orders_dropped(db_url, monkeypatch, tmp_path)
    key_reads: list[tuple[str, set[tuple[str, str]]]] = []
    for module in (qualification, correlation):

        def spy(session, table, wanted, first, second, pairs, *rest, _module=module.__name__, _real=rows_by_pairs):  # type: ignore[no-untyped-def]
            pairs = list(pairs)
            key_reads.append((_module, set(pairs)))
            return _real(session, table, wanted, first, second, pairs, *rest)

        monkeypatch.setattr(module, "rows_by_pairs", spy)
    with _statements() as statements:
        result = CliRunner().invoke(cli, ["hl7", "ingest", str(drop)], catch_exceptions=False)
    assert "2 messages: 2 accepted" in result.output, result.output
    orders = _orders(db_url)
    assert orders["CRM-00004"].status == orders["CRM-00005"].status == "apheresis_scheduled"
    asked = {key for module, keys in key_reads if module == "cgthub.qualification" for key in keys}
    again = {key for module, keys in key_reads if module == "cgthub.correlation" for key in keys}
    # qualification looks up the references; the ledger's correlation only keys it did not ask (if any)
    assert key_reads[0][0] == "cgthub.qualification" and ("crm_order_id", "CRM-00004") in asked, key_reads
    assert not asked & again, key_reads
    coi_ids = {("coi_id", "CHW123426000004"), ("coi_id", "CHW123426000005")}
    assert coi_ids <= asked | again, key_reads  # every key asked once
    # the orders' sites came with qualification's facts and the ledger's lock: correlation reads none
    assert not [s for s in statements if s.startswith("SELECT orders.id, orders.site FROM")], statements


def test_answers_read_in_a_savepoint_rolled_back_are_not_used(db_url):
    key = ("crm_order_id", "CRM-GONE")
    with session_scope(db_url) as session:
        session.connection()
        savepoint = session.begin_nested()
        correlation.share_answers(session, {key: "ORD-GONE"}, {"ORD-GONE": "US-HOU-02"})
        savepoint.rollback()
        index = correlation.KeyIndex(session)
        index.take_answers()
        assert index.owners([key]) == {}  # read again from the store: no such key
        assert index.site_of("ORD-GONE") is None


def test_answers_are_taken_once_and_hold_in_a_savepoint_of_their_transaction(db_url):
    key = ("crm_order_id", "CRM-SHARED")
    with session_scope(db_url) as session:
        session.connection()
        correlation.share_answers(session, {key: "ORD-SHARED"}, {"ORD-SHARED": "US-HOU-02"})
        with session.begin_nested():  # the ledger's race guard on PostgreSQL
            index = correlation.KeyIndex(session)
            index.take_answers()
            assert index.owners([key]) == {key: "ORD-SHARED"}
            assert index.site_of("ORD-SHARED") == "US-HOU-02"
        again = correlation.KeyIndex(session)
        again.take_answers()
        assert again.owners([key]) == {}  # taken: the next index reads the store
