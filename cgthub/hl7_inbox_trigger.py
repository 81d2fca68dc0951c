"""Event-driven scheduling for the HL7 inbox: an Airflow trigger that fires when the MLLP listener archived messages.

The listener ACKs a message once it is committed to the raw archive (status `received`); this
trigger, running in Airflow's triggerer as the HL7 inbox Asset's watcher, polls the archive every
few seconds and fires once per new batch, so the HL7 inbox DAG applies messages within seconds
without a one-minute schedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


def newest_waiting_hl7(database_url: str | None = None) -> int | None:
    """Id of the newest archived HL7 message not applied yet, or None."""
    from sqlalchemy import func, select

    from cgthub.store import session_scope
    from cgthub.tables import RawMessage

    with session_scope(database_url, readonly=True) as session:
        newest: int | None = session.scalar(
            select(func.max(RawMessage.id)).where(RawMessage.system == "hl7", RawMessage.status == "received")
        )
        return newest


class HL7InboxTrigger(BaseEventTrigger):
    """Fires when HL7 messages newer than the last one it announced wait in the archive."""

    def __init__(self, poll_seconds: float = 5.0, database_url: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's trigger base is untyped
        self.poll_seconds = poll_seconds
        self.database_url = database_url

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "cgthub.hl7_inbox_trigger.HL7InboxTrigger",
            {"poll_seconds": self.poll_seconds, "database_url": self.database_url},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced = 0
        while True:
            newest = await asyncio.to_thread(newest_waiting_hl7, self.database_url)
            if newest is not None and newest > announced:
                announced = newest
                yield TriggerEvent({"newest_raw_id": newest})  # type: ignore[no-untyped-call]  # untyped in Airflow
            await asyncio.sleep(self.poll_seconds)
