"""One order for the console: the API's own detail answer, its custody chain, ledger state and timeline.

The detail comes from the API's route function (the same status, references, COI summary and
open alerts with the text of their current facts an API client reads), so the console and the API
cannot drift apart; the custody chain and timeline are read from the order's ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from cgthub import ledger, ops_config
from cgthub.api.auth import Principal
from cgthub.api.orders import get_order
from cgthub.lifecycle import OrderStatus
from cgthub.model import CanonicalEvent, EventType
from cgthub.tables import Alert

# The vein-to-vein course the picture draws, in order (exceptions such as oos_review are not on it).
COURSE = (
    OrderStatus.COLLECTED,
    OrderStatus.IN_TRANSIT_TO_CMO,
    OrderStatus.RECEIVED_AT_CMO,
    OrderStatus.MANUFACTURING,
    OrderStatus.QC_TESTING,
    OrderStatus.RELEASED,
    OrderStatus.IN_TRANSIT_TO_SITE,
    OrderStatus.RECEIVED_AT_SITE,
    OrderStatus.INFUSION_SCHEDULED,
    OrderStatus.INFUSED,
)


@dataclass(frozen=True)
class CustodyStep:
    at: datetime
    event: str
    what: str
    where: str
    who: str
    step: str
    temperature: str


@dataclass(frozen=True)
class Hold:
    start: datetime
    end: datetime | None
    reason: str


async def order_detail(connection: Connection, principal: Principal, order_id: str) -> dict[str, Any]:
    """The API's detail answer for this user (404 ApiError outside their data scope)."""
    return await get_order(order_id, principal, connection)


def events(session: Session, order_id: str) -> list[CanonicalEvent]:
    return [CanonicalEvent.model_validate_json(e.body) for e in ledger.entries(session, order_id)]


def custody_chain(ordered: list[CanonicalEvent]) -> list[CustodyStep]:
    """Each handover and shipment reading: who held what, where, when, at what temperature."""
    steps = []
    for event in sorted(ordered, key=lambda e: e.occurred_at):
        custody, shipment = event.custody, event.shipment
        if custody is None and shipment is None:
            continue
        temperature = ""
        if shipment is not None and shipment.temperature is not None:
            t = shipment.temperature
            if t.min_c is not None and t.max_c is not None:
                temperature = f"{t.min_c:g} to {t.max_c:g} °C"
            if t.excursions:
                temperature += f" ({len(t.excursions)} excursion{'s' if len(t.excursions) > 1 else ''})"
        steps.append(
            CustodyStep(
                at=event.occurred_at,
                event=event.event_type.value,
                what=", ".join(custody.what) if custody and custody.what else "",
                where=(custody.biz_location or custody.read_point or "") if custody else "",
                who=(custody.possessing_party or custody.owning_party or "") if custody else "",
                step=(custody.biz_step or "") if custody else (shipment.courier or "" if shipment else ""),
                temperature=temperature,
            )
        )
    return steps


def holds(ordered: list[CanonicalEvent]) -> list[Hold]:
    """Hold intervals in event order (a hold with no release is still open)."""
    found: list[Hold] = []
    start: tuple[datetime, str] | None = None
    for event in sorted(ordered, key=lambda e: e.occurred_at):
        if event.event_type is EventType.ORDER_ON_HOLD:
            start = start or (event.occurred_at, "on hold")
        elif event.event_type is EventType.ORDER_HOLD_RELEASED and start is not None:
            found.append(Hold(start[0], event.occurred_at, start[1]))
            start = None
    if start is not None:
        found.append(Hold(start[0], None, start[1]))
    return found


def ledger_state(session: Session, order_id: str) -> tuple[bool, list[str]]:
    """Whether the order's chain verifies (hashes, seals, head, checkpoint), and what is wrong if not."""
    _, problems = ledger.verify(session, order_id)
    return not problems, [str(getattr(p, "problem", p)) for p in problems]


def planned(detail: dict[str, Any], now: datetime) -> dict[str, datetime]:
    """The planned time of each milestone on the course: from collection, by the ops config's
    remaining days per status (the same figures the vein-to-vein at-risk alert projects with)."""
    remaining = ops_config.get().deadlines.remaining_days
    reached = {m.milestone: m.at for m in detail["milestones"]}
    start = reached.get(OrderStatus.COLLECTED.value) or detail["scheduled"].get("apheresis")
    if start is None:
        return {}
    total = remaining.get(OrderStatus.COLLECTED, 0)
    plan = {}
    for status in COURSE:
        days_left = remaining.get(status, 0 if status is OrderStatus.INFUSED else None)
        if days_left is not None:
            plan[status.value] = start + timedelta(days=total - days_left)
    return plan


def target_days(market: str | None) -> float:
    return ops_config.get().deadlines.target_days(market)


def open_alert_rows(session: Session, order_id: str) -> list[Alert]:
    return list(session.query(Alert).filter(Alert.order_id == order_id, Alert.status == "open").order_by(Alert.id))


def now() -> datetime:
    return datetime.now(UTC)
