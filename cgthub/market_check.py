"""Whether a market, as resolved through its baseline, can run: `cgthub markets check`.

A market passes when it resolves (no bad file, unknown parent or cycle), every mapping version it
pins exists, every mapping version in force for it passes its fixtures compiled under the market's
code maps and residency, each field its residency drops or tokenizes is one that some mapping in
force for it produces (a misspelt path would otherwise protect nothing, silently), no mapping in
force refuses the market by name, and the site registry lists at least one of its sites.

Fixtures under a market: the expectation is the version's (`fixtures.expected_path`), or the
market's own `<name>.<MARKET>.expected.json` where a market's code map changes what a fixture
gives; the market's residency is applied to the expectation (dropped fields removed, tokenized
fields expected as tokens) before comparing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgthub import markets, sites
from cgthub.mapping import fixtures, registry
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.spec import MappingError


@dataclass
class MarketReport:
    market: str
    chain: list[str] = field(default_factory=list)
    in_force: list[str] = field(default_factory=list)  # system/kind@vN
    fixtures_run: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_all() -> list[MarketReport]:
    return [check(market) for market in markets.all_markets(registry.markets_dir())]


def check(market: str) -> MarketReport:
    report = MarketReport(market)
    folder = registry.markets_dir()
    try:
        config, provenance = markets.resolve_market(market, folder)
    except markets.MarketConfigError as exc:
        report.problems.append(str(exc))
        return report
    report.chain = [path.name for path in markets.files_of(market, folder)]
    _check_pins(config, provenance, report)
    mappers = _in_force(market, report)
    for mapper, path in mappers:
        _check_fixtures(mapper, path, config, report)
    _check_residency(config, provenance, [m for m, _p in mappers], report)
    _check_admitted(config, [m for m, _p in mappers], report)
    _check_sites(config, report)
    return report


def _check_pins(config: markets.MarketConfig, provenance: markets.Provenance, report: MarketReport) -> None:
    for feed, pin in config.mappings.items():
        system, kind = feed.split("/")
        number = int(str(pin).lstrip("v"))
        found = [f.version for f in registry.versions(system, kind)]
        if number not in found:
            have = ", ".join(f"v{v}" for v in found) or "none"
            report.problems.append(
                f"{provenance[f'mappings.{feed}']}: mappings.{feed}: pins v{number}, which does not exist "
                f"(versions: {have})"
            )


def _in_force(market: str, report: MarketReport) -> list[tuple[CompiledMapping, Path]]:
    """Each feed's mapping as live ingest compiles it for this market today."""
    found = []
    for system, kind in sorted({(f.system, f.kind) for f in registry.discover()}):
        try:
            mapper = registry.get_mapper(system, kind, market=market)
        except (MappingError, ValueError) as exc:
            report.problems.append(f"{system}/{kind}: {exc}")
            continue
        if mapper is None:
            continue
        path = next(f.path for f in registry.versions(system, kind) if f.version == mapper.spec.version)
        report.in_force.append(f"{system}/{kind}@v{mapper.spec.version}")
        found.append((mapper, path))
    return found


def _check_fixtures(mapper: CompiledMapping, path: Path, config: markets.MarketConfig, report: MarketReport) -> None:
    ref = f"{mapper.mapping_id}@v{mapper.spec.version}"
    inputs = fixtures.inputs(path)
    if not inputs:
        report.problems.append(f"{ref}: no fixtures in {path.parent / 'fixtures'}")
        return
    for fixture in inputs:
        report.fixtures_run += 1
        own = fixture.with_name(f"{fixture.stem}.{config.market}.expected.json")
        target = own if own.exists() else fixtures.expected_path(fixture, mapper.spec.version)
        if not target.exists():
            report.problems.append(f"{ref}: fixture {fixture.name} has no expectation ({target.name})")
            continue
        produced, rejection = fixtures.run_fixture(mapper, fixture)
        problem = _judge(json.loads(target.read_text()), produced, rejection, config.residency)
        if problem:
            report.problems.append(
                f"{ref}: fixture {fixture.name} under {config.market}'s code maps and residency: {problem} "
                f"(compared with {target.name}; a market whose code map changes it gives "
                f"{fixture.stem}.{config.market}.expected.json)"
            )


def _judge(
    expected: Any,
    produced: list[tuple[str, dict[str, Any]]] | None,
    rejection: str | None,
    residency: markets.Residency,
) -> str | None:
    if isinstance(expected, dict):
        wanted = expected.get("rejected") or {}
        stage, words = str(wanted.get("stage", "")), str(wanted.get("reason_contains", ""))
        if rejection is not None and rejection.startswith(stage + ":") and words in rejection:
            return None
        return f"expected a rejection at {stage}, got {rejection or 'events'}"
    if produced is None:
        return f"rejected: {rejection}"
    return fixtures._compare([_under_residency(e, residency) for e in expected], [e for _r, e in produced])


def _under_residency(event: dict[str, Any], residency: markets.Residency) -> dict[str, Any]:
    """An expected event as the market's residency leaves it: dropped fields gone, tokenized ones tokens."""
    event = copy.deepcopy(event)
    for dotted in residency.drop:
        _pop(event, dotted.split("."))
    for dotted in residency.tokenize:
        keys = dotted.split(".")
        if _pop(event, keys) is not None:
            node = event
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = f"psn:{keys[-1]}:*"
    return event


def _pop(tree: dict[str, Any], keys: list[str]) -> Any:
    """Take a value out; a parent left empty goes too, as an event's JSON leaves out what is empty."""
    if len(keys) == 1:
        return tree.pop(keys[0], None)
    child = tree.get(keys[0])
    if not isinstance(child, dict):
        return None
    value = _pop(child, keys[1:])
    if not child:
        del tree[keys[0]]
    return value


def produced_fields(mappers: list[CompiledMapping]) -> set[str]:
    """Every canonical field some rule of these mappings fills (`refs.hospital_placer_order`)."""
    return {target for mapper in mappers for rule in mapper.spec.events for target in rule.fields}


def _check_residency(
    config: markets.MarketConfig, provenance: markets.Provenance, mappers: list[CompiledMapping], report: MarketReport
) -> None:
    produced = produced_fields(mappers)
    for kind in ("drop", "tokenize"):
        for dotted in getattr(config.residency, kind):
            if not any(target == dotted or target.startswith(dotted + ".") for target in produced):
                report.problems.append(
                    f"{provenance[f'residency.{kind}']}: residency.{kind}: {dotted} is produced by no mapping in "
                    f"force for {config.market} ({', '.join(report.in_force) or 'none'}): it would protect nothing"
                )


def _check_admitted(config: markets.MarketConfig, mappers: list[CompiledMapping], report: MarketReport) -> None:
    """A mapping that lists the markets it admits (`allowed: [US, DE]`) refuses every order of another."""
    for mapper in mappers:
        for rule in mapper.spec.events:
            field_rule = rule.fields.get("order.market")
            if field_rule is None or field_rule.allowed is None:
                continue
            admitted = sorted(str(a) for a in field_rule.allowed)
            if config.market not in admitted:
                report.problems.append(
                    f"{mapper.mapping_id}@v{mapper.spec.version}: rule {rule.name!r} admits order.market only "
                    f"{admitted}: every {config.market} order would be refused (`transform: market` admits "
                    "each market that has a file)"
                )


def _check_sites(config: markets.MarketConfig, report: MarketReport) -> None:
    try:
        listed = [site for site, entry in sites.registry().sites.items() if entry.market == config.market]
    except sites.SiteRegistryError as exc:
        report.problems.append(str(exc))
        return
    if not listed:
        report.problems.append(
            f"{sites.registry_path()}: lists no site of market {config.market}: no payload can be routed to it "
            f"(add its treatment sites with `market: {config.market}`)"
        )
