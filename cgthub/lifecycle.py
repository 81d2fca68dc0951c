"""The order life cycle as an explicit state machine, and the projection that folds events into it.

`project(order_id, events)` is a pure function of the *set* of events: it drops duplicates and
superseded events, orders the rest by occurred_at, and walks the state machine. Any permutation or
duplication of the same events gives the same projection. A transition the machine does not allow
is not applied but recorded as an anomaly for an operator; the event itself stays in the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgthub.model import CanonicalEvent, Direction, EventType, ExternalRefs


class OrderStatus(StrEnum):
    ENROLLED = "enrolled"
    APHERESIS_SCHEDULED = "apheresis_scheduled"
    COLLECTED = "collected"
    IN_TRANSIT_TO_CMO = "in_transit_to_cmo"
    RECEIVED_AT_CMO = "received_at_cmo"
    MANUFACTURING = "manufacturing"
    QC_TESTING = "qc_testing"
    OOS_REVIEW = "oos_review"
    RELEASED = "released"
    IN_TRANSIT_TO_SITE = "in_transit_to_site"
    RECEIVED_AT_SITE = "received_at_site"
    INFUSION_SCHEDULED = "infusion_scheduled"
    INFUSED = "infused"
    ON_HOLD = "on_hold"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"


# Progress along the main path. OOS review sits between QC and release.
RANK: dict[OrderStatus, float] = {
    OrderStatus.ENROLLED: 0,
    OrderStatus.APHERESIS_SCHEDULED: 1,
    OrderStatus.COLLECTED: 2,
    OrderStatus.IN_TRANSIT_TO_CMO: 3,
    OrderStatus.RECEIVED_AT_CMO: 4,
    OrderStatus.MANUFACTURING: 5,
    OrderStatus.QC_TESTING: 6,
    OrderStatus.OOS_REVIEW: 6.5,
    OrderStatus.RELEASED: 7,
    OrderStatus.IN_TRANSIT_TO_SITE: 8,
    OrderStatus.RECEIVED_AT_SITE: 9,
    OrderStatus.INFUSION_SCHEDULED: 10,
    OrderStatus.INFUSED: 11,
}
MAIN_PATH = [s for s, _ in sorted(RANK.items(), key=lambda kv: kv[1]) if s is not OrderStatus.OOS_REVIEW]
TERMINAL = frozenset({OrderStatus.INFUSED, OrderStatus.CANCELLED, OrderStatus.TERMINATED})

# Events that move the order to a fixed status. Shipment events depend on their direction.
TARGET: dict[EventType, OrderStatus] = {
    EventType.ORDER_ENROLLED: OrderStatus.ENROLLED,
    EventType.APHERESIS_SCHEDULED: OrderStatus.APHERESIS_SCHEDULED,
    EventType.APHERESIS_COLLECTED: OrderStatus.COLLECTED,
    EventType.MATERIAL_RECEIVED_AT_CMO: OrderStatus.RECEIVED_AT_CMO,
    EventType.MANUFACTURING_STARTED: OrderStatus.MANUFACTURING,
    EventType.QC_STARTED: OrderStatus.QC_TESTING,
    EventType.PRODUCT_RELEASED: OrderStatus.RELEASED,
    EventType.PRODUCT_OOS: OrderStatus.OOS_REVIEW,
    EventType.OOS_RELEASED_UNDER_EXCEPTION: OrderStatus.RELEASED,
    EventType.OOS_TERMINATED: OrderStatus.TERMINATED,
    EventType.PRODUCT_RECEIVED_AT_SITE: OrderStatus.RECEIVED_AT_SITE,
    EventType.INFUSION_SCHEDULED: OrderStatus.INFUSION_SCHEDULED,
    EventType.INFUSED: OrderStatus.INFUSED,
    EventType.ORDER_CANCELLED: OrderStatus.CANCELLED,
}
_IN_TRANSIT = {Direction.TO_CMO: OrderStatus.IN_TRANSIT_TO_CMO, Direction.TO_SITE: OrderStatus.IN_TRANSIT_TO_SITE}
_DELIVERED = {Direction.TO_CMO: OrderStatus.RECEIVED_AT_CMO, Direction.TO_SITE: OrderStatus.RECEIVED_AT_SITE}
# From OOS review the CMO may re-manufacture or re-test: the only backward moves allowed.
_BACKWARD_ALLOWED = {
    (OrderStatus.OOS_REVIEW, OrderStatus.MANUFACTURING),
    (OrderStatus.OOS_REVIEW, OrderStatus.QC_TESTING),
}


class _Folded(BaseModel):
    """A model the fold writes into field by field. Nothing validates on assignment, and pydantic's
    generic assignment is slow for a fold that writes a dozen fields per event: write straight
    into the instance, recording the field as set, as pydantic does. The fold's own hot writes
    skip even this (a Python call a write): they go to the instance's dict, and `_fold` marks
    every field set once it is done, as a state read back from its row has them."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).__pydantic_fields__:
            self.__dict__[name] = value
            self.__pydantic_fields_set__.add(name)
        else:
            super().__setattr__(name, value)


class Anomaly(BaseModel):
    model_config = ConfigDict(frozen=True)

    source_system: str
    source_event_id: str
    event_type: str
    occurred_at: datetime
    message: str


class ShipmentView(_Folded):
    shipment_id: str
    direction: str | None = None
    courier: str | None = None
    tracking_id: str | None = None
    shipper_id: str | None = None
    last_event: str | None = None
    last_event_at: datetime | None = None
    customs_hold: bool = False
    excursions: int = 0


# One shared empty value, not a factory: it is frozen (the fold replaces it, never changes it), and a
# factory validated a new one for every order projected.
_NO_REFS = ExternalRefs()


class OrderProjection(_Folded):
    """An order as the event set says it is now. Derived, never edited."""

    order_id: str
    status: OrderStatus = OrderStatus.ENROLLED
    stage: OrderStatus = OrderStatus.ENROLLED
    status_since: datetime | None = None
    on_hold: bool = False
    hold_reason: str | None = None
    therapy: str | None = None
    market: str | None = None
    site: str | None = None
    cmo: str | None = None
    coi_id: str | None = None
    patient_pseudonyms: dict[str, str] = Field(default_factory=dict)
    refs: ExternalRefs = _NO_REFS
    dins: list[str] = Field(default_factory=list)
    lot: str | None = None
    bag_ids: list[str] = Field(default_factory=list)
    milestones: dict[str, datetime] = Field(default_factory=dict)
    scheduled: dict[str, datetime] = Field(default_factory=dict)
    shipments: dict[str, ShipmentView] = Field(default_factory=dict)
    excursions: list[dict[str, Any]] = Field(default_factory=list)
    anomalies: list[Anomaly] = Field(default_factory=list)
    skipped_milestones: list[str] = Field(default_factory=list)
    released_under_exception: bool = False
    reschedules: int = 0
    cancel_reason: str | None = None
    last_event_at: datetime | None = None
    # When the order last moved along its life cycle: a status entered, a hold placed or lifted, a
    # date (re)scheduled or cancelled. Bookings of couriers, scans, results and the hub's records of
    # decisions are events but not progress: they must not make a stalled order look alive.
    last_progress_at: datetime | None = None
    event_count: int = 0

    def vein_to_vein_days(self, now: datetime) -> float | None:
        """Apheresis collection to infusion, or to `now` while the order is still open."""
        collected = self.milestones.get(OrderStatus.COLLECTED.value)
        if collected is None:
            return None
        end = self.milestones.get(OrderStatus.INFUSED.value) or now
        return round((end - collected).total_seconds() / 86400, 1)

    def progressed_at(self) -> datetime | None:
        """When the order last moved along its life cycle (a projection stored before the field
        existed answers the time it entered its status)."""
        return self.last_progress_at or self.status_since


_STATE_FIELDS = frozenset(OrderProjection.model_fields)
# The fold's tables keyed by the members' plain text (`_value_`): Enum's __hash__ is Python code,
# run for every lookup keyed by a member, several times an event.
_RANK_OF = {status._value_: rank for status, rank in RANK.items()}
_TERMINAL_NAMES = frozenset(status._value_ for status in TERMINAL)
_TARGET_OF = {kind._value_: status for kind, status in TARGET.items()}
_ORDER_RANK = {kind._value_: RANK.get(status, -1) for kind, status in TARGET.items()}
_MAIN_PATH_RANKS = [(RANK[status], status.value) for status in MAIN_PATH]


def effective_events(events: Iterable[CanonicalEvent]) -> list[CanonicalEvent]:
    """Unique, non-superseded events in deterministic processing order."""
    unique: dict[tuple[str, str], CanonicalEvent] = {}
    superseded: set[tuple[str, str]] = set()
    for event in events:
        key = (event.source_system._value_, event.source_event_id)  # `event.key`, without its call
        current = unique.get(key)
        if current is None or _content(event) < _content(current):
            unique[key] = event
    for event in unique.values():
        if event.supersedes:
            superseded.add((event.source_system._value_, event.supersedes))
    alive = [e for key, e in unique.items() if key not in superseded] if superseded else list(unique.values())
    return sorted(alive, key=_order_key)


def _content(event: CanonicalEvent) -> str:
    return json.dumps(event.to_json_dict(), sort_keys=True)


def _order_key(event: CanonicalEvent) -> tuple[datetime, float, str, str]:
    rank = _ORDER_RANK.get(event.event_type._value_, -1)
    return (event.occurred_at, rank, event.source_system._value_, event.source_event_id)


def project(order_id: str, events: Iterable[CanonicalEvent]) -> OrderProjection:
    """Fold the event set into the order's current state (pure: no I/O, no clock)."""
    return _fold(new_projection(order_id), effective_events(events))


# A new order's projection is every field's default: validated once here, then laid out per order
# with fresh containers where a field's default is made by a factory (pydantic validated the
# defaults again for every order projected, about 29,000 instructions; this is a few thousand).
_DEFAULTS = OrderProjection(order_id="").__dict__
_FACTORIES = tuple(
    (name, info.default_factory) for name, info in OrderProjection.model_fields.items() if info.default_factory
)
_new, _set = object.__new__, object.__setattr__


def new_projection(order_id: str) -> OrderProjection:
    """`OrderProjection(order_id=order_id)`, laid out as pydantic lays it out (only `order_id` set)."""
    if type(order_id) is not str:  # pydantic says what it makes of anything else
        return OrderProjection(order_id=order_id)
    values = dict(_DEFAULTS)
    values["order_id"] = order_id
    for name, factory in _FACTORIES:
        values[name] = factory()  # type: ignore[call-arg]
    state = _new(OrderProjection)
    _set(state, "__dict__", values)
    _set(state, "__pydantic_fields_set__", {"order_id"})
    _set(state, "__pydantic_extra__", None)
    _set(state, "__pydantic_private__", None)
    return state


def can_advance(state: OrderProjection, later: list[CanonicalEvent]) -> bool:
    """True when `later` can be folded onto `state` with the result `project` would give.

    That holds when every new event sorts strictly after all folded ones and corrects none of them.
    """
    if state.last_event_at is None:
        return False
    return all(e.supersedes is None and e.occurred_at > state.last_event_at for e in later)


def advance(state: OrderProjection, later: list[CanonicalEvent]) -> OrderProjection:
    """Fold events that all happened after `state` onto a copy of it (see `can_advance`)."""
    return fold_onto(state.model_copy(deep=True), later)


def fold_onto(state: OrderProjection, later: list[CanonicalEvent]) -> OrderProjection:
    """`advance` without the copy: `state` itself moves on (for a projection just loaded to be replaced)."""
    return _fold(state, effective_events(later))


def _fold(state: OrderProjection, ordered: list[CanonicalEvent]) -> OrderProjection:
    for event in ordered:
        _apply(state, event)
    values = state.__dict__  # the fold's writes (see `_Folded`)
    stage = values["stage"]
    values["status"] = OrderStatus.ON_HOLD if values["on_hold"] and stage._value_ not in _TERMINAL_NAMES else stage
    state.__pydantic_fields_set__.update(_STATE_FIELDS)
    return state


def _target_for(state: OrderProjection, event: CanonicalEvent) -> OrderStatus | None:
    if event.event_type in (EventType.SHIPMENT_PICKED_UP, EventType.SHIPMENT_IN_TRANSIT, EventType.SHIPMENT_DELIVERED):
        direction = _direction(state, event)
        table = _DELIVERED if event.event_type is EventType.SHIPMENT_DELIVERED else _IN_TRANSIT
        return table[direction]
    return _TARGET_OF.get(event.event_type._value_)


def _direction(state: OrderProjection, event: CanonicalEvent) -> Direction:
    if event.shipment and event.shipment.direction:
        return event.shipment.direction
    if event.shipment and event.shipment.shipment_id in state.shipments:
        known = state.shipments[event.shipment.shipment_id].direction
        if known:
            return Direction(known)
    return Direction.TO_SITE if RANK.get(state.stage, 0) >= RANK[OrderStatus.RELEASED] else Direction.TO_CMO


def _apply(state: OrderProjection, event: CanonicalEvent) -> None:
    values = state.__dict__  # the fold's writes (see `_Folded`)
    values["event_count"] += 1
    at, last = event.occurred_at, values["last_event_at"]
    if last is None or at > last:  # the later one; the one held when they are equal
        values["last_event_at"] = at
    _absorb_details(state, event)
    kind = event.event_type
    if kind is EventType.ORDER_ON_HOLD:
        state.on_hold, state.hold_reason = True, event.reason or "on hold"
        _progress(state, event)
        return
    if kind is EventType.ORDER_HOLD_RELEASED:
        state.on_hold, state.hold_reason = False, None
        _progress(state, event)
        return
    if kind is EventType.ORDER_RESCHEDULED:
        _reschedule(state, event)
        return
    if kind is EventType.TEMPERATURE_EXCURSION:
        _excursion(state, event)
        return
    if kind is EventType.SHIPMENT_CUSTOMS_HOLD and event.shipment:
        _shipment(state, event).customs_hold = True
        return
    target = _target_for(state, event)
    if target is None:
        return
    _transition(state, event, target)


def _transition(state: OrderProjection, event: CanonicalEvent, target: OrderStatus) -> None:
    current = state.stage
    if event.event_type is EventType.ORDER_ENROLLED and state.event_count == 1:
        _enter(state, event, target)
        return
    if current._value_ in _TERMINAL_NAMES:
        if target is not current:
            _flag(state, event, f"{event.event_type.value} after the order was {current.value}")
        return
    if target is OrderStatus.CANCELLED:
        state.cancel_reason = event.reason
        _enter(state, event, target)
        return
    if target is OrderStatus.TERMINATED and current is not OrderStatus.OOS_REVIEW:
        _flag(state, event, f"termination without OOS review (order was {current.value})")
        return
    if event.event_type is EventType.OOS_RELEASED_UNDER_EXCEPTION:
        if current is not OrderStatus.OOS_REVIEW:
            _flag(state, event, f"release under exception without OOS review (order was {current.value})")
            return
        state.released_under_exception = True
        _enter(state, event, target)
        return
    if target is OrderStatus.TERMINATED:
        _enter(state, event, target)
        return
    if target is current:
        return
    if _RANK_OF[target._value_] < _RANK_OF[current._value_] and (current, target) not in _BACKWARD_ALLOWED:
        if event.event_type is not EventType.ORDER_ENROLLED:
            _flag(state, event, f"impossible transition {current.value} -> {target.value}")
        return
    _enter(state, event, target)


def _enter(state: OrderProjection, event: CanonicalEvent, target: OrderStatus) -> None:
    values = state.__dict__  # the fold's writes (see `_Folded`)
    skipped_milestones, milestones = values["skipped_milestones"], values["milestones"]
    rank_from, rank_to = RANK.get(values["stage"]), RANK.get(target)
    if rank_from is not None and rank_to is not None and rank_to > rank_from:
        for rank, name in _MAIN_PATH_RANKS:  # in rank order
            if rank >= rank_to:
                break
            if rank > rank_from and name not in milestones:
                skipped_milestones.append(name)
    values["stage"] = target
    values["status_since"] = event.occurred_at
    _progress(state, event)
    name = target._value_  # the member's plain attribute (`.value` is a descriptor)
    milestones.setdefault(name, event.occurred_at)
    if name in skipped_milestones:
        skipped_milestones.remove(name)


def _progress(state: OrderProjection, event: CanonicalEvent) -> None:
    values = state.__dict__  # the fold's writes (see `_Folded`)
    at, last = event.occurred_at, values["last_progress_at"]
    if last is None or at > last:  # the later one; the one held when they are equal
        values["last_progress_at"] = at


def _flag(state: OrderProjection, event: CanonicalEvent, message: str) -> None:
    state.anomalies.append(
        Anomaly(
            source_system=event.source_system.value,
            source_event_id=event.source_event_id,
            event_type=event.event_type.value,
            occurred_at=event.occurred_at,
            message=message,
        )
    )


def _absorb_details(state: OrderProjection, event: CanonicalEvent) -> None:
    """Order details, references and identity keys: later events fill in, never blank out."""
    values = state.__dict__  # the fold's writes (see `_Folded`)
    if event.order:
        details = event.order.__dict__
        for field in ("therapy", "market", "site", "cmo"):
            value = details[field]
            if value:
                values[field] = value
    refs = values["refs"] = values["refs"].merged(event.refs)
    if event.shipment and event.shipment.shipment_id not in refs.courier_shipment_ids:
        ids = (*refs.courier_shipment_ids, event.shipment.shipment_id)
        values["refs"] = refs.model_copy(update={"courier_shipment_ids": ids})
    if event.patient:
        if event.patient.coi_id and not values["coi_id"]:
            values["coi_id"] = event.patient.coi_id
        values["patient_pseudonyms"].update(event.patient.pseudonyms)
    if event.material:
        if event.material.din and event.material.din not in values["dins"]:
            values["dins"].append(event.material.din)
        values["lot"] = event.material.lot or values["lot"]
        for bag in event.material.bag_ids:
            if bag not in state.bag_ids:
                state.bag_ids.append(bag)
    if event.shipment:
        view = _shipment(state, event)
        view.last_event, view.last_event_at = event.event_type.value, event.occurred_at
    if event.scheduled_for is not None:
        what = {EventType.APHERESIS_SCHEDULED: "apheresis", EventType.INFUSION_SCHEDULED: "infusion"}.get(
            event.event_type
        )
        if what is not None and state.scheduled.get(what) != event.scheduled_for:
            state.scheduled[what] = event.scheduled_for
            _progress(state, event)


def _shipment(state: OrderProjection, event: CanonicalEvent) -> ShipmentView:
    assert event.shipment is not None
    sid = event.shipment.shipment_id
    view = state.shipments.setdefault(sid, ShipmentView(shipment_id=sid))
    shipment = event.shipment
    for field in ("courier", "tracking_id", "shipper_id"):
        value = getattr(shipment, field)
        if value:
            setattr(view, field, value)
    if shipment.direction:
        view.direction = shipment.direction.value
    return view


def _reschedule(state: OrderProjection, event: CanonicalEvent) -> None:
    """A date moved, or (attribute `cancelled`) called off: a cancelled apheresis booking puts an
    order that was waiting for it back to `enrolled`, to be booked again."""
    what = str(event.attributes.get("what", "apheresis"))
    cancelled = bool(event.attributes.get("cancelled"))
    if not cancelled:
        state.reschedules += 1
    done = OrderStatus.COLLECTED if what == "apheresis" else OrderStatus.INFUSED
    if state.stage in TERMINAL or RANK.get(state.stage, 0) >= RANK[done]:
        verb = "cancelled" if cancelled else "rescheduled"
        _flag(state, event, f"{what} {verb} after it took place (order was {state.stage.value})")
        return
    if cancelled:
        state.scheduled.pop(what, None)
        if what == "apheresis" and state.stage is OrderStatus.APHERESIS_SCHEDULED:
            state.stage, state.status_since = OrderStatus.ENROLLED, event.occurred_at
        _progress(state, event)
        return
    if event.scheduled_for is not None:
        state.scheduled[what] = event.scheduled_for
    _progress(state, event)


def _excursion(state: OrderProjection, event: CanonicalEvent) -> None:
    record: dict[str, Any] = {
        "source_event_id": event.source_event_id,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if event.shipment:
        _shipment(state, event).excursions += 1
        record["shipment_id"] = event.shipment.shipment_id
        temperature = event.shipment.temperature
        if temperature and temperature.excursions:
            worst = temperature.excursions[0]
            record.update(extreme_c=worst.extreme_c, limit_c=worst.limit_c)
    record.update({k: v for k, v in event.attributes.items() if k in ("extreme_c", "limit_c", "duration_min")})
    state.excursions.append(record)
