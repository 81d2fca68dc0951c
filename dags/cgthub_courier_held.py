"""
Courier webhooks held: apply what the courier's webhook receiver archived but did not apply.

The receiver (connectors/courier/webhook.py) archives every signed webhook first. While the hub's
live mapping and configuration files are not the release bundle in force (cgthub.release_guard) it
answers 503 and holds the payload: archived, not applied, with a critical alert. The next webhook
accepted applies what was held first, and the `courier-webhook` service looks every 30 s; but
Airflow's API server, which serves the webhook through the hub's plugin, does not run a mounted
app's lifespan, and after a shipment's last scan the courier sends nothing more.

Every 5 minutes, whatever serves the webhook, one task applies every held courier payload, oldest
first, through the receiver's own `apply_held` (a payload already applied by a webhook or by the
receiver's loop is not applied again). While payloads wait and the release is still not in force,
the task fails and says why; with nothing held a run does nothing. When events landed, `announce`
emits the courier's and the ledger's Assets, as the ingest DAGs do.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from cgthub.dag_defaults import START, announce_new_events, default_args, sync_deadline


@dag(
    dag_id="cgthub_courier_held",
    schedule=CronTriggerTimetable("*/5 * * * *", timezone="UTC"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=3),
    deadline=sync_deadline("courier-held", timedelta(minutes=5)),
    tags=["cgthub", "ingest", "courier"],
    doc_md=__doc__,
)
def cgthub_courier_held():
    @task
    def apply_held() -> dict:
        from connectors.courier.webhook import apply_held

        return apply_held().as_dict()

    announce_new_events("courier", apply_held())


cgthub_courier_held()
