"""Reconciliation: disagreements between the hub, the partners' records and quarantine become findings and alerts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cgthub import ledger, ops_config, reconciliation
from cgthub.lifecycle import OrderStatus, project
from cgthub.model import EventType, Shipment, SourceSystem
from cgthub.ops_tables import ReconciliationReport
from cgthub.reconciliation import PartnerRecord, UnmatchedShipment, reconcile
from cgthub.tables import Alert
from tests.factories import T0, coi, event, happy_path

CONFIG = ops_config.load()
D = timedelta(days=1)
H = timedelta(hours=1)


def _order(n: int, upto: int) -> object:
    return project(f"ORD-{n}", happy_path(n)[:upto])


def _kinds(findings):
    return sorted((f.kind, f.severity) for f in findings)


def test_a_partner_that_agrees_raises_nothing():
    order = _order(1, 7)  # manufacturing since day 9
    record = PartnerRecord("cmo", "crm_order_id", "CRM-00001", OrderStatus.MANUFACTURING, coi(1))
    assert reconcile([order], [record], [], T0 + 10 * D, CONFIG) == []


def test_status_lag_is_a_finding_only_after_the_grace_period():
    order = _order(1, 7)  # collected day 7, in manufacturing since day 9
    stale = PartnerRecord("crm", "crm_order_id", "CRM-00001", OrderStatus.APHERESIS_SCHEDULED)
    # The hub moved past apheresis_scheduled when material was collected (day 7): 24 h of grace.
    assert reconcile([order], [stale], [], T0 + 7 * D + 20 * H, CONFIG) == []
    late = reconcile([order], [stale], [], T0 + 10 * D, CONFIG)
    assert _kinds(late) == [("status_disagreement", "warning")]
    assert "crm says apheresis_scheduled, hub says manufacturing" in late[0].message


def test_cancelled_on_one_side_only_is_critical_at_once():
    order = _order(1, 7)
    record = PartnerRecord("crm", "crm_order_id", "CRM-00001", OrderStatus.CANCELLED)
    assert _kinds(reconcile([order], [record], [], T0 + 9 * D + H, CONFIG)) == [("status_disagreement", "critical")]


def test_partner_ahead_of_the_hub_means_the_hub_missed_an_event():
    order = _order(1, 7)
    record = PartnerRecord("cmo", "crm_order_id", "CRM-00001", OrderStatus.RELEASED)
    (finding,) = reconcile([order], [record], [], T0 + 9 * D + H, CONFIG)
    assert "hub missed an event" in finding.message


def test_coi_mismatch_and_unknown_order():
    order = _order(1, 3)
    records = [
        PartnerRecord("erp", "crm_order_id", "CRM-00001", None, coi(2)),
        PartnerRecord("erp", "erp_sales_order", "SO-404", OrderStatus.ENROLLED),
    ]
    findings = reconcile([order], records, [], T0 + 8 * D, CONFIG)
    assert _kinds(findings) == [("coi_mismatch", "critical"), ("unknown_order", "warning")]
    assert coi(1) in findings[0].message and coi(2) in findings[0].message


def test_orphan_shipments_and_stuck_orders_wait_for_their_thresholds():
    orphan = UnmatchedShipment(7, "SHP-404", T0)
    assert reconcile([], [], [orphan], T0 + 5 * H, CONFIG) == []
    assert _kinds(reconcile([], [], [orphan], T0 + 7 * H, CONFIG)) == [("orphan_shipment", "warning")]

    enrolled = _order(1, 2)  # apheresis scheduled on day 1
    assert reconcile([enrolled], [], [], T0 + 7 * D, CONFIG) == []
    assert _kinds(reconcile([enrolled], [], [], T0 + 9 * D, CONFIG)) == [("stuck_order", "warning")]
    # manufacturing is quiet by nature: 16 days before it counts as stuck (config/ops.yaml)
    manufacturing = _order(1, 7)
    assert reconcile([manufacturing], [], [], T0 + 9 * D + 12 * D, CONFIG) == []
    assert reconcile([project("X", happy_path(1))], [], [], T0 + 400 * D, CONFIG) == []  # infused: over


def test_run_writes_a_report_opens_alerts_and_closes_cleared_ones(session):
    ledger.append_many(session, happy_path(1)[:7])
    orphan = event(
        EventType.SHIPMENT_PICKED_UP,
        99,
        at=T0 + 8 * D,
        system=SourceSystem.COURIER,
        crm="CRM-NOPE",
        shipment=Shipment(shipment_id="SHP-404"),
    )
    ledger.append_many(session, [orphan])  # matches no order: waits in quarantine
    stale = PartnerRecord("crm", "crm_order_id", "CRM-00001", OrderStatus.COLLECTED)

    first = reconciliation.run(session, [stale], T0 + 12 * D, CONFIG)
    assert first.counts() == {"status_disagreement": 1, "orphan_shipment": 1}
    report = session.get(ReconciliationReport, first.report_id)
    assert report.orders_checked == 1 and report.records_checked == 1
    assert {f["kind"] for f in report.findings} == {"status_disagreement", "orphan_shipment"}
    kinds = sorted(session.scalars(select(Alert.kind).where(Alert.status == "open")))
    assert kinds == ["reconciliation.orphan_shipment", "reconciliation.status_disagreement"]

    caught_up = PartnerRecord("crm", "crm_order_id", "CRM-00001", OrderStatus.MANUFACTURING)
    second = reconciliation.run(session, [caught_up], T0 + 12 * D + H, CONFIG)
    assert second.opened == [] and len(second.closed) == 1
    assert sorted(session.scalars(select(Alert.kind).where(Alert.status == "open"))) == [
        "reconciliation.orphan_shipment"
    ]
