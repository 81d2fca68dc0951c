"""A batch of hospital orders is judged at once: an HL7 file dropped with `cgthub hl7 ingest`
applies the orders of qualified sites, refuses the one from a site no longer qualified that day
(quarantined alone at stage `qualify`, with its critical alert), and judges the whole batch with
one lookup of the orders its messages name, not one per message."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cgthub import qualification, quarantine
from cgthub.cli import app as cli
from cgthub.store import session_scope
from tests.test_qualification import _alerts, _edit
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders, _orm
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)


def test_a_dropped_file_of_orders_is_judged_as_one_batch_and_only_the_unqualified_one_waits(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
    tmp_path: Path,
):
    # US-SITE-1's CART-19 qualification ends the day of the enrolment: its order of the next day is refused.
    _edit(
        config_dir,
        '- {therapy: CART-19, from: 2026-01-01, basis: "test site: training',
        '- {therapy: CART-19, from: 2026-01-01, until: 2026-03-02, basis: "test site: training',
        version=1,
    )
    _enrol_through_crm(
        db_url,
        monkeypatch,
        [_crm_record(n, site, "US", "021zx") for n, site in ((3, "US-SITE-1"), (4, "US-HOU-02"), (5, "US-SEA-03"))],
    )
    calls: list[int] = []
    judge_batch = qualification.judge_batch

    def counted(session, registry, payloads):  # type: ignore[no-untyped-def]
        calls.append(len(payloads))
        return judge_batch(session, registry, payloads)

    monkeypatch.setattr(qualification, "judge_batch", counted)
    feed = tmp_path / "drop" / "orders.hl7"
    feed.parent.mkdir()
    feed.write_bytes(
        b"".join(
            [
                _orm(4, "US-HOU-02", crm="CRM-00004", placer="PL-4", control="B4"),
                _orm(3, "US-SITE-1", crm="CRM-00003", placer="PL-3", control="B3"),  # not qualified on 03-03
                _orm(5, "US-SEA-03", crm="CRM-00005", placer="PL-5", control="B5"),
                # an order the hub does not know yet, from a qualified sender: not refused, it waits for its order
                _orm(6, "US-BOS-01", crm="CRM-00006", placer="PL-6", control="B6"),
            ]
        )
    )
    result = CliRunner().invoke(cli, ["hl7", "ingest", str(feed.parent)], catch_exceptions=False)
    assert (
        "4 messages: 2 accepted, 2 quarantined (AE: 1 site not qualified, 1 no matching order yet)" in result.output
    ), result.output
    assert calls == [4]  # one judgement of the batch's four messages

    orders = _orders(db_url)
    assert orders["CRM-00004"].status == orders["CRM-00005"].status == "apheresis_scheduled"
    assert orders["CRM-00003"].status == "enrolled"
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s, stage=quarantine.Stage.QUALIFY)
        assert entry.reason.startswith(
            "hospital order refused: site US-SITE-1 is not qualified for CART-19 on 2026-03-03"
        )
        assert [r["site"] for r in entry.details["refused"]] == ["US-SITE-1"]
    (alert,) = _alerts(db_url)
    assert alert.order_id == orders["CRM-00003"].id and alert.severity == "critical"
    assert "Doe" not in entry.reason and "MRN" not in alert.message
