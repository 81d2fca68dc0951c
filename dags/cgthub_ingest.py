"""
Partner ingest: one DAG per partner system, all of the same shape, made from the partners'
declarations (connectors/<partner>/__init__.py).

Each runs on the schedule its partner declares (cgthub.partners). One batch task pulls everything
new from where the stream's watermark stands, archives every payload, maps it and appends the
canonical events to the ledger (`cgthub.partner_sync.pull`); nothing here is one task per order.
When events actually landed, `announce` emits the partner's and the ledger's Assets, so the
reconciliation and monitoring DAGs run right after. Retries back off exponentially; a run still
going after its deadline (counted from when it was queued) raises a Deadline Alert.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from cgthub import partners
from cgthub.dag_defaults import START, announce_new_events, default_args, sync_deadline


def ingest_dag(partner: str, sends: str, every: timedelta | str, deadline: timedelta, tag: str) -> object:
    @dag(
        dag_id=f"cgthub_ingest_{partner}",
        schedule=every,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        deadline=sync_deadline(partner, deadline),
        tags=["cgthub", "ingest", tag],
        doc_md=f"**{partner} ingest**: {sends}.\n\n{__doc__}",
    )
    def ingest():
        @task
        def pull_batch() -> dict:
            from cgthub.partner_sync import pull

            return pull(partner)

        announce_new_events(partner, pull_batch())

    return ingest()


# One DAG per partner that declares streams to pull (connectors/<partner>/__init__.py).
PARTNERS = partners.pulled()
for _name, _partner in PARTNERS.items():
    globals()[f"cgthub_ingest_{_name}"] = ingest_dag(
        _name, _partner.describes, _partner.schedule, _partner.deadline, _name.replace("_", "-")
    )
