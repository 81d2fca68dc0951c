"""
Deadline monitoring: milestones overdue, temperature excursions, vein-to-vein time at risk.

Every 15 minutes and after new events landed. Checks every open order against the thresholds in
config/ops.yaml (e.g. material collected but not received at the CMO within the shipper's hold
time), opens an alert per breach, closes those that cleared, and sends every new alert to
operators through the hub's Airflow notifier (log + webhook).
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from cgthub.dag_defaults import LEDGER_EVENTS, START, default_args
from cgthub.notifier import HubAlertNotifier


@dag(
    dag_id="cgthub_monitoring",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/15 * * * *", timezone="UTC"), assets=LEDGER_EVENTS),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["cgthub", "monitoring"],
    doc_md=__doc__,
)
def cgthub_monitoring():
    @task
    def check_deadlines(**context) -> dict:
        from cgthub import deadlines, ops_config
        from cgthub.partner_views import run_clock
        from cgthub.store import session_scope

        with session_scope() as session:
            result = deadlines.run(session, run_clock(context), ops_config.get())
        return {"checked": result.orders_checked, "opened": result.opened, "closed": result.closed}

    @task
    def checkpoint_ledger() -> dict:
        """Sign every moved chain head into the checkpoint file outside the database; a chain that
        contradicts an earlier checkpoint is not recorded and opens a critical alert."""
        from cgthub import alerts, audit_trail, ledger_anchor
        from cgthub.store import session_scope

        with session_scope() as session:
            result = ledger_anchor.checkpoint(session)
            for order_id, problem in result.problems:
                alerts.raise_alert(
                    session,
                    kind="ledger_tampered",
                    severity=alerts.Severity.CRITICAL,
                    order_id=order_id or None,
                    message=f"ledger contradicts its checkpoint: {problem}; run `cgthub ledger verify`",
                    dedupe_key=f"ledger_tampered:{order_id}:{problem}"[:300],
                )
            trail = audit_trail.checkpoint(session)
            for problem in trail.problems:
                alerts.raise_alert(
                    session,
                    kind="audit_trail_tampered",
                    severity=alerts.Severity.CRITICAL,
                    message=f"audit trail contradicts its checkpoint: {problem}; run `cgthub audit verify`",
                    dedupe_key=f"audit_trail_tampered:{problem}"[:300],
                )
        return {"recorded": result.recorded, "orders": result.orders, "problems": len(result.problems)}

    @task
    def notify(result: dict, **context) -> dict:
        HubAlertNotifier().notify(context)
        return result

    anchored = checkpoint_ledger()
    anchored >> notify(check_deadlines())


cgthub_monitoring()
