"""
HL7 inbox: apply what the hospital MLLP listener archived.

The listener (`cgthub hl7 listen`) ACKs each message once it is in the raw archive and does no
mapping itself. The HL7 inbox Asset is watched by `HL7InboxTrigger` in the triggerer, which fires
as soon as new messages wait, so this DAG runs within seconds (a 10-minute schedule is the safety
net). One batch task maps and applies everything waiting, oldest first; duplicates (a resend of
the same message) are recognised by the archive and the ledger and applied once.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, dag, task

from cgthub.dag_defaults import HL7_INBOX, START, announce_new_events, default_args, sync_deadline
from cgthub.hl7_inbox_trigger import HL7InboxTrigger

WATCHED_INBOX = Asset(
    name=HL7_INBOX.name,
    uri=HL7_INBOX.uri,
    watchers=[AssetWatcher(name="hl7_inbox_archive", trigger=HL7InboxTrigger(poll_seconds=5))],
)


@dag(
    dag_id="cgthub_hl7_inbox",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/10 * * * *", timezone="UTC"), assets=WATCHED_INBOX),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=3),
    deadline=sync_deadline("hl7", timedelta(minutes=5)),
    tags=["cgthub", "ingest", "hl7"],
    doc_md=__doc__,
)
def cgthub_hl7_inbox():
    @task
    def apply_inbox() -> dict:
        from cgthub.partner_sync import apply_hl7_inbox

        return apply_hl7_inbox()

    announce_new_events("hl7", apply_inbox())


cgthub_hl7_inbox()
