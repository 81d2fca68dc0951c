"""The Airflow side of alerting: a notifier for DAG callbacks and the Deadline Alert callback.

Kept light (DAG files import it at parse time): the database and HTTP work happens in
`cgthub.alert_delivery`, imported when a callback actually fires.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger("cgthub.alerts.notify")


class HubAlertNotifier(BaseNotifier):
    """Airflow notifier: reports `message` (templated, e.g. a failed task) and then every pending hub alert."""

    template_fields = ("message",)

    def __init__(self, message: str = "", database_url: str | None = None) -> None:
        super().__init__()
        self.message = message
        self.database_url = database_url

    def notify(self, context: Any) -> None:
        from cgthub import ops_config
        from cgthub.alert_delivery import deliver_pending, post
        from cgthub.store import session_scope

        config = ops_config.get().notify
        if self.message:
            log.error("%s", self.message)
            post({"source": "cgthub-airflow", "severity": "critical", "message": self.message}, config)
        with session_scope(self.database_url) as session:
            delivery = deliver_pending(session, config)
        if delivery.sent or delivery.failed:
            log.info("alerts notified: %d sent, %d to retry", len(delivery.sent), len(delivery.failed))


async def sync_deadline_missed(dag_label: str, context: dict[str, Any] | None = None) -> None:
    """Deadline Alert callback (awaited in the triggerer): a sync DAG run is taking too long."""
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, dict) else getattr(dag_run, "run_id", None)
    message = f"sync DAG {dag_label} missed its deadline (run {run_id or '?'}): partner data is getting stale"
    log.critical("%s", message)
    import httpx

    from cgthub import ops_config

    config = ops_config.get().notify
    url = config.effective_webhook()
    if url:
        import asyncio

        payload = {"source": "cgthub-airflow", "kind": "sync_deadline", "message": message}
        # The status is all the triggerer needs: the answer's body is never read (a receiver may send one
        # without end), and the whole call has one deadline (httpx times each read: a head dribbled a byte
        # at a time would hold the triggerer's loop).
        async with httpx.AsyncClient(timeout=config.timeout_seconds) as client:
            try:
                async with asyncio.timeout(config.timeout_seconds):
                    async with client.stream("POST", url, json=payload) as response:
                        status = response.status_code
            except (httpx.HTTPError, TimeoutError) as error:
                log.error("alert webhook unreachable (%s): %s", type(error).__name__, error)
                return
        if status >= 300:
            log.error("alert webhook answered %s", status)
