"""Markets as one baseline and its variants, each value resolved with the file and line it came from.

`config/markets/baseline.yaml` holds what every market shares. A market file `<MARKET>.yaml` says
`extends: baseline` (or another market: `FR` may extend `DE`) and holds only its differences; a
market file without `extends` stands alone. Why: launching a market "like DE" should cost one small
file, and a reviewer should see which of its values are its own and which it inherits.

Merge, parent first, then the child on top:
- mappings (dictionaries) merge key by key, at any depth (`code_maps.therapy` adds codes);
- a list replaces the inherited list whole (`residency.drop` lists every field it drops);
- an explicit `null` removes the inherited value (`mappings: {crm/enrollment: null}` unpins).

Errors (a shape the model refuses, an unknown parent, a cycle) name `file:line`, like every file
under config/ (cgthub/config_file.py). `resolve_market(name)` returns the resolved `MarketConfig`
and the provenance of each leaf; `all_markets()` lists the markets configured.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cgthub import config_file
from cgthub.config_file import ConfigFileError
from cgthub.settings import get_settings

BASELINE = "baseline"
MARKET_NAME = r"^[A-Z]{2,3}$"

Pin = int | Annotated[str, Field(pattern=r"^v?[1-9][0-9]*$")]


class MarketConfigError(ConfigFileError):
    """A market (or the baseline) cannot be resolved; the message starts with `file:line:`."""


class Residency(BaseModel):
    """Fields that must not leave the market: dropped, or replaced by a keyed token."""

    model_config = ConfigDict(extra="forbid")
    drop: list[str] = []
    tokenize: list[str] = []


class Deadlines(BaseModel):
    """The market's own deadline figures (cgthub/deadlines.py); config/ops.yaml holds the rest."""

    model_config = ConfigDict(extra="forbid")
    vein_to_vein_target_days: float | None = Field(default=None, gt=0)


class MarketConfig(BaseModel):
    """One market, resolved: mapping versions pinned, code maps, residency, deadlines, language."""

    model_config = ConfigDict(extra="forbid")
    market: str = Field(pattern=MARKET_NAME)
    mappings: dict[str, Pin] = {}
    code_maps: dict[str, dict[str, str]] = {}
    residency: Residency = Residency()
    deadlines: Deadlines = Deadlines()
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")  # ISO 639-1, of outbound HL7 (MSH-19)

    @field_validator("mappings")
    @classmethod
    def _pins_name_a_system_and_kind(cls, pins: dict[str, Pin]) -> dict[str, Pin]:
        for key in pins:
            if key.count("/") != 1 or not all(key.split("/")):
                raise ValueError(f"pin {key!r} must be <system>/<kind>, e.g. crm/enrollment")
        return pins


class _ResidencyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drop: list[str] | None = None
    tokenize: list[str] | None = None


class _DeadlinesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vein_to_vein_target_days: float | None = Field(default=None, gt=0)


class MarketFile(BaseModel):
    """One file as written: every key optional, `null` allowed where it removes an inherited value."""

    model_config = ConfigDict(extra="forbid")
    market: str | None = Field(default=None, pattern=MARKET_NAME)
    extends: str | None = None
    mappings: dict[str, Pin | None] | None = None
    code_maps: dict[str, dict[str, str | None] | None] | None = None
    residency: _ResidencyFile | None = None
    deadlines: _DeadlinesFile | None = None
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}$")

    @field_validator("mappings")
    @classmethod
    def _pins_name_a_system_and_kind(cls, pins: dict[str, Pin | None] | None) -> dict[str, Pin | None] | None:
        for key in pins or {}:
            if key.count("/") != 1 or not all(key.split("/")):
                raise ValueError(f"pin {key!r} must be <system>/<kind>, e.g. crm/enrollment")
        return pins


@dataclass(frozen=True)
class Source:
    """Where a resolved value was written."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


# A resolved leaf's dotted path ("residency.drop", "mappings.crm/enrollment") -> where it was written.
Provenance = dict[str, Source]


def markets_dir() -> Path:
    return get_settings().config_dir / "markets"


def market_path(name: str, folder: Path | None = None) -> Path:
    """The file of a market (`DE.yaml`, or `de.yaml` where that is how it was saved) or the baseline."""
    folder = folder or markets_dir()
    if name == BASELINE:
        return folder / f"{BASELINE}.yaml"
    upper = folder / f"{name.upper()}.yaml"
    lower = folder / f"{name.lower()}.yaml"
    return lower if lower.exists() and not upper.exists() else upper


def valid_name(name: str) -> bool:
    """A market's name: an ISO 3166 country code in capitals (two or three letters)."""
    return re.fullmatch(MARKET_NAME, name) is not None


def all_markets(folder: Path | None = None) -> list[str]:
    """The markets configured: every file under config/markets but the baseline, by name."""
    folder = folder or markets_dir()
    return sorted({p.stem.upper() for p in folder.glob("*.yaml") if p.stem != BASELINE})


def resolve_market(name: str, folder: Path | None = None) -> tuple[MarketConfig, Provenance]:
    """`name` resolved through its `extends` chain, and where each leaf came from.

    Raises MarketConfigError naming file and line when a file is malformed, a parent unknown, the
    chain a cycle, or the merged result not a valid market. Re-read when any market file changes."""
    folder = folder or markets_dir()
    return _resolve(folder, name.upper(), _stamp(folder))


def files_of(name: str, folder: Path | None = None) -> list[Path]:
    """The files a market resolves through, root first: baseline.yaml, DE.yaml, FR.yaml."""
    return [path for path, _data, _lines in _chain(folder or markets_dir(), name.upper())]


def market_dict(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The resolved market as the mapping compiler takes it: only what some file says, so a mapping's
    own residency or code maps hold where no market file speaks."""
    config, _ = resolve_market(name, folder)
    return config.model_dump(exclude_unset=True)


def vein_to_vein_target_days(market: str | None) -> float | None:
    """The market's own vein-to-vein target, if its files set one (cgthub/ops_config.py falls back)."""
    if not market or market == BASELINE or not market_path(market).exists():
        return None
    return resolve_market(market)[0].deadlines.vein_to_vein_target_days


def outbound_language(market: str | None) -> str | None:
    """The language of outbound messages to the market's hospitals (HL7 MSH-19); None without a market file."""
    if not market or market == BASELINE or not market_path(market).exists():
        return None
    return resolve_market(market)[0].language


def _stamp(folder: Path) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.yaml")))


@lru_cache(maxsize=128)
def _resolve(folder: Path, name: str, _stamp: object) -> tuple[MarketConfig, Provenance]:
    chain = _chain(folder, name)
    merged: dict[str, Any] = {}
    provenance: dict[tuple[str, ...], Source] = {}
    for path, data, lines in chain:
        _merge(merged, provenance, data, lines, path, ())
    merged["market"] = name
    own = chain[-1]
    provenance[("market",)] = Source(own[0], own[2].get(("market",), 1))
    try:
        config = MarketConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        source = next((provenance[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in provenance), Source(own[0], 1))
        where = ".".join(loc) or "top level"
        raise MarketConfigError(f"{source}: {where}: {first['msg']} (resolving market {name})") from exc
    return config, {".".join(path): source for path, source in sorted(provenance.items())}


_Link = tuple[Path, dict[str, Any], dict[tuple[Any, ...], int]]


def _chain(folder: Path, name: str) -> list[_Link]:
    """The files from the root down to `name`, each validated as a file, with its keys' lines."""
    chain: list[_Link] = []
    seen: list[str] = []
    current: str | None = name
    came_from: tuple[Path, int] | None = None
    while current is not None:
        path = market_path(current, folder)
        if current in seen:
            cycle = " -> ".join([*seen, current])
            assert came_from is not None
            raise MarketConfigError(f"{came_from[0]}:{came_from[1]}: extends: {cycle} is a cycle")
        if not path.exists():
            if came_from is None:
                raise MarketConfigError(f"{path}:1: no such market: there is no {path.name} in {folder}")
            known = ", ".join([BASELINE, *all_markets(folder)])
            raise MarketConfigError(
                f"{came_from[0]}:{came_from[1]}: extends: {current!r} is no market file in {folder} (known: {known})"
            )
        seen.append(current)
        data, lines = _read(path)
        if current == BASELINE:
            if data.get("extends") is not None:
                raise MarketConfigError(f"{path}:{lines.get(('extends',), 1)}: extends: the baseline extends nothing")
            if data.get("market") is not None:
                raise MarketConfigError(f"{path}:{lines.get(('market',), 1)}: market: the baseline names no market")
        elif data.get("market") is not None and data["market"] != current:
            raise MarketConfigError(
                f"{path}:{lines.get(('market',), 1)}: market: says {data['market']!r}, but the file is {path.name}"
            )
        chain.append((path, data, lines))
        parent = data.pop("extends", None)
        came_from = (path, lines.get(("extends",), 1))
        current = None if parent is None else (BASELINE if parent == BASELINE else str(parent).upper())
    chain.reverse()
    return chain


def _read(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """One file validated as written (shape errors name its line), and the line of every key."""
    parsed = config_file.load(path, MarketFile, MarketConfigError)
    node, _data = config_file.parse(path.read_text())
    data = parsed.model_dump(exclude_unset=True)
    return data, config_file.key_lines(node)


def _merge(
    into: dict[str, Any],
    provenance: dict[tuple[str, ...], Source],
    data: dict[str, Any],
    lines: dict[tuple[Any, ...], int],
    path: Path,
    at: tuple[str, ...],
) -> None:
    for key, value in data.items():
        here = (*at, str(key))
        if value is None:
            into.pop(key, None)
            _forget(provenance, here)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            provenance.pop(here, None)  # an inherited `{}` is a leaf only while nothing is under it
            _merge(into[key], provenance, value, lines, path, here)
            if not into[key]:
                provenance[here] = Source(path, lines.get(here, 1))
        else:
            _forget(provenance, here)
            into[key] = _without_nulls(copy.deepcopy(value))
            _note(provenance, into[key], lines, path, here)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _forget(provenance: dict[tuple[str, ...], Source], at: tuple[str, ...]) -> None:
    for known in [p for p in provenance if p[: len(at)] == at]:
        del provenance[known]


def _note(
    provenance: dict[tuple[str, ...], Source],
    value: Any,
    lines: dict[tuple[Any, ...], int],
    path: Path,
    at: tuple[str, ...],
) -> None:
    """Every leaf under `at` (a scalar, a list, an empty mapping) gets the line it was written on."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _note(provenance, inner, lines, path, (*at, str(key)))
    else:
        provenance[at] = Source(path, lines.get(at, 1))


def clear_cache() -> None:
    _resolve.cache_clear()
