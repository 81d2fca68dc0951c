"""Where mapping files live, which version a market uses, and the compiled-mapping cache.

Files: `mappings/<system>/<kind>/v<N>.yaml` (an HL7 kind `ORM^O01` lives in `ORM_O01/`).
Markets: `config/markets/<market>.yaml`, resolved through `baseline.yaml` (cgthub/markets.py), may
pin versions (`mappings: {crm/enrollment: 2}`), override code maps and name data-residency fields
(`residency: {drop: [...], tokenize: [...]}`). Without a pin the newest version whose effective
date has come is used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from cgthub import conflicts, markets
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.spec import LoadedSpec, MappingError, load
from cgthub.settings import get_settings


def mappings_dir() -> Path:
    return get_settings().mappings_dir


def markets_dir() -> Path:
    return markets.markets_dir()


def kind_dir(kind: str) -> str:
    return kind.replace("^", "_")


@dataclass(frozen=True)
class MappingFile:
    system: str
    kind: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.system}/{self.kind}@v{self.version}"


def discover(root: Path | None = None) -> list[MappingFile]:
    """Every mapping file under the mappings folder (read once per process; `clear_cache` re-reads)."""
    return list(_discover(root or mappings_dir()))


@lru_cache(maxsize=8)
def _discover(root: Path) -> tuple[MappingFile, ...]:
    found = []
    for path in sorted(root.glob("*/*/v*.yaml")):
        stem = path.stem[1:]
        if stem.isdigit():
            found.append(MappingFile(path.parent.parent.name, path.parent.name, int(stem), path))
    return tuple(sorted(found, key=lambda f: (f.system, f.kind, f.version)))


def versions(system: str, kind: str) -> list[MappingFile]:
    """Every version that maps `system`/`kind`: its own folder, or a file that lists it in `also_for`."""
    own = [f for f in discover() if f.system == system and f.kind == kind_dir(kind)]
    if own:
        return own
    return [f for f in discover() if f.system == system and kind_dir(kind) in _also_for(f.path)]


def _also_for(path: Path) -> set[str]:
    return {kind_dir(k) for k in _spec_of(path, path.stat().st_mtime_ns).spec.also_for}


@lru_cache(maxsize=256)
def _spec_of(path: Path, _mtime: int) -> LoadedSpec:
    return load(path)


# The market of a payload whose market cannot be known yet (a record of an order not enrolled
# yet): every market's residency rules apply, no market's pins or code maps.
EVERY_MARKET = "*"


MarketConfigError = markets.MarketConfigError


def market_config(market: str) -> dict[str, Any]:
    """The market resolved through its baseline (cgthub/markets.py), as the compiler takes it."""
    if market == EVERY_MARKET:
        return _every_market()
    if not markets.market_path(market, markets_dir()).exists():
        return {"market": market.upper()}
    return markets.market_dict(market, markets_dir())  # what no file says, the mapping decides


def configured_markets() -> list[str]:
    return markets.all_markets(markets_dir())


def _every_market() -> dict[str, Any]:
    """The union of every market's residency rules: what must not leave any market stays out."""
    drop: dict[str, None] = {}
    tokenize: dict[str, None] = {}
    for market in configured_markets():
        residency = markets.resolve_market(market, markets_dir())[0].residency
        drop.update(dict.fromkeys(residency.drop))
        tokenize.update(dict.fromkeys(residency.tokenize))
    return {"market": EVERY_MARKET, "residency": {"drop": list(drop), "tokenize": list(tokenize)}}


_lock = threading.Lock()
_compiled: dict[tuple[str, str, int, str | None], CompiledMapping] = {}


def load_file(path: Path) -> LoadedSpec:
    return load(path)


def compile_file(path: Path, market: str | None = None) -> CompiledMapping:
    return CompiledMapping(load(path), market=market_config(market) if market else None)


def get_mapper(
    system: str, kind: str, *, market: str | None = None, version: int | str | None = None
) -> CompiledMapping | None:
    """The compiled mapping for a payload of `system`/`kind`, or None when there is none.

    A mapping file that fails to load raises MappingError (a deployment problem, not bad input).
    The answer for a (system, kind, market) without a pinned version is remembered for the day:
    it is asked once per payload on the hot path.
    """
    if version is None:
        return _current(system, kind, market.upper() if market else None, datetime.now(UTC).date(), mappings_dir())
    return _resolve(system, kind, market, version)


def warm(system: str) -> int:
    """Load and compile now the mappings in force for every kind of `system`, neutral and under each
    configured market, as the first payloads would; the number compiled. A listener calls it before
    it accepts connections: after a restart or a failover the first messages of every sender waited
    for their mapping files to be read and compiled (~0.1 s each kind). A file that fails to load is
    left for its first payload to quarantine with its reason."""
    warmed = 0
    for kind in sorted({f.kind for f in discover() if f.system == system}):
        for market in (None, *configured_markets()):
            try:
                warmed += get_mapper(system, kind, market=market) is not None
            except MappingError:
                continue
    return warmed


@lru_cache(maxsize=1024)
def _current(system: str, kind: str, market: str | None, _today: object, _root: Path) -> CompiledMapping | None:
    return _resolve(system, kind, market, None)


def _resolve(system: str, kind: str, market: str | None, version: int | str | None) -> CompiledMapping | None:
    available = versions(system, kind)
    if not available:
        return None
    wanted = _wanted_version(system, kind, market, version, available)
    if wanted is None:
        return None
    key = (system, kind_dir(kind), wanted.version, market.upper() if market else None)
    with _lock:
        if key not in _compiled:
            _compiled[key] = compile_file(wanted.path, market)
        return _compiled[key]


def _wanted_version(
    system: str, kind: str, market: str | None, version: int | str | None, available: list[MappingFile]
) -> MappingFile | None:
    if version is None and market:
        pins = market_config(market).get("mappings") or {}
        version = pins.get(f"{system}/{kind_dir(kind)}") or pins.get(f"{system}/{kind}")
    if version is not None:
        number = int(str(version).lstrip("v"))
        match = [f for f in available if f.version == number]
        if not match:
            raise MappingError(mappings_dir() / system / kind_dir(kind), None, None, f"there is no version v{number}")
        return match[0]
    today = datetime.now(UTC).date()
    effective = [f for f in available if _spec_of(f.path, f.path.stat().st_mtime_ns).spec.effective <= today]
    return effective[-1] if effective else None


def clear_cache() -> None:
    with _lock:
        _compiled.clear()
    markets.clear_cache()
    conflicts.clear_cache()
    _spec_of.cache_clear()
    _discover.cache_clear()
    _current.cache_clear()
