"""`cgthub mappings`: list, validate, test, diff and replay the versioned mapping files."""

from __future__ import annotations

import re
import textwrap
from datetime import datetime

import typer
from rich.markup import escape
from rich.table import Table

from cgthub import archive, audit_trail, sites
from cgthub.cli.common import CliError, console, open_session, work_progress
from cgthub.mapping import fixtures, registry
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.replay import archived, diff, refusals, replay
from cgthub.mapping.spec import MappingError
from cgthub.release import ensure_release_in_force

app = typer.Typer(help="Versioned mapping files: partner payload -> canonical events.", no_args_is_help=True)


def _compile_all() -> list[tuple[registry.MappingFile, CompiledMapping | MappingError]]:
    compiled: list[tuple[registry.MappingFile, CompiledMapping | MappingError]] = []
    for found in registry.discover():
        try:
            compiled.append((found, registry.compile_file(found.path)))
        except MappingError as exc:
            compiled.append((found, exc))
    return compiled


# A change note longer than this is cut at a word, with an ellipsis; the file has the whole note.
CHANGE_NOTE_WIDTH = 120


@app.command("list")
def list_mappings() -> None:
    """Every mapping file: system, kind, version, effective date, change note."""
    table = Table(title=f"mappings in {registry.mappings_dir()}")
    for col in ("system", "kind", "version", "effective", "format", "rules", "change note"):
        table.add_column(col, overflow="fold")
    for found, compiled in _compile_all():
        if isinstance(compiled, MappingError):
            table.add_row(found.system, found.kind, f"v{found.version}", "", "", "", f"[red]{compiled}[/]")
            continue
        spec = compiled.spec
        table.add_row(
            found.system,
            spec.kind,
            f"v{spec.version}",
            str(spec.effective),
            spec.format,
            ", ".join(e.name for e in spec.events),
            textwrap.shorten(spec.change_note, CHANGE_NOTE_WIDTH, placeholder=" …"),
        )
    console.print(table)


@app.command()
def validate() -> None:
    """Schema, every expression compiles, fixtures exist and reach every rule. Exit 1 on any problem."""
    problems = 0
    for found, compiled in _compile_all():
        if isinstance(compiled, MappingError):
            console.print(f"[red]FAIL[/] {escape(found.ref)}: {escape(str(compiled))}")
            problems += 1
            continue
        report = fixtures.check(compiled, found.path)
        issues = list(report.problems) + [f"rule {r!r} is reached by no fixture" for r in report.unreached_rules]
        if issues:
            problems += 1
            for issue in issues:
                console.print(f"[red]FAIL[/] {escape(found.ref)}: {escape(issue)}")
        else:
            console.print(f"[green]ok[/]   {found.ref}: {len(report.results)} fixtures reach all rules")
    if problems:
        raise CliError(f"{problems} mapping(s) are not valid", "fix the files named above, then run again")


@app.command("test")
def test_fixtures(
    update: bool = typer.Option(False, "--update", help="write what each version produces as its expectation"),
) -> None:
    """Run every mapping's fixtures: input -> expected canonical events (or expected rejection)."""
    failed = 0
    for found, compiled in _compile_all():
        if isinstance(compiled, MappingError):
            console.print(f"[red]FAIL[/] {escape(found.ref)}: {escape(str(compiled))}")
            failed += 1
            continue
        report = fixtures.check(compiled, found.path, update=update)
        for problem in report.problems:
            console.print(f"[red]FAIL[/] {escape(found.ref)}: {escape(problem)}")
        for result in report.results:
            mark = "[green]ok[/]  " if result.ok else "[red]FAIL[/]"
            console.print(f"{mark} {found.ref} {result.name}{': ' + escape(result.problem) if result.problem else ''}")
        for written in report.updated:
            console.print(f"[yellow]wrote[/] {found.ref} fixtures/{written}")
        failed += 0 if report.ok else 1
    if failed:
        raise CliError(
            f"{failed} mapping(s) fail their fixtures",
            "compare the events above with <fixture>.expected.json, or <fixture>.vN.expected.json for version N only",
        )


_DIFF_USAGE = "cgthub mappings diff SYSTEM/KIND vA [vB], e.g. crm/enrollment v1 v2 (or crm enrollment v1)"


@app.command("diff")
def diff_versions(
    words: list[str] = typer.Argument(..., metavar="SYSTEM/KIND vA [vB]", help="vB defaults to the newest version"),
    limit: int = typer.Option(10_000, help="archived payloads to compare at most"),
) -> None:
    """Which canonical fields change between two versions, on the archived payloads (or the fixtures)."""
    system, kind, old, new = _diff_target(words)
    mapper_a, mapper_b = _mapper(system, kind, old), _mapper(system, kind, new)
    with open_session(readonly=True) as session:
        payloads = [(f"raw #{row.id}", archive.read(session, row.id)) for row in archived(session, system, kind)][
            :limit
        ]
    source = "archived payloads"
    if not payloads:
        found = registry.versions(system, kind)
        payloads = [(p.name, p.read_bytes()) for p in fixtures.inputs(found[-1].path)]
        source = "fixtures (nothing archived yet)"
    compared, changes = diff(payloads, mapper_a, mapper_b)
    table = Table(title=f"{system}/{kind} {old} -> {new}: {compared} {source}, {len(changes)} fields differ")
    for col in ("canonical field", "changed", "added", "removed", "example"):
        table.add_column(col)
    for change in changes:
        table.add_row(change.field, str(change.changed), str(change.added), str(change.removed), change.example)
    console.print(table)


@app.command("replay")
def replay_archived(
    system: str = typer.Option(..., "--system"),
    kind: str = typer.Option(..., "--kind"),
    version: str = typer.Option(..., "--version", help="e.g. v2"),
    since: datetime | None = typer.Option(None, "--since", help="only payloads received at or after (ISO 8601)"),
    market: str | None = typer.Option(
        None,
        "--market",
        help="override: map every payload under this market's rules (residency, code maps) instead of "
        "the market live ingest chooses for each record, and check only this market's pin",
    ),
    force: bool = typer.Option(
        False, "--force", help="replay a version live ingest does not use (not yet effective, or pinned otherwise)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="map and report what would change; write nothing"),
) -> None:
    """Re-map archived payloads with VERSION: append corrections, release what now maps. Idempotent.

    Each record is mapped under the market live ingest chooses for it (its site, or its HL7 sending
    facility), with that market's residency rules, unless --market names one. Each site is judged by
    the site registry in force, as on live ingest: what it refuses is quarantined at stage `qualify`
    (or `route`) with its alert, not applied."""
    ensure_release_in_force()  # a hub in a release environment maps only with the bundle promoted there
    mapper = _mapper(system, kind, version, market)
    if since is not None and since.tzinfo is None:
        raise CliError("--since needs a time zone offset", "e.g. --since 2026-03-01T00:00:00+00:00")
    reasons = refusals(system, kind, mapper.spec.version, market)
    if reasons and not force:
        raise CliError(
            f"not replaying {system}/{kind} with {mapper.version}: " + "; ".join(reasons),
            "replay the version live ingest uses, change the pin, or pass --force (try --dry-run first)",
        )
    for reason in reasons:
        console.print(f"[yellow]forced:[/] {reason}")
    try:
        sites.registry()  # each replayed site is judged by it, as on live ingest
    except sites.SiteRegistryError as exc:
        raise CliError(str(exc), "fix the file: a replay judges each site by it, as live ingest does") from exc
    label = f"replaying {system}/{kind} with {version}"
    with open_session(readonly=dry_run) as session, work_progress(label, total=None, unit="payloads") as bar:
        report = replay(session, mapper, since=since, progress=bar.advance_to, dry_run=dry_run)
        if not dry_run:
            audit_trail.record(
                session,
                "mapping.replayed",
                f"mapping:{mapper.mapping_id}@{mapper.version}",
                {k: v for k, v in vars(report).items() if k != "failures"},
            )
    if report.dry_run:
        console.print(
            f"dry run, nothing written: {report.payloads} payloads mapped with {mapper.mapping_id}@{mapper.version} "
            f"would leave {report.unchanged} events unchanged, correct {report.corrected}, add {report.added} "
            f"({report.already_recorded} already in the ledger from another payload), release "
            f"{report.released} quarantined payloads; {report.still_failing} still failing, "
            f"{report.refused} refused by the site registry, "
            f"{report.no_longer_produced} old events no longer produced{_pace(report.payloads, bar.elapsed())}",
            soft_wrap=True,  # one line, whatever the width, for scripts and logs
        )
    else:
        console.print(
            f"replayed {report.payloads} payloads with {mapper.mapping_id}@{mapper.version}: "
            f"{report.unchanged} events unchanged, {report.corrected} corrected, {report.added} added, "
            f"{report.already_recorded} already in the ledger from another payload, "
            f"{report.quarantined} quarantined, "
            f"{report.released} quarantined payloads released, {report.still_failing} still failing, "
            f"{report.refused} refused by the site registry (quarantined), "
            f"{report.no_longer_produced} old events no longer produced (left as they are)"
            f"{_pace(report.payloads, bar.elapsed())}",
            soft_wrap=True,
        )
    for failure in report.failures[:20]:
        console.print(f"[yellow]still failing:[/] {escape(failure)}", soft_wrap=True)


def _pace(payloads: int, seconds: float) -> str:
    """` in 1.2 s (830 payloads/s)`: how long the replay took, so a long one can be planned."""
    return f" in {seconds:.1f} s ({payloads / max(seconds, 1e-6):.0f} payloads/s)"


def _diff_target(words: list[str]) -> tuple[str, str, str, str]:
    """System, kind and the two versions, from `crm/enrollment v1 v2` or `crm enrollment v1`."""
    if words and "/" in words[0]:
        system, _, kind = words[0].partition("/")
        versions = words[1:]
    else:
        system, kind = [*words, "", ""][:2]
        versions = words[2:]
    if not system or not kind or not 1 <= len(versions) <= 2:
        raise CliError(f"cannot tell SYSTEM/KIND and versions from {' '.join(words)!r}", f"usage: {_DIFF_USAGE}")
    for version in versions:
        if not re.fullmatch(r"v?\d+", version):
            raise CliError(f"{version!r} is not a version", f"usage: {_DIFF_USAGE}")
    if len(versions) == 1:
        known = registry.versions(system, kind)
        if not known:
            raise CliError(f"no mapping for {system}/{kind}", "list mappings with `cgthub mappings list`")
        versions.append(f"v{known[-1].version}")
    old, new = (v if v.startswith("v") else f"v{v}" for v in versions)
    if old == new:
        raise CliError(f"{old} against itself changes nothing", f"name two versions: {_DIFF_USAGE}")
    return system, kind, old, new


def _mapper(system: str, kind: str, version: str, market: str | None = None) -> CompiledMapping:
    try:
        mapper = registry.get_mapper(system, kind, version=version, market=market)
    except (MappingError, ValueError) as exc:
        raise CliError(str(exc), "list versions with `cgthub mappings list`") from exc
    if mapper is None:
        raise CliError(f"no mapping for {system}/{kind}", "list mappings with `cgthub mappings list`")
    return mapper
