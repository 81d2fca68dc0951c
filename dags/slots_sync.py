"""
Manufacturing slots: the CMO's published capacity, read into the hub.

Every 30 minutes. Reads each CMO site's places per therapy and day over the scheduling horizon
(config/scheduling.yaml `horizon_days`, plus the shipping days that trail it) from the CMO's API,
and stores them with the CMO's own count of booked places (`cgthub.slots.sync`), so the options
`GET /orders/{id}/slots` and `cgthub slots show` offer, and what booking checks, follow the CMO's
plan. One batch task, retried with backoff while the CMO is out; a run still going after its
deadline raises a Deadline Alert.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from cgthub.dag_defaults import START, default_args, sync_deadline


@dag(
    dag_id="cgthub_slots_sync",
    schedule=CronTriggerTimetable("7,37 * * * *", timezone="UTC"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    deadline=sync_deadline("slots", timedelta(minutes=20)),
    tags=["cgthub", "scheduling"],
    doc_md=__doc__,
)
def cgthub_slots_sync() -> None:
    @task
    def sync_capacity() -> dict[str, int]:
        from cgthub import slots

        return {"slot_days": slots.sync()}

    sync_capacity()


cgthub_slots_sync()
