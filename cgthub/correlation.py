"""Which order an event belongs to, and whether its identity keys agree (chain of identity).

Partner references (CRM order id, placer order number, CMO batch, shipment id...) find the order;
identity keys (COI id, DIN, lot) must not contradict it: a DIN or lot belongs to one patient's
order only, and an order has exactly one COI id.

`KeyIndex` answers the lookups. The plain one asks the database each time; a batch preloads every
key of a batch in one query and records the keys it registers, so both paths share this logic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, SessionTransaction

from cgthub import sites
from cgthub.bulk import rows_by_pairs
from cgthub.model import CanonicalEvent
from cgthub.tables import Order, OrderKey

# Kinds of which an order holds exactly one value.
SINGLE_VALUED = frozenset({"coi_id"})

Key = tuple[str, str]
_KEYS = OrderKey.__table__
_ANSWERED = "cgthub.correlation.answered"  # session.info: lookups made earlier in this transaction


# An event's (reference keys, identity keys, the event itself), by the event's id(): the event is held
# so that its id cannot name another object while the keys are shared.
EventKeys = dict[int, tuple[list[Key], list[Key], CanonicalEvent]]


def share_answers(
    session: Session,
    owners: dict[Key, str | None],
    sites: dict[str, str | None],
    event_keys: EventKeys | None = None,
) -> None:
    """Keys (their owner, None: no order) and order sites this transaction just read, for the next
    `KeyIndex.take_answers` of the same transaction: site qualification looks up a batch's
    references just before the ledger would look them up again. `event_keys`: the keys qualification
    worked out for each hospital event, which the ledger's preload then need not work out again."""
    session.info[_ANSWERED] = (_transaction(session), owners, sites, event_keys or {})


def _transaction(session: Session) -> SessionTransaction | None:
    """The (sub)transaction answers belong to: a rollback ends it, and what was read in it with it."""
    return session.get_nested_transaction() or session.get_transaction()


def _still_in(session: Session, made_in: SessionTransaction | None) -> bool:
    """Whether the session is still in the (sub)transaction `made_in`, or in a savepoint of it (the
    ledger's race guard on PostgreSQL), so that what was read in it still holds."""
    here = _transaction(session)
    while here is not None:
        if here is made_in:
            return here.is_active
        here = here.parent
    return False


class KeyIndex:
    """Order keys as the database has them, plus those registered in this transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._owner: dict[Key, str | None] = {}
        self._orders: dict[str, bool] = {}
        self._sites: dict[str, str | None] = {}
        self.event_keys: EventKeys = {}  # each shared event's keys (`share_answers`)

    def take_answers(self) -> None:
        """Start from what `share_answers` left in this transaction (once: taken, it is gone)."""
        shared = self.session.info.pop(_ANSWERED, None)
        if shared is None or not _still_in(self.session, shared[0]):
            return
        _made_in, owners, sites, self.event_keys = shared
        for key, owner in owners.items():
            self._owner.setdefault(key, owner)
            if owner is not None:
                self._orders[owner] = True
        self.know_sites(sites)

    def keys_of(self, event: CanonicalEvent) -> tuple[list[Key], list[Key]]:
        """The event's (reference keys, identity keys): as shared for this very event, else worked out."""
        shared = self.event_keys.get(id(event))
        if shared is not None and shared[2] is event:
            return shared[0], shared[1]
        return event.reference_keys(), event.identity_keys()

    def know_sites(self, sites: dict[str, str | None]) -> None:
        """Order sites read with their rows in this transaction (`site_of` need not read them)."""
        for order_id, site in sites.items():
            self._sites.setdefault(order_id, site)

    def preload(self, keys: Iterable[Key]) -> None:
        wanted = [k for k in set(keys) if k not in self._owner]
        if not wanted:  # the usual case per event: the batch's preload read them all
            return
        for kind, value, order_id in rows_by_pairs(
            self.session, _KEYS, ("kind", "value", "order_id"), "kind", "value", wanted
        ):
            self._owner[(kind, value)] = order_id
            self._orders[order_id] = True
        for key in wanted:
            self._owner.setdefault(key, None)

    def owners(self, keys: list[Key]) -> dict[Key, str]:
        owner_of = self._owner
        if not all(k in owner_of for k in keys):  # the usual case per event: the batch's preload read them
            self.preload(keys)
        return {k: owner for k in keys if (owner := owner_of.get(k)) is not None}

    def known_orders(self) -> set[str]:
        return {owner for owner in self._owner.values() if owner is not None}

    def exists(self, order_id: str) -> bool:
        if order_id not in self._orders:
            self._orders[order_id] = self.session.get(Order, order_id) is not None
        return self._orders[order_id]

    def values_of(self, order_id: str, kind: str) -> list[str]:
        held = [v for (k, v), owner in self._owner.items() if owner == order_id and k == kind]
        if held:
            return held
        return list(
            self.session.scalars(select(OrderKey.value).where(OrderKey.order_id == order_id, OrderKey.kind == kind))
        )

    def site_of(self, order_id: str) -> str | None:
        """The order's site as its row has it (read for all orders known so far at once)."""
        if order_id not in self._sites:
            wanted = (self.known_orders() | {order_id}) - self._sites.keys()
            for oid, site in self.session.execute(select(Order.id, Order.site).where(Order.id.in_(sorted(wanted)))):
                self._sites[oid] = site
            for oid in wanted:
                self._sites.setdefault(oid, None)
        return self._sites[order_id]

    def register(self, order_id: str, keys: Iterable[Key]) -> None:
        self._orders[order_id] = True
        for key in keys:
            self._owner[key] = order_id


class Conflict(str):
    """One contradiction, in words for operators, with the kind of key it is about (`coi_id`, `din`,
    `references`...), which is all a partner's answer may say of it."""

    kind: str

    def __new__(cls, text: str, kind: str) -> Conflict:
        made = super().__new__(cls, text)
        made.kind = kind
        return made


class ScopeConflict(Conflict):
    """A conflict that is the sender's, not the order's: its HL7 sender may not touch this order's
    site. The order is not held for it (a sender must not stop another site's order)."""


@dataclass
class Correlation:
    order_id: str | None
    conflicts: list[Conflict] = field(default_factory=list)
    conflicting_orders: set[str] = field(default_factory=set)
    new_keys: list[Key] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts


def order_named(
    owner: dict[Key, str], order_id: str | None, ref_keys: list[Key], identity_keys: list[Key]
) -> str | None:
    """The order `correlate` takes an event to, from its keys' owners: the one its references (and
    its order id) name, else the one its identity keys name; None for none or several. Site
    qualification judges an event by this order, so it judges the order the ledger applies it to."""
    found = _one_owner(owner, ref_keys, order_id or None)
    if found is None:
        found = _one_owner(owner, identity_keys, None)
    return found or None


def _one_owner(owner: dict[Key, str], keys: list[Key], found: str | None) -> str | None:
    """The one order these keys (and `found`) name; None: none; "": several. A loop, not sets: it
    runs for every hospital event, where sets cost about 1.7 times as many instructions."""
    for key in keys:
        owned = owner.get(key)
        if owned is not None and owned != found:
            if found is not None:
                return ""
            found = owned
    return found


def correlate(
    session: Session,
    event: CanonicalEvent,
    index: KeyIndex | None = None,
    *,
    keys: tuple[list[Key], list[Key]] | None = None,
) -> Correlation:
    """`keys`, the event's (reference keys, identity keys) when the caller has them already."""
    index = index or KeyIndex(session)
    ref_keys, identity_keys = keys if keys is not None else (event.reference_keys(), event.identity_keys())
    known = index.owners(ref_keys + identity_keys)

    by_ref = {known[k] for k in ref_keys if k in known}
    if event.order_id:
        by_ref.add(event.order_id)
    by_identity = {known[k] for k in identity_keys if k in known}

    if len(by_ref) > 1:
        return Correlation(
            order_id=None,
            conflicts=[
                Conflict(f"partner references point to {len(by_ref)} different orders: {sorted(by_ref)}", "references")
            ],
            conflicting_orders=by_ref,
        )
    target = next(iter(by_ref)) if by_ref else (next(iter(by_identity)) if len(by_identity) == 1 else None)
    if target is None and len(by_identity) > 1:
        return Correlation(
            order_id=None,
            conflicts=[
                Conflict(
                    f"identity keys belong to {len(by_identity)} different orders: {sorted(by_identity)}", "identity"
                )
            ],
            conflicting_orders=by_identity,
        )
    result = Correlation(order_id=target)
    if target is None:
        result.new_keys = ref_keys + identity_keys
        return result
    if not index.exists(target):
        result.conflicts.append(Conflict(f"order {target} named by the event does not exist", "order_id"))
        return result
    sender = sites.sender_of(session, event)
    if sender is not None:
        site = index.site_of(target)
        if site is not None and site not in sender.sites:
            result.conflicts.append(
                ScopeConflict(f"sending facility {sender.facility!r} is not registered for site {site}", "sender")
            )
            return result
    for key in identity_keys:
        owner = known.get(key)
        if owner is not None and owner != target:
            result.conflicts.append(Conflict(f"{key[0]} {key[1]} belongs to order {owner}, not {target}", key[0]))
            result.conflicting_orders.add(owner)
    for kind in SINGLE_VALUED:
        asserted = [v for k, v in identity_keys if k == kind]
        if not asserted or (kind, asserted[0]) in known:
            continue
        held = index.values_of(target, kind)
        if held and asserted[0] not in held:
            result.conflicts.append(
                Conflict(f"{kind} {asserted[0]} contradicts order {target}'s {kind} {held[0]}", kind)
            )
    result.new_keys = [k for k in ref_keys + identity_keys if k not in known]
    return result
