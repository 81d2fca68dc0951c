"""
CMO ingest: slot confirmations, material receipt, manufacturing start, QC, release and OOS from the CMO's API.

Runs every 10 minutes. One batch task pulls everything new (the connector keeps its cursor), archives every
payload, maps it and appends the canonical events to the ledger (`cgthub.partner_sync.pull`);
nothing here is one task per order. When events actually landed, `announce` emits the partner's
and the ledger's Assets, so the reconciliation and monitoring DAGs run right after. Retries back
off exponentially; a run still going 15 minutes after it was queued raises a Deadline Alert.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Metadata, dag, task

from cgthub.dag_defaults import LEDGER_EVENTS, START, default_args, partner_asset, sync_deadline

PARTNER = "cmo"


@dag(
    dag_id="cgthub_ingest_cmo",
    schedule=timedelta(minutes=10),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    deadline=sync_deadline(PARTNER, timedelta(minutes=15)),
    tags=["cgthub", "ingest", "cmo"],
    doc_md=__doc__,
)
def cgthub_ingest_cmo():
    @task
    def pull_batch() -> dict:
        from cgthub.partner_sync import pull

        return pull(PARTNER)

    @task.short_circuit
    def landed_new_events(summary: dict) -> bool:
        return bool(summary["new_events"])

    @task(outlets=[partner_asset(PARTNER), LEDGER_EVENTS])
    def announce(summary: dict):
        extra = {"partner": PARTNER, "appended": summary["appended"], "orders": len(summary["orders"])}
        yield Metadata(partner_asset(PARTNER), extra)
        yield Metadata(LEDGER_EVENTS, extra)

    summary = pull_batch()
    landed_new_events(summary) >> announce(summary)


cgthub_ingest_cmo()
