"""
Reconciliation: does every system tell the same story about each order?

Hourly, and after new events landed. Fetches each partner's current record of its orders (the
connectors' snapshots), compares them with the hub's order record and the quarantine: status
disagreements, COI ids that differ, partner orders the hub never heard of, courier shipments with
no order, orders stuck with no event (`cgthub.reconciliation`). Writes a report row, opens an
alert per finding, closes the ones that cleared, and notifies operators.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from cgthub.dag_defaults import LEDGER_EVENTS, START, default_args
from cgthub.notifier import HubAlertNotifier


@dag(
    dag_id="cgthub_reconciliation",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("17 * * * *", timezone="UTC"), assets=LEDGER_EVENTS),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["cgthub", "reconciliation"],
    doc_md=__doc__,
)
def cgthub_reconciliation():
    @task
    def partner_snapshots() -> list[dict]:
        from cgthub.partner_views import snapshots

        return snapshots()

    @task
    def reconcile(records: list[dict], **context) -> dict:
        from cgthub import ops_config, reconciliation
        from cgthub.partner_views import from_json, run_clock
        from cgthub.store import session_scope

        with session_scope() as session:
            run = reconciliation.run(session, from_json(records), run_clock(context), ops_config.get())
        return {"report_id": run.report_id, "findings": run.counts(), "opened": run.opened, "closed": run.closed}

    @task
    def notify(result: dict, **context) -> dict:
        HubAlertNotifier().notify(context)
        return result

    notify(reconcile(partner_snapshots()))


cgthub_reconciliation()
