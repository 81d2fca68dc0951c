"""The site registry (`config/sites.yaml`): each treatment site's market, CMO, HL7 senders and
therapies, and where each partner feed says which site a record belongs to.

The market decides which `config/markets` rules (pins, code maps, residency) a payload is mapped
under, so it must be known before mapping; `cgthub.routing` asks this registry. The HL7 senders
also bound what a sender may change: only orders of the sites its facility code is listed under.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


class Site(_Strict):
    market: str
    cmo: str | None = None
    facilities: tuple[str, ...] = ()
    therapies: tuple[str, ...] = ()

    @field_validator("market")
    @classmethod
    def _country(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("market must be a two-letter country code")
        return value.upper()


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


class SiteRegistry(_Strict):
    sites: dict[str, Site]
    sources: dict[str, Source] = Field(default_factory=dict)
    _by_facility: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

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
        return self

    def market_of(self, site_id: str) -> str | None:
        site = self.sites.get(site_id)
        return site.market if site else None

    def sites_of_facility(self, facility: str) -> frozenset[str]:
        return self._by_facility.get(facility, frozenset())

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
    return config_file.load(path, SiteRegistry, SiteRegistryError)


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
    return Sender(facility, registry().sites_of_facility(facility))
