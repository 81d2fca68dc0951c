"""Which order an event belongs to, and whether its identity keys agree (chain of identity).

Partner references (CRM order id, placer order number, CMO batch, shipment id...) find the order;
identity keys (COI id, DIN, lot) must not contradict it: a DIN or lot belongs to one patient's
order only, and an order has exactly one COI id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from cgthub.model import CanonicalEvent
from cgthub.tables import Order, OrderKey

# Kinds of which an order holds exactly one value.
SINGLE_VALUED = frozenset({"coi_id"})


@dataclass
class Correlation:
    order_id: str | None
    conflicts: list[str] = field(default_factory=list)
    conflicting_orders: set[str] = field(default_factory=set)
    new_keys: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts


def _lookup(session: Session, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    if not keys:
        return {}
    clause = or_(*(and_(OrderKey.kind == k, OrderKey.value == v) for k, v in keys))
    return {(row.kind, row.value): row.order_id for row in session.scalars(select(OrderKey).where(clause))}


def correlate(session: Session, event: CanonicalEvent) -> Correlation:
    ref_keys = event.refs.pairs()
    identity_keys = event.identity_keys()
    known = _lookup(session, ref_keys + identity_keys)

    by_ref = {known[k] for k in ref_keys if k in known}
    if event.order_id:
        by_ref.add(event.order_id)
    by_identity = {known[k] for k in identity_keys if k in known}

    if len(by_ref) > 1:
        return Correlation(
            order_id=None,
            conflicts=[f"partner references point to {len(by_ref)} different orders: {sorted(by_ref)}"],
            conflicting_orders=by_ref,
        )
    target = next(iter(by_ref)) if by_ref else (next(iter(by_identity)) if len(by_identity) == 1 else None)
    if target is None and len(by_identity) > 1:
        return Correlation(
            order_id=None,
            conflicts=[f"identity keys belong to {len(by_identity)} different orders: {sorted(by_identity)}"],
            conflicting_orders=by_identity,
        )
    result = Correlation(order_id=target)
    if target is None:
        result.new_keys = ref_keys + identity_keys
        return result
    if session.get(Order, target) is None:
        result.conflicts.append(f"order {target} named by the event does not exist")
        return result
    for key in identity_keys:
        owner = known.get(key)
        if owner is not None and owner != target:
            result.conflicts.append(f"{key[0]} {key[1]} belongs to order {owner}, not {target}")
            result.conflicting_orders.add(owner)
    for kind in SINGLE_VALUED:
        asserted = [v for k, v in identity_keys if k == kind]
        if not asserted:
            continue
        held = session.scalars(select(OrderKey.value).where(OrderKey.order_id == target, OrderKey.kind == kind)).all()
        if held and asserted[0] not in held:
            result.conflicts.append(f"{kind} {asserted[0]} contradicts order {target}'s {kind} {held[0]}")
    result.new_keys = [k for k in ref_keys + identity_keys if k not in known]
    return result
