"""What every cgthub DAG shares: retry policy, failure notifier, sync deadlines and the Assets.

Imported by DAG files at parse time, so it stays light: Airflow's SDK, constants and the hub's
Settings only. The hub's core is imported inside tasks.

Every task carries an `execution_timeout` (Settings.task_timeout_seconds: CGTHUB_TASK_EXECUTION_TIMEOUT,
else sized from the partner deadline and retries, ten pull calls with every attempt at
CGTHUB_PARTNER_RESPONSE_DEADLINE: 1 hour at 60 s): a backstop under the connectors' own deadline,
so a task stuck anywhere (a partner, a lock, a bug) is failed by Airflow, retried and then alerted
by the same notifier as any failure, instead of holding its slot for hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Metadata, task

# airflow.sdk exports these at run time, but its stub (__init__.pyi) does not list them.
from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from cgthub.notifier import HubAlertNotifier, sync_deadline_missed
from cgthub.settings import Settings

START = datetime(2026, 1, 1)

# New canonical events landed in the ledger (any partner): reconciliation and monitoring follow.
LEDGER_EVENTS = Asset("cgthub://ledger/events")
# The MLLP listener archived HL7 messages that wait to be applied.
HL7_INBOX = Asset("cgthub://hl7/inbox")


def partner_asset(partner: str) -> Asset:
    """New canonical events from one partner."""
    return Asset(f"cgthub://ledger/events/{partner}")


def announce_new_events(partner: str, summary: Any) -> None:
    """`landed_new_events >> announce` after a sync task whose report (`summary`, its XCom) says what
    landed: the partner's and the ledger's Assets are emitted only when new events did, so the
    reconciliation, monitoring and outbound DAGs run after real changes only."""

    @task.short_circuit
    def landed_new_events(summary: dict[str, Any]) -> bool:
        return bool(summary["new_events"])

    @task(outlets=[partner_asset(partner), LEDGER_EVENTS])
    def announce(summary: dict[str, Any]) -> Iterator[Metadata]:
        extra = {"partner": partner, "appended": summary["appended"], "orders": len(summary["order_ids"])}
        yield Metadata(partner_asset(partner), extra)
        yield Metadata(LEDGER_EVENTS, extra)

    landed_new_events(summary) >> announce(summary)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Retries with exponential backoff (partners have outages), a timeout per try (the module's
    docstring), and a page when a task finally fails."""
    args: dict[str, Any] = {
        "owner": "cgthub",
        # Settings() and not get_settings(): parsing a DAG needs no keys (a task that does checks them).
        "execution_timeout": timedelta(seconds=Settings().task_timeout_seconds),
        "retries": 4,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": HubAlertNotifier(
            message="cgthub task {{ ti.dag_id }}.{{ ti.task_id }} failed after retries (run {{ run_id }})"
        ),
    }
    args.update(overrides)
    return args


def sync_deadline(label: str, within: timedelta) -> DeadlineAlert:
    """Airflow 3 Deadline Alert (successor of SLAs): a sync run still going `within` after it was queued."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=within,
        callback=AsyncCallback(sync_deadline_missed, kwargs={"dag_label": label}),
    )
