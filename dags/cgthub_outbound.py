"""
Outbound: tell each partner that declares a push (the CRM, the ERP, the hospital's HL7, the CMO) what changed,
and book the courier for each leg (apheresis scheduled: site to CMO; released: CMO to site).

Runs when new canonical events landed and every 2 minutes (to retry what failed). `route` reads
the order change feed from its cursor and queues one outbox message per interested partner; then
one mapped task per partner drains that partner's queue, so a partner's outage fails (and
retries) only its own task. Failed messages come back with exponential backoff from the outbox
itself; after too many attempts they are dead until an operator replays them.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from cgthub import partners
from cgthub.dag_defaults import LEDGER_EVENTS, START, default_args

PARTNERS = list(partners.pushed())  # every partner that declares a push (connectors/<partner>/__init__.py)


@dag(
    dag_id="cgthub_outbound",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/2 * * * *", timezone="UTC"), assets=LEDGER_EVENTS),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["cgthub", "outbound"],
    doc_md=__doc__,
)
def cgthub_outbound():
    @task
    def route() -> dict:
        from cgthub import outbound
        from cgthub.store import session_scope

        with session_scope() as session:
            return outbound.route(session)

    @task(max_active_tis_per_dagrun=4)
    def drain(partner: str) -> dict:
        from cgthub import outbound

        summary = outbound.drain(partner)
        if summary["failed"]:
            raise RuntimeError(f"{summary['failed']} message(s) to {partner} failed; the outbox retries them")
        return summary

    route() >> drain.expand(partner=PARTNERS)


cgthub_outbound()
