"""
Partner ingest: one DAG per partner system, all of the same shape, made here from one table.

Each runs on its own schedule. One batch task pulls everything new (the connector keeps its
cursor), archives every payload, maps it and appends the canonical events to the ledger
(`cgthub.partner_sync.pull`); nothing here is one task per order. When events actually landed,
`announce` emits the partner's and the ledger's Assets, so the reconciliation and monitoring DAGs
run right after. Retries back off exponentially; a run still going after its deadline (counted
from when it was queued) raises a Deadline Alert.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Metadata, dag, task

from cgthub.dag_defaults import LEDGER_EVENTS, START, default_args, partner_asset, sync_deadline

# partner -> (what it sends, schedule, deadline, tag)
PARTNERS: dict[str, tuple[str, timedelta | str, timedelta, str]] = {
    "crm": (
        "enrolments, case updates and scheduling requests from the sponsor's CRM (REST)",
        timedelta(minutes=5),
        timedelta(minutes=10),
        "crm",
    ),
    "erp": (
        "sales orders, batch master data and goods movements from the ERP (SOAP)",
        timedelta(minutes=15),
        timedelta(minutes=20),
        "erp",
    ),
    "courier": (
        "bookings, pickups, transit, customs and deliveries with the dry shipper's temperature log "
        "(every 2 minutes: the chain of condition is time-critical)",
        timedelta(minutes=2),
        timedelta(minutes=5),
        "courier",
    ),
    "cmo": (
        "slot confirmations, material receipt, manufacturing start, QC, release and OOS from the CMO's API",
        timedelta(minutes=10),
        timedelta(minutes=15),
        "cmo",
    ),
    "cmo_batch": (
        "the CMO's batch record and certificate-of-analysis CSV files (SFTP drop)",
        "@hourly",
        timedelta(minutes=45),
        "cmo-batch",
    ),
}


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

        @task.short_circuit
        def landed_new_events(summary: dict) -> bool:
            return bool(summary["new_events"])

        @task(outlets=[partner_asset(partner), LEDGER_EVENTS])
        def announce(summary: dict):
            extra = {"partner": partner, "appended": summary["appended"], "orders": len(summary["orders"])}
            yield Metadata(partner_asset(partner), extra)
            yield Metadata(LEDGER_EVENTS, extra)

        summary = pull_batch()
        landed_new_events(summary) >> announce(summary)

    return ingest()


for _partner, (_sends, _every, _deadline, _tag) in PARTNERS.items():
    globals()[f"cgthub_ingest_{_partner}"] = ingest_dag(_partner, _sends, _every, _deadline, _tag)
