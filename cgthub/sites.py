"""The site registry (`config/sites.yaml`): each treatment site's market, CMO, HL7 senders and
qualifications, and where each partner feed says which site a record belongs to.

The market decides which `config/markets` rules (pins, code maps, residency) a payload is mapped
under, so it must be known before mapping; `cgthub.routing` asks this registry. The HL7 senders
also bound what a sender may change: only orders of the sites its facility code is listed under.
A site is qualified per therapy from a day until a day, on a stated basis (training, certification);
`cgthub.qualification` refuses an enrolment or order outside that. The file carries a `version`,
and its SHA-256 tells apart two contents of one version.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from sqlalchemy.orm import Session

from cgthub import config_file
from cgthub.model import CanonicalEvent, SourceSystem
from cgthub.settings import get_settings


class SiteRegistryError(config_file.ConfigFileError):
    """config/sites.yaml cannot be used; names file and line, like a mapping file's errors."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Qualification(_Strict):
    """A site may order `therapy` from `from` until `until` (both days included; no `until`: open)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    therapy: str = Field(min_length=1, max_length=64)
    valid_from: date = Field(alias="from")
    until: date | None = None
    basis: str = Field(min_length=1, max_length=300, description="training, certification, audit: why")

    @model_validator(mode="after")
    def _ordered(self) -> Qualification:
        if self.until is not None and self.until < self.valid_from:
            raise ValueError(f"until ({self.until}) is before from ({self.valid_from})")
        return self

    def covers(self, day: date) -> bool:
        return self.valid_from <= day and (self.until is None or day <= self.until)


_LISTED = "listed under `therapies` (no dates)"


class Site(_Strict):
    market: str
    cmo: str | None = None
    facilities: tuple[str, ...] = ()
    therapies: tuple[str, ...] = ()  # the short form: qualified without dates; `qualifications` says more
    qualifications: tuple[Qualification, ...] = ()

    @field_validator("market")
    @classmethod
    def _country(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("market must be a two-letter country code")
        return value.upper()

    @model_validator(mode="after")
    def _one_form(self) -> Site:
        if self.therapies and self.qualifications:
            raise ValueError("give `qualifications` or the short `therapies`, not both")
        return self

    def qualified(self) -> tuple[Qualification, ...]:
        """Every qualification, the short form's therapies as qualifications without dates."""
        if self.qualifications:
            return self.qualifications
        return tuple(Qualification(therapy=t, valid_from=date.min, basis=_LISTED) for t in self.therapies)

    def qualified_therapies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(q.therapy for q in self.qualified()))


class Source(_Strict):
    """Where a feed's records name their site: a site field, the HL7 sender, or the orders they name."""

    site: str | None = None
    facility: str | None = None
    orders: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way(self) -> Source:
        if not (self.site or self.facility or self.orders):
            raise ValueError("say where the site is: site, facility or orders")
        return self


_NO_SITES: frozenset[str] = frozenset()


class SiteRegistry(_Strict):
    version: int | None = Field(default=None, ge=1, description="raised with every change of qualifications")
    sites: dict[str, Site]
    sources: dict[str, Source] = Field(default_factory=dict)
    _by_facility: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)
    _senders: dict[str, Sender] = PrivateAttr(default_factory=dict)  # each registered facility's, made once
    _sha256: str = PrivateAttr(default="")
    _text: str = PrivateAttr(default="")

    @property
    def sha256(self) -> str:
        """SHA-256 of the file as read: two contents under one `version` are told apart by it."""
        return self._sha256

    @property
    def text(self) -> str:
        return self._text

    @property
    def label(self) -> str:
        """`v3 (sha256 1a2b3c4d5e6f)`: which registry judged, in words an operator can match."""
        return f"{'v' + str(self.version) if self.version else 'unversioned'} (sha256 {self._sha256[:12]})"

    @model_validator(mode="after")
    def _one_market_per_sender(self) -> SiteRegistry:
        index: dict[str, set[str]] = {}
        for site_id, site in self.sites.items():
            for facility in site.facilities:
                index.setdefault(facility, set()).add(site_id)
        for facility, ids in sorted(index.items()):
            if len({self.sites[i].market for i in ids}) > 1:
                raise ValueError(
                    f"facility {facility} speaks for sites in several markets: its market would be unknown"
                )
        self._by_facility = {facility: frozenset(ids) for facility, ids in index.items()}
        self._senders = {facility: Sender(facility, ids) for facility, ids in self._by_facility.items()}
        return self

    def market_of(self, site_id: str) -> str | None:
        site = self.sites.get(site_id)
        return site.market if site else None

    def sites_of_facility(self, facility: str) -> frozenset[str]:
        # Read from the private attributes' dict itself: `self._by_facility` goes through pydantic's
        # __getattr__, 30 times slower than the lookup (asked for every HL7 message).
        by_facility: dict[str, frozenset[str]] = self.__pydantic_private__["_by_facility"]  # type: ignore[index]
        return by_facility.get(facility, _NO_SITES)

    def sender(self, facility: str) -> Sender:
        """The sender `facility` names, with the sites it speaks for (none for one not registered):
        a registered facility's is made once per registry, not once per HL7 message (a frozen
        dataclass costs about 5,000 instructions to make). Read as `sites_of_facility` reads."""
        senders: dict[str, Sender] = self.__pydantic_private__["_senders"]  # type: ignore[index]
        found = senders.get(facility)
        return found if found is not None else Sender(facility, _NO_SITES)

    def source(self, system: str, kind: str) -> Source | None:
        return (
            self.sources.get(f"{system}/{kind.replace('^', '_')}")
            or self.sources.get(f"{system}/{kind}")
            or self.sources.get(system)
        )


def registry_path() -> Path:
    return _path_in(get_settings().config_dir)


@lru_cache(maxsize=8)
def _path_in(config_dir: Path) -> Path:
    return config_dir / "sites.yaml"


_LOOK_AGAIN_AFTER = 1.0  # seconds: the file is asked for its change time at most this often
_last_look: tuple[float, Path, int] | None = None


def registry() -> SiteRegistry:
    """The registry as the file says now (read again when the file changes, so a fix needs no
    restart); asked per payload, so the file's change time is looked at once a second at most."""
    global _last_look
    path = registry_path()
    now = time.monotonic()
    if _last_look is not None and _last_look[1] == path and now - _last_look[0] < _LOOK_AGAIN_AFTER:
        return _load(path, _last_look[2])
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise SiteRegistryError(f"{path}: the site registry is missing") from None
    _last_look = (now, path, stamp)
    return _load(path, stamp)


@lru_cache(maxsize=4)
def _load(path: Path, _stamp: int) -> SiteRegistry:
    loaded = config_file.load(path, SiteRegistry, SiteRegistryError)
    text = path.read_bytes()  # what config_file.load read, unless the file changed in between:
    loaded._text = text.decode(errors="replace")  # then the next look (a new stamp) reads both again
    loaded._sha256 = hashlib.sha256(text).hexdigest()
    return loaded


def clear_cache() -> None:
    global _last_look
    _last_look = None
    _load.cache_clear()


# Who may touch what ---------------------------------------------------------------------------

_SENDERS = "cgthub.sender_sites"  # session.info: raw id -> the sites its HL7 sender speaks for


@dataclass(frozen=True)
class Sender:
    facility: str
    sites: frozenset[str]


def remember_sender(session: Session, raw_id: int | None, sender: Sender) -> None:
    """What the router read of a payload's sender, for the ledger's check of the same transaction."""
    if raw_id is not None:
        session.info.setdefault(_SENDERS, {})[raw_id] = sender


def sender_of(session: Session, event: CanonicalEvent) -> Sender | None:
    """The HL7 sender an event came from, or None for a partner whose sender is not site-bound.

    Found where the router left it, else (an event replayed from quarantine in a later transaction)
    read again from the archived message's MSH-4.
    """
    if event.source_system is not SourceSystem.HL7 or event.provenance.raw_id is None:
        return None
    raw_id = event.provenance.raw_id
    known = session.info.setdefault(_SENDERS, {})
    if raw_id not in known:
        known[raw_id] = _archived_sender(session, raw_id)
    sender: Sender | None = known[raw_id]
    return sender


def _archived_sender(session: Session, raw_id: int) -> Sender | None:
    from cgthub import archive, hl7v2

    try:
        facility = hl7v2.parse(archive.read(session, raw_id)).header.sending_facility
    except (LookupError, ValueError, hl7v2.HL7ParseError):
        return None
    return registry().sender(facility)
