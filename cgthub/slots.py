"""Feasible apheresis dates for an order: a slot chain that the CMO's capacity, the lead times, the
treatment site's calendar and the sponsor's quotas all allow.

A slot chain books backwards from the manufacturing slot: the apheresis on day A ships the material
to the CMO, which receives it on A + shipping_out, the day it needs a free place (capacity per CMO,
therapy and day, synced from the CMO into `manufacturing_slots`). Release, arrival at the site and
infusion follow from the lead times in `config/scheduling.yaml`. A date is offered when the site
collects that weekday and is not closed, it is at least `min_notice_days` ahead and within
`horizon_days`, some CMO allowed for the order's market has a place on its slot day, and neither
the site's nor the market's quota for that month is used up.

The CMO is reached through the partner registry: a partner declaring `slots` (a `SlotProvider`
factory) publishes capacity and takes reservations; `sync` stores what it publishes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cgthub import config_file, partners, sites
from cgthub.errors import CgthubError
from cgthub.scheduling_tables import ManufacturingSlot, SlotBooking
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.tables import Order, utcnow

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class SchedulingError(CgthubError):
    """Why an order cannot be scheduled as asked; `status` and `code` are what the API answers."""

    status = 409
    code = "not_schedulable"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class SchedulingConfigError(config_file.ConfigFileError, SchedulingError):
    status, code = 500, "scheduling_config"


class NotSchedulable(SchedulingError):
    """The order lacks what scheduling needs (site, therapy, lead times) or is past scheduling."""


class SlotTaken(SchedulingError):
    """The CMO has no place left on that day (its own answer, or the hub's count of it)."""

    code = "slot_full"


class ReservationUnknown(SchedulingError):
    """The CMO has no reservation by the id the hub holds for a booking."""

    code = "reservation_unknown"


class NotBooked(SchedulingError):
    """A reschedule or cancellation of an order that has no booking."""

    code = "not_booked"


class QuotaExhausted(SchedulingError):
    code = "quota_exhausted"


class DateNotFeasible(SchedulingError):
    code = "date_not_feasible"


# configuration ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LeadTimeOverride(_Strict):
    shipping_out: int | None = Field(default=None, ge=0, le=10)
    manufacturing: int | None = Field(default=None, ge=1, le=60)
    qc_release: int | None = Field(default=None, ge=0, le=30)
    shipping_back: int | None = Field(default=None, ge=0, le=10)
    lymphodepletion: int | None = Field(default=None, ge=0, le=10)


class LeadTimes(_Strict):
    """Days between the steps of one therapy's slot chain."""

    shipping_out: int = Field(ge=0, le=10)  # apheresis -> receipt at the CMO (the slot day)
    manufacturing: int = Field(ge=1, le=60)
    qc_release: int = Field(ge=0, le=30)
    shipping_back: int = Field(ge=0, le=10)
    lymphodepletion: int = Field(ge=0, le=10)  # product at site -> infusion
    markets: dict[str, LeadTimeOverride] = Field(default_factory=dict)

    def for_market(self, market: str | None) -> LeadTimes:
        override = self.markets.get(market or "")
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


def _weekdays(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [d for d in value if d not in WEEKDAYS]
    if unknown or not value:
        raise ValueError(f"weekdays are some of {', '.join(WEEKDAYS)} (not {unknown or 'none'})")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


class Calendar(_Strict):
    """A site's apheresis calendar: weekdays it collects, days it is closed, start and duration."""

    weekdays: tuple[str, ...] = ("mon", "tue", "wed", "thu")
    closed: frozenset[date] = frozenset()
    start: clock = clock(8, 0)
    minutes: int = Field(default=240, ge=30, le=720)
    timezone: str = "UTC"

    @field_validator("weekdays")
    @classmethod
    def _known_days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _weekdays(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _time_zone(value)

    def collects_on(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.weekdays and day not in self.closed

    def starts_at(self, day: date) -> datetime:
        return datetime.combine(day, self.start, tzinfo=ZoneInfo(self.timezone))


class _SiteCalendar(_Strict):
    weekdays: tuple[str, ...] | None = None
    closed: frozenset[date] = frozenset()
    start: clock | None = None
    minutes: int | None = Field(default=None, ge=30, le=720)
    timezone: str | None = None

    @field_validator("weekdays")
    @classmethod
    def _known_days(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _weekdays(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return None if value is None else _time_zone(value)


class Calendars(_Strict):
    default: Calendar = Calendar()
    sites: dict[str, _SiteCalendar] = Field(default_factory=dict)


class Quotas(_Strict):
    sites: dict[str, int] = Field(default_factory=dict)
    markets: dict[str, int] = Field(default_factory=dict)

    @field_validator("sites", "markets")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [k for k, v in value.items() if v < 0]
        if bad:
            raise ValueError(f"a quota is a number of bookings per month, 0 or more ({', '.join(bad)})")
        return value


class PickupWindow(_Strict):
    """When the courier collects one leg, in hours after the day's reference time: the booked
    apheresis start (to the manufacturer) or the release (back to the site)."""

    after_hours: float = Field(ge=0, le=168)
    until_hours: float = Field(gt=0, le=336)

    @model_validator(mode="after")
    def _opens_before_it_closes(self) -> PickupWindow:
        if self.until_hours <= self.after_hours:
            raise ValueError(
                f"a pickup window closes after it opens (after_hours {self.after_hours:g} "
                f">= until_hours {self.until_hours:g})"
            )
        return self

    def span(self) -> tuple[timedelta, timedelta]:
        return timedelta(hours=self.after_hours), timedelta(hours=self.until_hours)


class LegWindows(_Strict):
    to_manufacturer: PickupWindow | None = None
    to_site: PickupWindow | None = None


class PickupWindows(_Strict):
    """Pickup windows per leg: a site's own, else its market's, else the default."""

    default: LegWindows = LegWindows(
        to_manufacturer=PickupWindow(after_hours=4, until_hours=12),
        to_site=PickupWindow(after_hours=12, until_hours=36),
    )
    markets: dict[str, LegWindows] = Field(default_factory=dict)
    sites: dict[str, LegWindows] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_has_both_legs(self) -> PickupWindows:
        if self.default.to_manufacturer is None or self.default.to_site is None:
            raise ValueError("pickup_windows.default needs both legs: to_manufacturer and to_site")
        return self

    def window(self, leg: str, site: str | None, market: str | None) -> tuple[timedelta, timedelta]:
        """(opens, closes) after the leg's reference time; `leg` is to_manufacturer or to_site."""
        for found in (self.sites.get(site or ""), self.markets.get(market or ""), self.default):
            chosen = getattr(found, leg, None) if found is not None else None
            if chosen is not None:
                span: tuple[timedelta, timedelta] = chosen.span()
                return span
        raise NotSchedulable(f"no pickup window for leg {leg}")


class SchedulingConfig(_Strict):
    horizon_days: int = Field(default=90, ge=1, le=366)
    min_notice_days: int = Field(default=3, ge=0, le=60)
    lead_times: dict[str, LeadTimes]
    cmos: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    calendars: Calendars = Calendars()
    quotas: Quotas = Quotas()
    pickup_windows: PickupWindows = PickupWindows()

    _site_calendars: dict[str, Calendar] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _site_calendars_resolve(self) -> SchedulingConfig:
        base = self.calendars.default
        for site, override in self.calendars.sites.items():
            merged = {**base.model_dump(), **override.model_dump(exclude_none=True)}
            merged["closed"] = base.closed | override.closed
            self._site_calendars[site] = Calendar.model_validate(merged)  # each part was checked alone
        return self

    def calendar(self, site: str) -> Calendar:
        return self._site_calendars.get(site, self.calendars.default)

    def lead_times_for(self, therapy: str, market: str | None) -> LeadTimes:
        found = self.lead_times.get(therapy)
        if found is None:
            raise NotSchedulable(
                f"no lead times for therapy {therapy} in config/scheduling.yaml", "add the therapy under lead_times"
            )
        return found.for_market(market)

    def cmos_for(self, market: str | None, own: str | None) -> tuple[str, ...]:
        listed = self.cmos.get(market or "")
        if listed:
            return listed
        return (own,) if own else ()


def config_path() -> Path:
    return get_settings().config_dir / "scheduling.yaml"


def config() -> SchedulingConfig:
    """config/scheduling.yaml as it is now (read again when the file changes)."""
    path = config_path()
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise SchedulingConfigError(f"{path}: the scheduling configuration is missing") from None
    return _load(path, stamp)


@lru_cache(maxsize=4)
def _load(path: Path, _stamp: int) -> SchedulingConfig:
    return config_file.load(path, SchedulingConfig, SchedulingConfigError)


# the CMO's side, through the partner registry ---------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    cmo: str
    therapy: str
    day: date
    capacity: int
    booked: int


@dataclass(frozen=True)
class Reservation:
    """What the hub asks a CMO to hold: one place for one order's material on its slot day."""

    cmo: str
    therapy: str
    slot_day: date
    order_id: str
    order_reference: str | None
    coi_id: str | None


@dataclass(frozen=True)
class Reserved:
    reservation_id: str
    slot_day: date


class SlotProvider(Protocol):
    """What a CMO connector offers scheduling (declared as `Partner.slots`)."""

    def capacity(self, start: date, end: date, therapy: str | None = None) -> list[Capacity]: ...

    def reserve(self, reservation: Reservation, idempotency_key: str) -> Reserved:
        """Hold one place; raise SlotTaken when the day is full; the same key answers the same hold."""
        ...

    def release(self, reservation_id: str, idempotency_key: str) -> None:
        """Give a held place back (the same key, or a place given back already, changes nothing);
        raise ReservationUnknown when the CMO has no such reservation."""
        ...


def provider() -> SlotProvider:
    """The slot provider of the first registered partner that declares one."""
    for partner in partners.registry().values():
        if partner.slots is not None:
            made: SlotProvider = partners.resolve(partner.slots)()
            return made
    raise NotSchedulable("no partner declares manufacturing slots", "register a CMO connector with `slots`")


def store_capacity(session: Session, rows: Iterable[Capacity]) -> int:
    """Upsert what a CMO published (one statement per 500 days); the CMO's own count of booked
    places wins, since it includes the hub's bookings."""
    now = utcnow()
    values = [
        {"cmo": r.cmo, "therapy": r.therapy, "day": r.day, "capacity": r.capacity, "booked": r.booked, "synced_at": now}
        for r in rows
    ]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for start in range(0, len(values), 500):
        statement = insert(ManufacturingSlot).values(values[start : start + 500])
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["cmo", "therapy", "day"],
                set_={name: statement.excluded[name] for name in ("capacity", "booked", "synced_at")},
            )
        )
    return len(values)


def sync(database_url: str | None = None, *, start: date | None = None, days: int | None = None) -> int:
    """Read the CMO's published capacity for the scheduling horizon into the hub; rows stored."""
    first = start or datetime.now(UTC).date()
    horizon = days or (config().horizon_days + 30)  # slot days trail apheresis dates by the shipping time
    rows = provider().capacity(first, first + timedelta(days=horizon))
    with session_scope(database_url) as session:
        return store_capacity(session, rows)


# feasibility -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderFacts:
    order_id: str
    therapy: str | None
    site: str | None
    market: str | None
    cmo: str | None
    status: str = "enrolled"
    on_hold: bool = False


class Option(NamedTuple):
    """One feasible slot chain (a tuple: a planner makes tens of thousands of them at once)."""

    apheresis_on: date
    apheresis_at: datetime
    apheresis_minutes: int
    cmo: str
    slot_day: date
    places_left: int
    release_on: date
    at_site_on: date
    infusion_on: date
    site_quota_left: int | None
    market_quota_left: int | None

    @property
    def vein_to_vein_days(self) -> int:
        return (self.infusion_on - self.apheresis_on).days

    def as_dict(self) -> dict[str, object]:
        return {
            "apheresis_on": self.apheresis_on.isoformat(),
            "apheresis_at": self.apheresis_at.isoformat(),
            "apheresis_minutes": self.apheresis_minutes,
            "cmo": self.cmo,
            "slot_day": self.slot_day.isoformat(),
            "places_left": self.places_left,
            "release_on": self.release_on.isoformat(),
            "at_site_on": self.at_site_on.isoformat(),
            "infusion_on": self.infusion_on.isoformat(),
            "vein_to_vein_days": self.vein_to_vein_days,
            "site_quota_left": self.site_quota_left,
            "market_quota_left": self.market_quota_left,
        }


SCHEDULABLE = frozenset({"enrolled"})  # an order past enrolment has its apheresis booked or done


class Planner:
    """Everything a feasibility question needs, read once: the configuration, free places per CMO,
    therapy and day, and quota use per site and market and month. Answers many orders fast."""

    def __init__(
        self,
        settings: SchedulingConfig,
        free: dict[tuple[str, str], dict[date, int]],
        site_use: Counter[tuple[str, str]],
        market_use: Counter[tuple[str, str]],
        today: date,
    ) -> None:
        self.settings, self.free, self.today = settings, free, today
        self.site_use, self.market_use = site_use, market_use
        self.first = today + timedelta(days=settings.min_notice_days)
        self.last = today + timedelta(days=settings.horizon_days)
        self._days: dict[str, list[tuple[date, str, datetime]]] = {}
        self._options: dict[tuple[str, str, str | None, str | None], list[Option]] = {}

    @classmethod
    def load(cls, session: Session, *, today: date | None = None, settings: SchedulingConfig | None = None) -> Planner:
        settings = settings or config()
        today = today or datetime.now(UTC).date()
        last_slot = today + timedelta(days=settings.horizon_days + 11)  # the longest shipping_out allowed
        free: dict[tuple[str, str], dict[date, int]] = {}
        slot = ManufacturingSlot
        query = select(slot.cmo, slot.therapy, slot.day, slot.capacity, slot.booked).where(
            slot.day >= today, slot.day <= last_slot, slot.capacity > slot.booked
        )
        for cmo, therapy, day, capacity, booked in session.execute(query):
            free.setdefault((cmo, therapy), {})[day] = capacity - booked
        site_use: Counter[tuple[str, str]] = Counter()
        market_use: Counter[tuple[str, str]] = Counter()
        first_month = today.replace(day=1).isoformat()[:7]
        for column, counter in ((SlotBooking.site, site_use), (SlotBooking.market, market_use)):
            counts = session.execute(
                select(column, SlotBooking.month, func.count())
                .where(SlotBooking.month >= first_month)
                .group_by(column, SlotBooking.month)
            )
            for key, month, count in counts:
                counter[(key, month)] = int(count)
        return cls(settings, free, site_use, market_use, today)

    def collection_days(self, site: str) -> list[tuple[date, str, datetime]]:
        """The days the site collects on in the booking window: (day, its month, local start)."""
        days = self._days.get(site)
        if days is None:
            calendar = self.settings.calendar(site)
            span = (self.last - self.first).days + 1
            every = (self.first + timedelta(days=i) for i in range(span))
            days = [(d, d.isoformat()[:7], calendar.starts_at(d)) for d in every if calendar.collects_on(d)]
            self._days[site] = days
        return days

    def options(self, order: OrderFacts, *, limit: int | None = None, shared: bool = True) -> list[Option]:
        """Every feasible slot chain for the order, earliest apheresis first (then by CMO).

        What is feasible depends only on the order's therapy, site, market and CMO, so orders that
        share them share one computation (a planner is a snapshot: nothing it read changes);
        `shared=False` computes afresh (the bench's measure of one order alone)."""
        therapy, site = self._check(order)
        key = (therapy, site, order.market, order.cmo)
        found = self._options.get(key) if shared else None
        if found is None:
            found = self._options[key] = self._compute(*key)
        return list(found[:limit] if limit is not None else found)

    def _compute(self, therapy: str, site: str, market_of: str | None, own_cmo: str | None) -> list[Option]:
        times = self.settings.lead_times_for(therapy, market_of)
        minutes = self.settings.calendar(site).minutes
        cmos = [(c, free) for c in self.settings.cmos_for(market_of, own_cmo) if (free := self.free.get((c, therapy)))]
        if not cmos:
            return []
        market = market_of or ""
        site_quota = self.settings.quotas.sites.get(site)
        market_quota = self.settings.quotas.markets.get(market)
        to_slot = timedelta(days=times.shipping_out)
        to_release = timedelta(days=times.manufacturing + times.qc_release)
        to_site = to_release + timedelta(days=times.shipping_back)
        to_infusion = to_site + timedelta(days=times.lymphodepletion)
        left_in: dict[str, tuple[int | None, int | None] | None] = {}  # per month; None: a quota is used up
        found: list[Option] = []
        for day, month, starts in self.collection_days(site):
            if month in left_in:
                left = left_in[month]
            else:
                site_left = None if site_quota is None else site_quota - self.site_use[(site, month)]
                market_left = None if market_quota is None else market_quota - self.market_use[(market, month)]
                used_up = (site_left is not None and site_left <= 0) or (market_left is not None and market_left <= 0)
                left = left_in[month] = None if used_up else (site_left, market_left)
            if left is None:
                continue
            slot_day = day + to_slot
            for cmo, free in cmos:
                places = free.get(slot_day)
                if places:
                    found.append(
                        Option(
                            day,
                            starts,
                            minutes,
                            cmo,
                            slot_day,
                            places,
                            slot_day + to_release,
                            slot_day + to_site,
                            slot_day + to_infusion,
                            left[0],
                            left[1],
                        )
                    )
        return found

    def why_not(self, order: OrderFacts, day: date, cmo: str | None = None) -> SchedulingError:
        """The reason one apheresis date (and CMO) is not offered, as the error a booker gets."""
        therapy, site = self._check(order)
        calendar = self.settings.calendar(site)
        if day < self.first or day > self.last:
            return DateNotFeasible(
                f"{day} is outside the booking window {self.first}..{self.last}",
                f"the site needs {self.settings.min_notice_days} days' notice; dates are offered "
                f"{self.settings.horizon_days} days ahead",
            )
        if not calendar.collects_on(day):
            why = "is closed" if day in calendar.closed else f"does not collect on {WEEKDAYS[day.weekday()]}"
            return DateNotFeasible(f"site {site} {why} ({day})", "pick a date from GET /orders/{id}/slots")
        month = day.isoformat()[:7]
        site_quota = self.settings.quotas.sites.get(site)
        if site_quota is not None and self.site_use[(site, month)] >= site_quota:
            return QuotaExhausted(
                f"site {site} has used its quota of {site_quota} bookings for {month}", "pick a date in another month"
            )
        market_quota = self.settings.quotas.markets.get(order.market or "")
        if market_quota is not None and self.market_use[(order.market or "", month)] >= market_quota:
            return QuotaExhausted(
                f"market {order.market} has used its quota of {market_quota} bookings for {month}",
                "pick a date in another month",
            )
        allowed = self.settings.cmos_for(order.market, order.cmo)
        if cmo is not None and cmo not in allowed:
            return DateNotFeasible(f"{cmo} does not make {therapy} for market {order.market}", f"choose {allowed}")
        slot_day = day + timedelta(days=self.settings.lead_times_for(therapy, order.market).shipping_out)
        return SlotTaken(
            f"no manufacturing place left for {therapy} on {slot_day} at {cmo or ' or '.join(allowed)}",
            "pick another date from GET /orders/{id}/slots",
        )

    def _check(self, order: OrderFacts) -> tuple[str, str]:
        if not order.therapy or not order.site:
            raise NotSchedulable(f"order {order.order_id} has no therapy or site yet", "wait for its enrolment")
        if order.status not in SCHEDULABLE:
            raise NotSchedulable(f"order {order.order_id} is {order.status}: its apheresis is past scheduling")
        if order.on_hold:
            raise NotSchedulable(f"order {order.order_id} is on hold", "release the hold first")
        return order.therapy, order.site


def facts(order: Order) -> OrderFacts:
    """What scheduling reads of an order (its CMO from the site registry when the order names none)."""
    cmo = order.cmo
    if not cmo and order.site:
        known = sites.registry().sites.get(order.site)
        cmo = known.cmo if known is not None else None
    return OrderFacts(order.id, order.therapy, order.site, order.market, cmo, order.status, bool(order.on_hold))


def options_for(session: Session, order_id: str, *, today: date | None = None) -> list[Option]:
    order = session.get(Order, order_id)
    if order is None:
        raise NotSchedulable(f"no order {order_id}")
    return Planner.load(session, today=today).options(facts(order))


def timed(planner: Planner, orders: Sequence[OrderFacts], *, shared: bool = True) -> tuple[int, float]:
    """Options found for every order and the seconds it took (the bench's measure)."""
    started = time.perf_counter()
    total = sum(len(planner.options(o, shared=shared)) for o in orders)
    return total, time.perf_counter() - started
