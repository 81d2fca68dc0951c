"""A payload's market, decided before it is mapped, on every ingest path.

Every path that maps a partner payload (the MLLP listener, the HL7 inbox, `cgthub hl7 ingest`, the
connectors, the courier webhook, the CMO's CSV drop) asks `mapper(session, system, kind)` for its
mapping. The answer reads where the site registry (`config/sites.yaml`, `sources`) says each record
names its site: a site field, the HL7 sending facility, or the orders it refers to. It then maps
with `get_mapper(system, kind, market=...)`, so the market's pinned version, code maps and
residency rules hold before anything reaches the central store. `cgthub mappings replay` asks it
too, with the version it replays (`mapper(..., version=N)`): a replayed record is mapped under the
market live ingest chose for it, with that market's residency rules.

- a site or sending facility the registry does not know: quarantined at stage `route`;
- a record of an order not known yet (or of no declared source): mapped under every market's
  residency rules (`EVERY_MARKET`), and it waits for its order as before;
- a page whose records belong to several markets: each record mapped under its own market (JSON
  and CSV; another format under every market's residency rules).

Where the site is known, its qualification is judged too (`cgthub.qualification`): an enrolment or
hospital order from a site not qualified for the therapy on that day is quarantined at stage
`qualify` and alerted. A payload of one record is refused whole; a page of several (the CRM's) is
split, and each refused record is archived as a payload of its own and quarantined, so the others
go through and the refused one is retried alone once the registry is fixed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypedDict, TypeVar

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, hl7v2, pipeline, qualification, quarantine, sites
from cgthub.archive import Inbound
from cgthub.errors import PayloadRejected, Rejection
from cgthub.mapping import construct
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.registry import EVERY_MARKET, get_mapper
from cgthub.model import CanonicalEvent, OrderDetails
from cgthub.quarantine import Stage
from cgthub.quoting import quoted
from cgthub.tables import Order, OrderKey

_FACILITY = ("MSH-4", "MSH-4.1")  # paths that read what `hl7v2.Header.sending_facility` holds
_Frozen = TypeVar("_Frozen", CanonicalEvent, OrderDetails)

REPLAY_HINT = "add it to config/sites.yaml, then `cgthub sites replay`"
_DETAIL_LIMIT = 80  # a sender's value in a quarantine entry's details: its head and a digest of the whole


_Found = tuple[CompiledMapping, sites.SiteRegistry, sites.Source | None]  # a mapping, its registry and source


class _Facts(TypedDict):
    """What the archive knows of a payload, passed on to whichever mapping maps it."""

    raw_id: int
    checksum: str
    received_at: datetime


def mapper(
    session: Session,
    system: str,
    kind: str,
    *,
    parsed: hl7v2.Message | None = None,
    version: int | str | None = None,
    market: str | None = None,
) -> RoutedMapper | None:
    """The mapping of a `system`/`kind` payload under its market, or None when none is configured.

    `version` forces a mapping version (`cgthub mappings replay`): each record's market is still
    chosen as on live ingest and its residency rules and code maps apply, only the version is the
    one given, not the market's pin. `market` forces one market's rules on every record instead of
    each record's own (the replay's explicit `--market` override); the site registry still refuses
    a site or sender it does not know.

    What it reads (the mapping, the site registry, the payload's source) is read once per session
    and kept in `session.info`: it is asked for every payload of a batch, and a transaction's
    payloads are judged by one registry content (the next session reads the file again)."""
    number = int(str(version).lstrip("v")) if version is not None else None
    cache: dict[tuple[str, str, int | None], _Found | None] = session.info.setdefault(_FOUND, {})
    key = (system, kind, number)
    if key not in cache:
        neutral = get_mapper(system, kind, version=number)
        if neutral is None:
            cache[key] = None
        else:
            known = sites.registry()
            cache[key] = (neutral, known, known.source(system, kind))
    found = cache[key]
    if found is None:
        return None
    forced = market.upper() if market else None
    return RoutedMapper(session, system, kind, *found, parsed, forced_version=number, forced_market=forced)


# session.info: (system, kind, forced version) -> (mapping, registry, source) or None
_FOUND = "cgthub.routing.found"
_MARKETS = "cgthub.routing.markets"  # session.info: (system, kind, market, forced version) -> its mapping


def mapper_for(session: Session) -> Callable[[Inbound], pipeline.Mapper | None]:
    """`pipeline.ingest_batch`'s mapper_for, routed by market, for payloads read in `session`."""

    def lookup(item: Inbound) -> pipeline.Mapper | None:
        return mapper(session, item.system, item.kind)

    return lookup


class RoutedMapper:
    """One payload's mapping under the market of its records (see the module's docstring)."""

    def __init__(
        self,
        session: Session,
        system: str,
        kind: str,
        neutral: CompiledMapping,
        known: sites.SiteRegistry,
        source: sites.Source | None,
        parsed: hl7v2.Message | None,
        *,
        forced_version: int | None = None,
        forced_market: str | None = None,
    ) -> None:
        self.session, self.system, self.kind = session, system, kind
        self.neutral, self.known, self.source, self.parsed = neutral, known, source, parsed
        self.mapping_id, self.version = neutral.mapping_id, neutral.version
        self.forced_version = forced_version  # see `mapper`: a replay's version, not the market's pin
        self.forced_market = forced_market  # see `mapper`: a replay's `--market`, not each record's own

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        pending = self.map_unjudged(payload, raw_id=raw_id, checksum=checksum, received_at=received_at)
        Pending.judge_all([pending])
        return pending.settle()

    def map_unjudged(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> Pending:
        """The payload mapped under its market, its events judged later with the rest of its batch
        (`Pending.judge_all`, which the pipeline calls once per batch), then `settle`d."""
        facts: _Facts = {"raw_id": raw_id, "checksum": checksum, "received_at": received_at}
        self._sender_sites: frozenset[str] = frozenset()
        events = self._map(payload, facts)
        return Pending(self, payload, facts, events, self._sender_sites)

    def map_unrouted(
        self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime
    ) -> list[CanonicalEvent]:
        """The payload mapped under every market's residency rules, its site not asked: what a
        replay compares with the ledger when the registry no longer knows its site or sender."""
        facts: _Facts = {"raw_id": raw_id, "checksum": checksum, "received_at": received_at}
        events = self._with(EVERY_MARKET).map(payload, **facts)
        if self.source is not None and self.source.facility:
            return [_without_site(event) for event in events]
        return events

    def split(self, payload: bytes) -> list[bytes] | None:
        """Each record of a page as a payload of its own (JSON, CSV), as a refused record is archived;
        None for a payload of one record or a format whose records cannot stand alone."""
        records = self.neutral.records(payload) if self.neutral.spec.format != "hl7" else []
        return self._split(records) if len(records) > 1 else None

    def _settle(self, pending: Pending) -> list[CanonicalEvent]:
        judged = pending.judged
        for one in judged:
            if not one.verdict.qualified:
                return self._without_refused(pending.payload, pending.events, judged, pending.facts)
        qualification.keep(self.session, self.known, judged)
        return pending.events

    def _map(self, payload: bytes, facts: _Facts) -> list[CanonicalEvent]:
        if self.source is not None and self.source.facility:
            return self._map_hl7(payload, self.source.facility, facts)
        records = self.neutral.records(payload) if self.source is not None else []
        markets = self._markets(records) if records else []
        chosen = set(markets)
        if len(chosen) <= 1:
            market = next(iter(chosen), None) or EVERY_MARKET
            return self._with(market).map(payload, **facts)
        split = self._split(records)
        if split is None:  # a format whose records cannot stand alone: the strictest rules for all
            return self._with(EVERY_MARKET).map(payload, **facts)
        events: list[CanonicalEvent] = []
        for record_payload, record_market in zip(split, markets, strict=True):
            events.extend(self._with(record_market or EVERY_MARKET).map(record_payload, **facts))
        return events

    # HL7: the sending facility names the site --------------------------------------------------
    def _map_hl7(self, payload: bytes, path: str, facts: _Facts) -> list[CanonicalEvent]:
        message = self.parsed
        if message is None:
            try:
                message = hl7v2.parse(payload)
            except hl7v2.HL7ParseError as exc:
                raise PayloadRejected(Stage.PARSE, f"not an HL7 v2 message we can read: {exc}") from exc
        # The sending facility (MSH-4, its first component) as the MSH read that made the ACK read it.
        facility = message.header.sending_facility if path in _FACILITY else message.get(path)
        registry = self.known
        sender = registry.sender(facility)
        if not facility:
            raise PayloadRejected(
                Stage.ROUTE, f"the message names no sending facility ({path}): its site and market are unknown"
            )
        if not sender.sites:
            raise PayloadRejected(
                Stage.ROUTE,
                f"sending facility {quoted(facility)} ({path}) is not registered for any site; {REPLAY_HINT}",
                {"facility": archive.fitted(facility, _DETAIL_LIMIT)},
            )
        sites.remember_sender(self.session, facts["raw_id"], sender)
        self._sender_sites = sender.sites
        market = registry.market_of(next(iter(sender.sites)))
        made = self._with(market or EVERY_MARKET).map(payload, **facts, parsed=message)
        return [_without_site(event) for event in made]

    # JSON, XML, CSV: a site field, or the orders the records name ------------------------------
    def _markets(self, records: list[Any]) -> list[str | None]:
        assert self.source is not None
        registry = self.known
        if self.source.site:
            out: list[str | None] = []
            for number, record in enumerate(records, start=1):
                site = _read(record, self.source.site)
                if site in (None, ""):
                    out.append(None)  # the mapping says whether a record without a site may pass
                    continue
                market = registry.market_of(str(site))
                if market is None:
                    raise PayloadRejected(
                        Stage.ROUTE,
                        f"{self.system}/{self.kind}: record {number} names site {quoted(str(site))}, which is "
                        f"not in the site registry; {REPLAY_HINT}",
                        {"site": archive.fitted(str(site), _DETAIL_LIMIT), "record": number},
                    )
                out.append(market)
            return out
        return self._markets_of_orders(records)

    def _markets_of_orders(self, records: list[Any]) -> list[str | None]:
        assert self.source is not None
        keys = [
            [(kind, str(value)) for kind, path in self.source.orders.items() if (value := _read(record, path))]
            for record in records
        ]
        wanted = {key for record_keys in keys for key in record_keys}
        found: dict[tuple[str, str], str | None] = {}
        by_kind: dict[str, set[str]] = {}
        for kind, value in wanted:
            by_kind.setdefault(kind, set()).add(value)
        for kind, values in by_kind.items():
            rows = self.session.execute(
                select(OrderKey.value, Order.market)
                .join(Order, Order.id == OrderKey.order_id)
                .where(OrderKey.kind == kind, OrderKey.value.in_(sorted(values)))
            )
            found.update({(kind, value): market for value, market in rows})
        out: list[str | None] = []
        for record_keys in keys:
            markets = {found[key] for key in record_keys if found.get(key)}
            out.append(markets.pop() if len(markets) == 1 else None)
        return out

    def _split(self, records: list[Any]) -> list[bytes] | None:
        """Each record as a payload of its own, where the format allows it."""
        fmt = self.neutral.spec.format
        if fmt == "json":
            return [orjson.dumps(record) for record in records]
        if fmt == "csv":
            out = []
            for record in records:
                text = io.StringIO()
                writer = csv.DictWriter(text, fieldnames=list(record), lineterminator="\n")
                writer.writeheader()
                writer.writerow(record)
                out.append(text.getvalue().encode())
            return out
        return None

    # Qualification: what a site not qualified that day sent waits at stage `qualify` --------------
    def _without_refused(
        self, payload: bytes, events: list[CanonicalEvent], judged: list[qualification.Judged], facts: _Facts
    ) -> list[CanonicalEvent]:
        """The events of the records whose site is qualified; each refused record quarantined alone.

        A payload that is one record (an HL7 message, a webhook's record) is refused whole."""
        split = self.split(payload)
        if split is None:
            raise self._refusal(judged, facts)
        kept: list[CanonicalEvent] = []
        for number, record_payload in enumerate(split, start=1):
            record_events = self._map(record_payload, facts)
            verdicts = qualification.judge_events(self.session, self.known, record_events)
            refused = [j for j in verdicts if not j.verdict.qualified]
            if refused:
                self._refuse_record(record_payload, number, refused, facts)
                qualification.keep(self.session, self.known, verdicts)
                continue
            qualification.keep(self.session, self.known, verdicts)
            kept.extend(record_events)
        return kept

    def _refusal(self, judged: list[qualification.Judged], facts: _Facts) -> PayloadRejected:
        """The whole payload refused: its verdicts kept, its alerts raised (the pipeline quarantines it)."""
        return qualification.refuse_whole(self.session, self.known, judged, facts["raw_id"])

    def _refuse_record(
        self, record_payload: bytes, number: int, refused: list[qualification.Judged], facts: _Facts
    ) -> None:
        """Archive one record of a page as a payload of its own and quarantine it, with its alerts."""
        (saved,) = archive.store_many(
            self.session,
            [Inbound(self.system, self.kind, "split", record_payload, facts["received_at"], None, "application/json")],
            status="quarantined",
        )
        details = qualification.details(self.known, refused) | {"page_raw_id": facts["raw_id"], "record": number}
        quarantine.put(
            self.session,
            stage=Stage.QUALIFY,
            reason=qualification.refusal_text(self.known, refused),
            system=self.system,
            kind=self.kind,
            raw_id=saved.raw_id,
            details=details,
        )
        archive.mark(self.session, saved.raw_id, "quarantined")
        for one in refused:
            qualification.alert(self.session, self.known, one, saved.raw_id)

    def _with(self, market: str) -> CompiledMapping:
        market = self.forced_market or market
        chosen: dict[tuple[str, str, str, int | None], CompiledMapping | None]
        chosen = self.session.info.setdefault(_MARKETS, {})
        key = (self.system, self.kind, market, self.forced_version)
        if key not in chosen:
            chosen[key] = get_mapper(self.system, self.kind, market=market, version=self.forced_version)
        found = chosen[key]
        if found is None:
            raise PayloadRejected(
                Stage.MAP,
                f"no mapping is configured for {self.system}/{self.kind} in market {market}",
                code=Rejection.UNSUPPORTED_TYPE,
            )
        return found


class Pending:
    """One payload mapped by a RoutedMapper, its events not judged yet (`pipeline.Unjudged`)."""

    __slots__ = ("events", "facts", "judged", "mapper", "payload", "sender_sites")

    def __init__(
        self,
        mapper: RoutedMapper,
        payload: bytes,
        facts: _Facts,
        events: list[CanonicalEvent],
        sender_sites: frozenset[str],
    ) -> None:
        self.mapper, self.payload, self.facts, self.events = mapper, payload, facts, events
        self.sender_sites = sender_sites
        self.judged: list[qualification.Judged] = []

    @classmethod
    def judge_all(cls, batch: Sequence[Pending]) -> None:
        """Judge the events of a batch's payloads at once: one lookup of the orders they name (and of
        the ledger) for all of them, each payload judged with its own sender's sites."""
        groups: dict[tuple[int, int], list[Pending]] = {}
        for one in batch:
            groups.setdefault((id(one.mapper.session), id(one.mapper.known)), []).append(one)
        for group in groups.values():
            first = group[0].mapper
            verdicts = qualification.judge_batch(
                first.session, first.known, [(one.events, one.sender_sites) for one in group]
            )
            for one, judged in zip(group, verdicts, strict=True):
                one.judged = judged

    def settle(self) -> list[CanonicalEvent]:
        """The events that may be applied, the verdicts kept; a refusal quarantined (raised as
        PayloadRejected for a payload of one record, split out of a page of several)."""
        return self.mapper._settle(self)


def _read(record: Any, path: str) -> Any:
    value = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _without_site(event: CanonicalEvent) -> CanonicalEvent:
    """A sending facility is not a site: an HL7 event never sets its order's site (the enrolment does)."""
    details = event.order
    if details is None or details.site is None:
        return event
    if not (details.therapy or details.market or details.cmo):  # the usual case: one copy, not two
        return _copy(event, "order", None)
    return _copy(event, "order", _copy(details, "site", None))


def _copy(model: _Frozen, name: str, value: object) -> _Frozen:
    """`model.model_copy(update={name: value})`, laid out as model_copy lays it (a shallow copy of
    the fields, `name` marked set) without its general path: once for every HL7 event."""
    values = dict(model.__dict__)
    values[name] = value
    return construct.instance(type(model), values, model.__pydantic_fields_set__ | {name})  # type: ignore[no-any-return]
