"""Site qualification: may this site order this therapy on this day, and which registry said so.

Treatment sites are qualified per therapy (training, audits, REMS certification): an enrolment or a
hospital order from a site not qualified on the day it happened is refused, not queued. The rules
live in `config/sites.yaml` (`cgthub.sites`); this module judges by them and keeps the record:

- `site_registry_versions`: each content of the registry (its `version` and SHA-256) the first time
  the hub judged by it, with the text, so `cgthub sites history` shows what was in force when;
- `qualification_judgements`: each enrolment's verdict and each refusal (site, therapy, day, why)
  with the registry version that gave it, once per event and registry content; a hospital order
  that passes leaves no row, as it is the listener's hot path.

`cgthub.routing` calls `judge_events` on the live ingest path, where the site is known; a refusal is
quarantined at stage `qualify` with a reason an operator can read and raises a critical alert.
`check` is the pure question, for anyone who wants to ask it in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, Index, Integer, String, Text, UniqueConstraint, bindparam, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from cgthub import alerts, sites
from cgthub.bulk import rows_by_pairs
from cgthub.correlation import EventKeys, Key, order_named, share_answers
from cgthub.errors import PayloadRejected
from cgthub.model import CanonicalEvent, EventType, SourceSystem
from cgthub.quarantine import Stage
from cgthub.quoting import quoted, shown
from cgthub.store import insert_ignoring_conflicts
from cgthub.tables import Alert, Base, BigId, LedgerEntry, Order, OrderKey, text_limit, utcnow

log = logging.getLogger(__name__)

ALERT_KIND = "site_not_qualified"
UNVERSIONED_KIND = "site_registry_unversioned_change"
# Hospital messages that order or book a step for an order: judged like an enrolment.
ORDERING = frozenset({EventType.APHERESIS_SCHEDULED, EventType.INFUSION_SCHEDULED})


class RegistryVersion(Base):
    """One content of config/sites.yaml, recorded the first time the hub judged by it."""

    __tablename__ = "site_registry_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    content: Mapped[str] = mapped_column(Text)
    first_loaded_at: Mapped[datetime] = mapped_column(default=utcnow)


class QualificationJudgement(Base):
    """What the registry said of one enrolment or order: qualified or refused, and why."""

    __tablename__ = "qualification_judgements"
    __table_args__ = (
        UniqueConstraint("source_system", "source_event_id", "registry_sha256", name="uq_judgement_event_registry"),
        Index("ix_qualification_judgements_site", "site"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_system: Mapped[str] = mapped_column(String(32))
    source_event_id: Mapped[str] = mapped_column(String(200))
    registry_version: Mapped[int | None] = mapped_column(Integer)
    registry_sha256: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(64))
    therapy: Mapped[str | None] = mapped_column(String(64))
    day: Mapped[date] = mapped_column(Date)
    qualified: Mapped[bool]
    reason: Mapped[str] = mapped_column(String(300))
    raw_id: Mapped[int | None] = mapped_column(BigInteger)
    judged_at: Mapped[datetime] = mapped_column(default=utcnow)


_REASON_LIMIT = text_limit(QualificationJudgement.__table__.c.reason)
_SITE_LIMIT = text_limit(QualificationJudgement.__table__.c.site)


# The question ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The answer for one site, therapy (None: any) and day, in words an operator can act on."""

    site: str
    therapy: str | None
    day: date
    qualified: bool
    reason: str
    basis: str | None = None


def check(site_id: str, therapy: str | None, day: date, registry: sites.SiteRegistry | None = None) -> Verdict:
    """Is `site_id` qualified for `therapy` on `day` (therapy None: for any therapy)?"""
    known = registry or sites.registry()
    site = known.sites.get(site_id)
    if site is None:  # the id is the sender's: quoted, bounded
        return Verdict(site_id, therapy, day, False, f"site {quoted(site_id)} is not in the site registry")
    held = [q for q in site.qualified() if therapy is None or q.therapy == therapy]
    covering = next((q for q in held if q.covers(day)), None)
    what = shown(therapy) if therapy else "any therapy"  # the sender's therapy code, bounded
    if covering is not None:
        return Verdict(site_id, therapy, day, True, f"site {site_id} is qualified for {what} on {day}", covering.basis)
    if not held:
        others = ", ".join(site.qualified_therapies()) or "none"
        return Verdict(
            site_id, therapy, day, False, f"site {site_id} is not qualified for {what} (qualified for: {others})"
        )
    return Verdict(
        site_id, therapy, day, False, f"site {site_id} is not qualified for {what} on {day}: {_periods(held, day)}"
    )


def _periods(held: Sequence[sites.Qualification], day: date) -> str:
    """Why none of a therapy's qualifications covers the day: the nearest one before or after it."""
    later = sorted((q for q in held if q.valid_from > day), key=lambda q: q.valid_from)
    if later:
        return f"its qualification starts {later[0].valid_from} ({later[0].basis})"
    ended = max(held, key=lambda q: q.until or date.max)
    return f"its qualification ended {ended.until} ({ended.basis})"


# The registry's versions -----------------------------------------------------------------------


def record_registry(session: Session, registry: sites.SiteRegistry | None = None) -> bool:
    """Record this registry content the first time the hub judges by it; True if it is new.

    A content under a version number already recorded with another content is recorded too (every
    judgement must name what judged it) and raises a warning: the file changed without a new version.
    """
    known = registry or sites.registry()
    if session.scalar(select(RegistryVersion.id).where(RegistryVersion.sha256 == known.sha256)) is not None:
        return False
    session.execute(
        insert_ignoring_conflicts(session, RegistryVersion),
        {"version": known.version, "sha256": known.sha256, "content": known.text, "first_loaded_at": utcnow()},
    )
    if known.version is None:
        return True
    earlier = session.scalars(
        select(RegistryVersion.sha256).where(
            RegistryVersion.version == known.version, RegistryVersion.sha256 != known.sha256
        )
    ).first()
    if earlier is not None:
        alerts.raise_alert(
            session,
            kind=UNVERSIONED_KIND,
            message=(
                f"config/sites.yaml changed without a new version: v{known.version} now has content "
                f"sha256 {known.sha256[:12]}, recorded before as {earlier[:12]}; raise `version`"
            ),
            dedupe_key=f"{UNVERSIONED_KIND}:{known.sha256}",
            details={"version": known.version, "sha256": known.sha256, "earlier_sha256": earlier},
        )
    return True


def history(session: Session) -> list[RegistryVersion]:
    """Every registry content the hub judged by, oldest first."""
    return list(session.scalars(select(RegistryVersion).order_by(RegistryVersion.id)))


def judgements(session: Session, *, site: str | None = None, limit: int = 200) -> list[QualificationJudgement]:
    """The newest judgements (of one site), newest first."""
    query = select(QualificationJudgement).order_by(QualificationJudgement.id.desc()).limit(limit)
    if site is not None:
        query = query.where(QualificationJudgement.site == site)
    return list(session.scalars(query))


# Judging what came in ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One event the registry judged, with the verdict and the order it names (if known)."""

    event: CanonicalEvent
    verdict: Verdict
    order_id: str | None = None


def judge_events(
    session: Session,
    registry: sites.SiteRegistry,
    events: Sequence[CanonicalEvent],
    *,
    sender_sites: Iterable[str] = (),
) -> list[Judged]:
    """The verdicts on the enrolments and hospital orders among `events`.

    An enrolment is judged for its own site and therapy. A hospital order (apheresis or infusion
    ordered or booked) is judged for the site and therapy of the order it names, found as the
    ledger's correlation finds it (its references, else its identity keys such as the COI id: a
    booking whose placer the hub never recorded is still its order's); when no order is known yet,
    the sender's sites must be qualified for some therapy that day (the order's own therapy was
    judged when it was enrolled; the event waits at stage correlate until then). An event the
    ledger holds already was judged when it first came: what it would be told now is left out (a
    resent page or message refuses nothing).
    """
    return judge_batch(session, registry, [(events, sender_sites)])[0]


def judge_batch(
    session: Session,
    registry: sites.SiteRegistry,
    payloads: Sequence[tuple[Sequence[CanonicalEvent], Iterable[str]]],
) -> list[list[Judged]]:
    """`judge_events` for each (events, sender sites) of a batch of payloads, with one lookup of the
    orders their references and identity keys name (and one of their facts) for the whole batch, and
    one of the ledger, as the ledger preloads a batch. The verdicts come back per payload, in order.
    The keys an event judged with an order and passed teaches the ledger find that order for the
    events after it, as they will in the ledger's pass over the batch."""
    wanted = [[e for e in events if _judged_kind(e)] for events, _senders in payloads]
    # Each hospital event's references and identity keys, worked out once for the lookup and for its
    # verdict: it is judged by the order correlation will take it to (`correlation.order_named`).
    keys: EventKeys = {
        id(e): (e.reference_keys(), e.identity_keys(), e)
        for events in wanted
        for e in events
        if e.event_type is not EventType.ORDER_ENROLLED
    }
    named = _orders_named(session, keys, [e.order_id for es in wanted for e in es if e.order_id]) if keys else ({}, {})
    asked: dict[tuple[str, str | None, date], Verdict] = {}  # a batch asks the same few questions

    def ask(site: str, therapy: str | None, day: date) -> Verdict:
        verdict = asked.get((site, therapy, day))
        if verdict is None:
            verdict = asked[(site, therapy, day)] = check(site, therapy, day, registry)
        return verdict

    out: list[list[Judged]] = []
    for events, (_all, senders) in zip(wanted, payloads, strict=True):
        out.append(_judge(ask, events, named, keys, sorted(set(senders))) if events else [])
    return _new_to_ledger(session, out)


def refused_on_release(
    session: Session, events: Sequence[CanonicalEvent]
) -> tuple[sites.SiteRegistry | None, list[Judged | None]]:
    """The refusal (or None) of each event released from waiting onto its order (stage correlate,
    once an enrolment registered a key it carries), judged as an arriving one is: for the site and
    therapy of the order it now names, on the day it happened, with its sender's sites. It was judged
    by its sender's sites alone when it came; applied unjudged, a booking from a site not qualified
    for that order's therapy would schedule it. One lookup per table for them all (`judge_batch`);
    the registry is loaded only when one of them is a hospital order."""
    judged_kind = [_judged_kind(e) for e in events]
    if not any(judged_kind):
        return None, [None] * len(events)
    registry = sites.registry()
    speakers = [
        _sender_sites(session, e) if judged else frozenset() for e, judged in zip(events, judged_kind, strict=True)
    ]
    verdicts = judge_batch(session, registry, [([e], s) for e, s in zip(events, speakers, strict=True)])
    return registry, [next((j for j in one if not j.verdict.qualified), None) for one in verdicts]


def _sender_sites(session: Session, event: CanonicalEvent) -> frozenset[str]:
    """The sites an HL7 event's sender speaks for, as routing found them (read again from its
    archived MSH-4 in a later transaction; the ledger's correlation reads the same, cached)."""
    sender = sites.sender_of(session, event)
    return sender.sites if sender is not None else frozenset()


def _judge(
    ask: Callable[[str, str | None, date], Verdict],
    wanted: list[CanonicalEvent],
    named: _Named,
    keys: EventKeys,
    speakers: list[str],
) -> list[Judged]:
    owner, facts = named
    out: list[Judged] = []
    for event in wanted:
        day = event.occurred_at.date()  # the day it happened, in the time zone it was given in
        if event.event_type is EventType.ORDER_ENROLLED:
            assert event.order is not None and event.order.site and event.order.therapy
            out.append(Judged(event, ask(event.order.site, event.order.therapy, day)))
            continue
        refs, ids, _event = keys[id(event)]
        target = order_named(owner, event.order_id, refs, ids) if owner or event.order_id else None
        order = facts.get(target) if target is not None else None
        if target is None or order is None or (order[0] and speakers and order[0] not in speakers):
            # No order, or one of a site the sender does not speak for, which the ledger refuses it
            # (correlation's ScopeConflict): the sender is not told another site's qualification.
            judged = _by_senders(ask, event, day, speakers)
        else:
            site, therapy = order
            judged = Judged(event, ask(site, therapy, day), target) if site else _by_senders(ask, event, day, speakers)
            if judged is None or judged.verdict.qualified:
                # The ledger registers the keys of the event it applies that it did not know, to its
                # order: a later event of the batch may name the order by them only (a new placer).
                for key in (*refs, *ids):
                    owner.setdefault(key, target)
        if judged is not None:
            out.append(judged)
    return out


def _by_senders(
    ask: Callable[[str, str | None, date], Verdict], event: CanonicalEvent, day: date, speakers: list[str]
) -> Judged | None:
    """No order known (or none with a site): the sender's sites must be qualified for some therapy."""
    verdicts = [ask(site, None, day) for site in speakers]
    good = next((v for v in verdicts if v.qualified), None)
    if good is not None:
        return Judged(event, good)
    if not verdicts:
        return None
    reason = (
        f"no site the sender speaks for ({', '.join(speakers)}) is qualified for any therapy on {day}"
        if len(verdicts) > 1
        else verdicts[0].reason
    )
    return Judged(event, Verdict(speakers[0], None, day, False, reason))


_ORDERS = Order.__table__
# Built once: a statement made per call costs more than running it (see cgthub.bulk).
_ORDER_FACTS = select(_ORDERS.c.id, _ORDERS.c.site, _ORDERS.c.therapy).where(
    _ORDERS.c.id.in_(bindparam("ids", expanding=True))
)

_ONE_ORDER_FACTS = select(_ORDERS.c.id, _ORDERS.c.site, _ORDERS.c.therapy).where(_ORDERS.c.id == bindparam("id"))


# Each key's order (keys that find none left out), and each such order's (site, therapy).
_Named = tuple[dict[Key, str], dict[str, tuple[str | None, str | None]]]


def _orders_named(session: Session, keys: EventKeys, order_ids: Iterable[str] = ()) -> _Named:
    """The orders the events' (reference keys, identity keys) find, and the site and therapy of
    those and of the orders the events name by id: one lookup of each table for the batch.

    What it read (each key's owner or none, each order's site) is left for the ledger's correlation
    of the same batch (`correlation.share_answers`), which would otherwise read it again."""
    answered: dict[Key, str | None] = {key: None for refs, ids, _event in keys.values() for key in (*refs, *ids)}
    found = rows_by_pairs(session, OrderKey.__table__, ("kind", "value", "order_id"), "kind", "value", answered)
    answered.update(((kind, value), order_id) for kind, value, order_id in found)
    owner = {key: order_id for key, order_id in answered.items() if order_id is not None}
    ids = sorted({*owner.values(), *order_ids})
    if not ids:
        share_answers(session, answered, {}, keys)
        return owner, {}
    if len(ids) == 1:  # the usual case: one message, one order (a plain equality is the cheaper statement)
        rows = session.connection().execute(_ONE_ORDER_FACTS, {"id": ids[0]})
    else:
        rows = session.connection().execute(_ORDER_FACTS, {"ids": ids})
    facts = {order_id: (site, therapy) for order_id, site, therapy in rows}
    share_answers(session, answered, {order_id: site for order_id, (site, _therapy) in facts.items()}, keys)
    return owner, facts


def _new_to_ledger(session: Session, judged: list[list[Judged]]) -> list[list[Judged]]:
    """Leave out the events the ledger holds already (looked up only for what will be kept: an
    enrolment's verdict, a refusal), for a batch's payloads in one lookup."""
    asked = [j.event.key for one in judged for j in one if _kept(j)]
    if not asked:
        return judged
    done = set(
        rows_by_pairs(
            session,
            LedgerEntry.__table__,
            ("source_system", "source_event_id"),
            "source_system",
            "source_event_id",
            asked,
        )
    )
    if not done:
        return judged
    return [[j for j in one if not _kept(j) or j.event.key not in done] for one in judged]


def _kept(judged: Judged) -> bool:
    return judged.event.event_type is EventType.ORDER_ENROLLED or not judged.verdict.qualified


def _judged_kind(event: CanonicalEvent) -> bool:
    if event.event_type is EventType.ORDER_ENROLLED:
        return event.order is not None and bool(event.order.site) and bool(event.order.therapy)
    return event.source_system is SourceSystem.HL7 and event.event_type in ORDERING


def keep(session: Session, registry: sites.SiteRegistry, judged: Sequence[Judged]) -> None:
    """Record each enrolment's verdict and each refusal, once per event and registry content, with
    the registry that gave it (a hospital order that passes leaves no row: it is the hot path).
    The verdicts kept in one call were judged together, and carry one `judged_at`."""
    kept = [one for one in judged if _kept(one)]
    if not kept:
        return
    version, sha256, now = registry.version, registry.sha256, utcnow()  # once, not for every row
    rows = [
        {
            "source_system": one.event.source_system._value_,
            "source_event_id": one.event.source_event_id,
            "registry_version": version,
            "registry_sha256": sha256,
            "site": one.verdict.site[:_SITE_LIMIT],
            "therapy": one.verdict.therapy,
            "day": one.verdict.day,
            "qualified": one.verdict.qualified,
            "reason": one.verdict.reason[:_REASON_LIMIT],
            "raw_id": one.event.provenance.raw_id,
            "judged_at": now,
        }
        for one in kept
    ]
    record_registry(session, registry)
    session.execute(insert_ignoring_conflicts(session, QualificationJudgement), rows)


def refuse_whole(
    session: Session, registry: sites.SiteRegistry, judged: Sequence[Judged], raw_id: int
) -> PayloadRejected:
    """A payload refused whole (an HL7 message, a record, a canonical file): its verdicts kept, an
    alert raised for each refusal; the rejection quarantines it at stage `qualify`."""
    refused = [j for j in judged if not j.verdict.qualified]
    keep(session, registry, judged)
    for one in refused:
        alert(session, registry, one, raw_id)
    return PayloadRejected(Stage.QUALIFY, refusal_text(registry, refused), details(registry, refused))


def refusal_text(registry: sites.SiteRegistry, refused: Sequence[Judged]) -> str:
    """The quarantine reason: what was refused, why, by which registry, and how to go on."""
    first = refused[0]
    what = "enrolment" if first.event.event_type is EventType.ORDER_ENROLLED else "hospital order"
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return (
        f"{what} refused: {first.verdict.reason}{more}; judged by site registry {registry.label}. "
        "If the site is qualified, record it in config/sites.yaml (raise `version`), then `cgthub sites replay`"
    )


def alert(session: Session, registry: sites.SiteRegistry, judged: Judged, raw_id: int) -> None:
    """A critical alert per refused event: a patient's order waits until someone acts. It names the
    archived payload that waits (`cgthub quarantine list --stage qualify` shows its entry)."""
    event, verdict = judged.event, judged.verdict
    alerts.raise_alert(
        session,
        kind=ALERT_KIND,
        severity=alerts.Severity.CRITICAL,
        order_id=judged.order_id,
        message=f"{event.event_type.value} refused: {verdict.reason} (raw message #{raw_id} waits at stage qualify)",
        dedupe_key=f"{ALERT_KIND}:{event.source_system.value}:{event.source_event_id}",
        details={
            "raw_id": raw_id,
            "site": verdict.site,
            "therapy": verdict.therapy,
            "day": verdict.day.isoformat(),
            "registry_version": registry.version,
            "registry_sha256": registry.sha256,
        },
    )


def close_alerts(session: Session, raw_id: int) -> int:
    """Close the refusal alerts of a payload that went through on replay."""
    closed = 0
    for found in session.scalars(select(Alert).where(Alert.kind == ALERT_KIND, Alert.status == "open")):
        if (found.details or {}).get("raw_id") == raw_id:
            alerts.close(session, found)
            closed += 1
    return closed


def details(registry: sites.SiteRegistry, refused: Sequence[Judged]) -> dict[str, Any]:
    """The facts of a refusal for the quarantine entry (ids and codes; no patient data)."""
    return {
        "registry_version": registry.version,
        "registry_sha256": registry.sha256,
        "refused": [
            {
                "event": f"{j.event.source_system.value}:{j.event.source_event_id}",
                "site": j.verdict.site,
                "therapy": j.verdict.therapy,
                "day": j.verdict.day.isoformat(),
            }
            for j in refused
        ],
    }
