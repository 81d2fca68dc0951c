"""What `/health/ready` answers: the database, the MLLP listener, the webhook delivery loop, the
payloads archived but not applied yet and the custody signing key.

Ready means the database answers: without it nothing the hub does can succeed, so a load balancer
or compose should stop sending work. The listener, the delivery loop, the held payloads and the
custody signing key (the API's, missing outside dev) are reported (a deployment alerts on them)
but do not make the API unready: the API serves orders without them; while one of them is not `ok`
(or `not configured`) the overall status says `degraded`. No order data appears here, only counts and ages.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cgthub import custody_signing as signing
from cgthub import heartbeat
from cgthub.outbox import OutboxMessage, OutboxStatus
from cgthub.settings import SettingError, get_settings
from cgthub.store import session_scope
from cgthub.tables import RawMessage

WEBHOOK_KIND = "webhook"
DELIVERY_BEHIND_AFTER = timedelta(minutes=5)  # a due webhook older than this: the loop is not keeping up
LISTENER_ENV = "CGTHUB_MLLP_LISTENER"
# A payload archived but not applied for longer than this is held, not queued: the HL7 inbox DAG runs
# within seconds of a message and the courier's held-webhooks DAG every 5 minutes, each only while
# the release is in force.
HELD_BEHIND_AFTER = timedelta(minutes=15)


def database(database_url: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with session_scope(database_url, readonly=True) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return {"status": "unreachable", "error": type(exc).__name__}
    return {"status": "ok", "seconds": round(time.perf_counter() - started, 4)}


def listener(address: str | None = None, *, timeout: float = 0.5) -> dict[str, Any]:
    """Whether the MLLP listener accepts connections (`host:port`, default CGTHUB_MLLP_LISTENER)."""
    address = address if address is not None else get_settings().mllp_listener
    if not address:
        return {"status": "not configured"}
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        return {"status": "unreachable", "address": address, "error": type(exc).__name__}
    return {"status": "ok", "address": address}


def delivery(database_url: str | None) -> dict[str, Any]:
    """The webhook delivery loop, judged by its heartbeat and its work: `down` once its last beat is
    older than the loop said it may grow (cgthub.heartbeat), `behind` while a due message waits too
    long, else `ok`. Due messages waiting, the oldest's age, dead letters; and, once a loop has run on
    this database, its last beat's age and the age at which it counts as down."""
    now = datetime.now(UTC)
    due = (OutboxStatus.PENDING.value, OutboxStatus.FAILED.value)
    try:
        with session_scope(database_url, readonly=True) as session:
            waiting, oldest = session.execute(
                select(func.count(), func.min(OutboxMessage.next_attempt_at)).where(
                    OutboxMessage.destination_kind == WEBHOOK_KIND,
                    OutboxMessage.status.in_(due),
                    OutboxMessage.next_attempt_at <= now,
                )
            ).one()
            dead = session.scalar(
                select(func.count()).where(
                    OutboxMessage.destination_kind == WEBHOOK_KIND, OutboxMessage.status == OutboxStatus.DEAD.value
                )
            )
            beat = heartbeat.last(session, heartbeat.WEBHOOK_DELIVERY)
    except Exception as exc:
        return {"status": "unknown", "error": type(exc).__name__}
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    late = (now - oldest) if oldest is not None else timedelta(0)
    state: dict[str, Any] = {
        "status": "behind" if late > DELIVERY_BEHIND_AFTER else "ok",
        "due": int(waiting),
        "oldest_due_seconds": round(late.total_seconds(), 1),
        "dead": int(dead or 0),
    }
    if beat is not None:  # no loop has run on this database yet: judged by its work alone
        age = heartbeat.age_seconds(beat, now)
        state["last_beat_seconds"] = round(age, 1)
        state["down_after_seconds"] = beat.stale_after_seconds
        if age > beat.stale_after_seconds:
            state["status"] = "down"
    return state


@dataclass(frozen=True)
class Held:
    """One partner's payloads archived but not applied yet, and how long the oldest has waited."""

    partner: str
    waiting: int
    oldest_seconds: float

    @property
    def behind(self) -> bool:
        return self.oldest_seconds > HELD_BEHIND_AFTER.total_seconds()


def held_by_partner(session: Session, now: datetime) -> list[Held]:
    """Payloads archived but not applied yet (status `received`), by partner: one indexed GROUP BY,
    which `/health/ready`, `/metrics` and the console's partner page each read."""
    rows = session.execute(
        select(RawMessage.system, func.count(), func.min(RawMessage.received_at))
        .where(RawMessage.status == "received")
        .group_by(RawMessage.system)
    ).all()
    return [
        Held(system, int(count), max(0.0, (now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()))
        for system, count, at in sorted(rows)
    ]


def held(database_url: str | None) -> dict[str, Any]:
    """Payloads archived but not applied yet, by partner, and the oldest one's age: `behind` once it
    is older than HELD_BEHIND_AFTER (the release is not in force, or no DAG applies them), else `ok`."""
    try:
        with session_scope(database_url, readonly=True) as session:
            found = held_by_partner(session, datetime.now(UTC))
    except Exception as exc:
        return {"status": "unknown", "error": type(exc).__name__}
    return {
        "status": "behind" if any(h.behind for h in found) else "ok",
        "waiting": {h.partner: h.waiting for h in found},
        "oldest_seconds": round(max((h.oldest_seconds for h in found), default=0.0), 1),
    }


def custody_signing() -> dict[str, Any]:
    """The key custody exports are signed with: `ok` and its key id, or `missing` or `invalid` with
    the problem (naming the variable, never the key), so an operator learns it before an export fails."""
    try:
        return signing.signing_key_state()
    except SettingError as exc:
        return {"status": "invalid", "problem": str(exc)}


HEALTHY = frozenset({"ok", "not configured"})


def report(
    database_url: str | None, *, listener_address: str | None = None, signs_custody: bool = False
) -> tuple[bool, dict[str, Any]]:
    """(ready, state): ready while the database answers; each component's state, and overall `ok`,
    `degraded` (the listener, the delivery loop, the held payloads or, for a process that
    `signs_custody` (the API), the custody signing key are not well) or `unavailable` (no database)."""
    db = database(database_url)
    components = {
        "database": db,
        "listener": listener(listener_address),
        "delivery": delivery(database_url) if db["status"] == "ok" else {"status": "unknown"},
        "held": held(database_url) if db["status"] == "ok" else {"status": "unknown"},
    }
    if signs_custody:
        components["custody_signing"] = custody_signing()
    if db["status"] != "ok":
        overall = "unavailable"
    elif all(c["status"] in HEALTHY for c in components.values()):
        overall = "ok"
    else:
        overall = "degraded"
    return db["status"] == "ok", {"status": overall, **components}
