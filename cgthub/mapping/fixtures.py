"""Mapping fixtures: each mapping ships sample payloads and the canonical events they must give.

`mappings/<system>/<kind>/fixtures/<name>.<ext>` is an input; `<name>.expected.json` the events
every version must produce, or `<name>.v<N>.expected.json` for one version only. A payload that
must be refused has `{"rejected": {"stage": ..., "reason_contains": ...}}` as its expectation.
Pseudonyms depend on the deployment's key, so an expected `psn:<kind>:*` matches any token of
that kind. A mapping without fixtures, or with a rule no fixture reaches, fails.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cgthub.errors import PayloadRejected
from cgthub.mapping.compiler import CompiledMapping

RECEIVED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FixtureResult:
    name: str
    ok: bool
    problem: str = ""


@dataclass
class MappingReport:
    ref: str
    results: list[FixtureResult] = field(default_factory=list)
    unreached_rules: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unreached_rules and all(r.ok for r in self.results)


def inputs(mapping_path: Path) -> list[Path]:
    folder = mapping_path.parent / "fixtures"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".expected.json"))


def expected_path(fixture: Path, version: int) -> Path:
    own = fixture.with_name(f"{fixture.stem}.v{version}.expected.json")
    return own if own.exists() else fixture.with_name(f"{fixture.stem}.expected.json")


def normalize(event_json: dict[str, Any]) -> dict[str, Any]:
    """What a fixture compares: the event without arrival time and provenance."""
    return {k: v for k, v in event_json.items() if k not in ("received_at", "provenance")}


def run_fixture(mapper: CompiledMapping, fixture: Path) -> tuple[list[tuple[str, dict[str, Any]]] | None, str | None]:
    payload = fixture.read_bytes()
    try:
        produced = mapper.map_by_rule(
            payload, raw_id=None, checksum=hashlib.sha256(payload).hexdigest(), received_at=RECEIVED_AT
        )
    except PayloadRejected as rejected:
        return None, f"{rejected.stage}: {rejected.reason}"
    return [(rule, normalize(event.to_json_dict())) for rule, event in produced], None


def check(mapper: CompiledMapping, mapping_path: Path, *, update: bool = False) -> MappingReport:
    """Each fixture's output against its expectation. With `update`, an expectation this version
    does not meet (or a missing one) is written; one it meets is left as it is, byte for byte."""
    version = mapper.spec.version
    report = MappingReport(ref=f"{mapper.mapping_id}@v{version}")
    fixtures = inputs(mapping_path)
    if not fixtures:
        report.problems.append(f"no fixtures in {mapping_path.parent / 'fixtures'}: every mapping ships some")
        return report
    reached: set[str] = set()
    for fixture in fixtures:
        produced, rejection = run_fixture(mapper, fixture)
        if produced is not None:
            reached.update(rule for rule, _e in produced)
        target = expected_path(fixture, version)
        result = _judge(fixture, target, produced, rejection) if target.exists() else None
        if update and (result is None or not result.ok):
            target, written = _update(fixture, version, produced, rejection)
            if written:
                report.updated.append(target.name)
            result = _judge(fixture, target, produced, rejection)
        if result is None:
            own = fixture.with_name(f"{fixture.stem}.v{version}.expected.json").name
            result = FixtureResult(fixture.name, False, f"no expectation: write {target.name} or {own}")
        elif not result.ok and target.name != f"{fixture.stem}.v{version}.expected.json":
            result.problem += _fallback_hint(fixture, version, target, produced, rejection)
        report.results.append(result)
    report.unreached_rules = [e.rule.name for e in mapper.events if e.rule.name not in reached]
    return report


def _judge(
    fixture: Path, target: Path, produced: list[tuple[str, dict[str, Any]]] | None, rejection: str | None
) -> FixtureResult:
    expected = json.loads(target.read_text())
    if produced is None:
        wanted: Any = expected.get("rejected") if isinstance(expected, dict) else None  # JSON as written
        ok = bool(wanted) and rejection is not None and rejection.startswith(wanted["stage"] + ":")
        ok = ok and wanted.get("reason_contains", "") in (rejection or "")
        return FixtureResult(fixture.name, ok, "" if ok else f"rejected: {rejection}")
    if isinstance(expected, dict):
        return FixtureResult(fixture.name, False, "expected a rejection, got events")
    problem = _compare(expected, [e for _r, e in produced])
    return FixtureResult(fixture.name, problem is None, problem or "")


def _fallback_hint(
    fixture: Path,
    version: int,
    compared: Path,
    produced: list[tuple[str, dict[str, Any]]] | None,
    rejection: str | None,
) -> str:
    """Say which file a version without its own expectation was held to, and what would fix it."""
    own = f"{fixture.stem}.v{version}.expected.json"
    hint = f" (compared with {compared.name}: there is no {own}"
    for earlier in range(version - 1, 0, -1):
        other = fixture.with_name(f"{fixture.stem}.v{earlier}.expected.json")
        if other.exists() and _judge(fixture, other, produced, rejection).ok:
            return hint + f"; v{version} gives what {other.name} documents: copy it to {own})"
    return hint + f"; if v{version} is meant to give this, `cgthub mappings test --update` writes {own})"


def _update(
    fixture: Path, version: int, produced: list[tuple[str, dict[str, Any]]] | None, rejection: str | None
) -> tuple[Path, bool]:
    """Write what this version produces: into the shared expectation when there is none or it agrees,
    else into this version's own file (a later version that changes output documents the change).

    Returns the file and whether it was written: one whose content already says this is left alone.
    """
    body: Any = [_mask_tokens(e) for _r, e in produced] if produced is not None else {"rejected": _rejection(rejection)}
    shared = fixture.with_name(f"{fixture.stem}.expected.json")
    own = fixture.with_name(f"{fixture.stem}.v{version}.expected.json")
    if not shared.exists() or (not own.exists() and json.loads(shared.read_text()) == body):
        target = shared
    else:
        target = own
    if target.exists() and json.loads(target.read_text()) == body:
        return target, False
    target.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return target, True


def _mask_tokens(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("psn:"):
        return value.rsplit(":", 1)[0] + ":*"
    if isinstance(value, dict):
        return {k: _mask_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_tokens(v) for v in value]
    return value


def _rejection(text: str | None) -> dict[str, str]:
    stage, _, reason = (text or "").partition(": ")
    return {"stage": stage, "reason_contains": reason[:80]}


def _compare(expected: list[Any], produced: list[dict[str, Any]]) -> str | None:
    if len(expected) != len(produced):
        return f"expected {len(expected)} events, got {len(produced)}"
    for i, (want, got) in enumerate(zip(expected, produced, strict=True)):
        difference = _diff(want, got, f"event {i + 1}")
        if difference:
            return difference
    return None


def _diff(want: Any, got: Any, where: str) -> str | None:
    if isinstance(want, str) and want.startswith("psn:") and want.endswith(":*"):
        ok = isinstance(got, str) and got.startswith(want[:-1])
        return None if ok else f"{where}: expected a {want} pseudonym"
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got:
                return f"{where}.{key}: missing"
            if key not in want:
                return f"{where}.{key}: not expected"
            found = _diff(want[key], got[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            found = _diff(w, g, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if want == got else f"{where}: expected {want!r}, got {got!r}"
