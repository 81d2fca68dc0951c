"""The validation evidence of a release bundle: one self-contained HTML page for the CSV file.

A reviewer reads it without opening YAML: the bundle's identity and how it was checked, what changed
(files, and each new mapping version with its change note), the fixtures of every mapping version in
the bundle run from the bundle's own copy with their results, the diff on archived traffic per
market, the builder's signature, every approval with its signature (and whether the builder signed
it), every promotion, and the SHA-256 of every file. Everything shown comes from the hub's own
records; nothing names a patient (the diff's examples are masked where they concern the patient, as
in `cgthub mappings diff`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from cgthub import decisions, release
from cgthub.mapping import fixtures, registry
from cgthub.mapping.spec import MappingError

SECTIONS = (
    "Bundle",
    "Release notes",
    "Fixtures",
    "Diff on archived traffic",
    "Approvals",
    "Promotions",
    "Files",
)


@dataclass
class FixtureRun:
    mapping: str
    version: int
    results: list[tuple[str, bool, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(ok for _, ok, _ in self.results)


def run_fixtures(bundle_id: str) -> list[FixtureRun]:
    """Every mapping version of the bundle against its fixtures, from the bundle's stored copy."""
    root = release.bundle_dir(bundle_id) / "files" / "mappings"
    runs = []
    for found in registry.discover(root):
        run = FixtureRun(f"{found.system}/{found.kind}", found.version)
        try:
            compiled = registry.compile_file(found.path)
        except MappingError as exc:
            run.problems.append(str(exc))
            runs.append(run)
            continue
        report = fixtures.check(compiled, found.path)
        run.problems += report.problems + [f"rule {r!r} is reached by no fixture" for r in report.unreached_rules]
        run.results = [(r.name, r.ok, r.problem) for r in report.results]
        runs.append(run)
    return runs


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def render(session: Session, bundle_id: str) -> str:
    bundle = release.find_bundle(session, bundle_id)
    notes = release.notes_of(bundle)
    manifest = release.manifest_of(bundle)
    damaged = release.stored_differences(bundle)
    runs = run_fixtures(bundle.id) if not damaged else []
    codes = {c.code: c.title for c in decisions.reason_codes().codes}
    approvals = release.approvals(session, bundle.id)
    built = release.build_signatures(session, bundle)
    promotions = release.promotions(session, bundle_id=bundle.id)
    in_force = {env: release.in_force(session, env) for env in release.ENVIRONMENTS}
    fixtures_total = sum(len(r.results) for r in runs)
    fixtures_failed = sum(1 for r in runs for _, ok, _ in r.results if not ok) + sum(len(r.problems) for r in runs)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Validation evidence: release bundle {bundle.id[:12]}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #999;padding:.2em .5em;text-align:left;vertical-align:top;font-size:.9em}"
        ".fail{color:#a00;font-weight:bold}.ok{color:#060}code{font-size:.9em}</style></head><body>",
        f"<h1>Validation evidence: release bundle <code>{bundle.id}</code></h1>",
        f"<p>Generated {escape(datetime.now(UTC).isoformat(timespec='seconds'))} by cgthub.</p>",
        "<h2 id='bundle'>Bundle</h2>",
        _table(
            ("item", "value"),
            [
                ("bundle id (SHA-256 of the manifest)", bundle.id),
                ("built", bundle.built_at.isoformat(timespec="seconds")),
                ("built by", bundle.built_by),
                ("builder's signature", _builders(built)),
                ("files", bundle.file_count),
                ("compared with", bundle.compared_with or "nothing: first bundle"),
                (
                    "stored copy",
                    "matches the manifest" if not damaged else f"DOES NOT match the manifest: {damaged[0]}",
                ),
                ("fixtures", f"{fixtures_total} run, {fixtures_failed} failed"),
                ("approved", "yes" if approvals else "no"),
                ("in force", ", ".join(env for env, held in in_force.items() if held == bundle.id) or "nowhere"),
            ],
        ),
        "<h2 id='release-notes'>Release notes</h2>",
        _table(
            ("files", "count", "names"),
            [(what, len(names), ", ".join(names)) for what, names in notes["files"].items()],
        ),
        "<h3>Mapping versions new or changed in this bundle</h3>",
        _table(
            ("mapping", "version", "effective", "status", "change note"),
            [
                (v["mapping"], f"v{v['version']}", v["effective"], v["status"], v["change_note"])
                for v in notes["mapping_versions"]
            ],
        )
        if notes["mapping_versions"]
        else "<p>No mapping version is new or changed.</p>",
        "<h3>Versions in force per market</h3>",
        _table(
            ("market", "feed", "version", "file"),
            [
                (market, feed, f"v{entry['version']}", entry["file"])
                for market, feeds in notes["in_force"].items()
                for feed, entry in feeds.items()
            ],
        ),
        "<h2 id='fixtures'>Fixtures</h2>",
        f"<p>Every mapping version in the bundle, run from the bundle's stored copy: {fixtures_total} fixtures, "
        f"<span class='{'fail' if fixtures_failed else 'ok'}'>{fixtures_failed} failed</span>.</p>",
        _table(
            ("mapping", "version", "fixture", "result", "problem"),
            [
                (r.mapping, f"v{r.version}", name, "pass" if ok else "FAIL", problem)
                for r in runs
                for name, ok, problem in r.results
            ]
            + [(r.mapping, f"v{r.version}", "-", "FAIL", p) for r in runs for p in r.problems],
            "fixtures",
        ),
        "<h2 id='diff'>Diff on archived traffic</h2>",
        _diff_section(notes),
        "<h2 id='approvals'>Approvals</h2>",
        _table(
            ("signer", "meaning", "reason code", "reason", "why", "signed at", "signature (SHA-256)", "four eyes"),
            [
                (
                    a.signer,
                    a.meaning,
                    a.reason_code,
                    codes.get(a.reason_code, ""),
                    a.reason_text,
                    a.signed_at.isoformat(timespec="seconds"),
                    a.signature_hash,
                    "self-approval: the builder (does not count for production)"
                    if a.signer in built.signers
                    else "second person",
                )
                for a in approvals
            ],
        )
        if approvals
        else "<p class='fail'>Not approved.</p>",
        "<h2 id='promotions'>Promotions</h2>",
        _table(
            ("environment", "action", "by", "at", "replaced bundle", "note"),
            [
                (p.environment, p.action, p.by, p.at.isoformat(timespec="seconds"), p.replaced_id or "-", p.note)
                for p in promotions
            ],
        )
        if promotions
        else "<p>Not promoted to any environment.</p>",
        "<h2 id='files'>Files</h2>",
        _table(("file", "SHA-256"), sorted(manifest.items()), "files"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _builders(built: release.BuildSignatures) -> str:
    """Each valid builder's signature, and what is wrong with any other (an unsigned build is said so)."""
    signed = [
        f"{b.signer} ({b.meaning}, {b.reason_code}, {b.signed_at:%Y-%m-%dT%H:%M:%S}, decision #{b.decision_id})"
        for b in built.valid
    ]
    problems = [f"NOT VALID: {problem}" for problem in built.problems]
    return "; ".join(signed + problems) or "NONE: the build is not signed, nobody may approve it"


def _diff_section(notes: dict[str, Any]) -> str:
    if not notes.get("compared_with"):
        return "<p>First bundle: nothing to compare with.</p>"
    if not notes["diffs"]:
        return f"<p>No mapping in force changed since bundle <code>{escape(notes['compared_with'])}</code>.</p>"
    rows = []
    for d in notes["diffs"]:
        fields = "; ".join(
            f"{f['field']}: changed {f['changed']}, added {f['added']}, removed {f['removed']} (e.g. {f['example']})"
            for f in d["fields"]
        )
        rows.append(
            (
                d["market"],
                f"{d['system']}/{d['kind']}",
                f"v{d['old_version']} -> v{d['new_version']}",
                d["payloads"],
                d["payloads_changed"],
                d["orders"],
                fields or d["note"] or "no canonical field changes",
            )
        )
    return (
        f"<p>Compared with bundle <code>{escape(notes['compared_with'])}</code>, on the newest "
        f"{notes.get('diff_payloads')} archived payloads of each feed, per market of their orders.</p>"
        + _table(("market", "feed", "versions", "payloads", "payloads changed", "orders", "fields"), rows, "diff")
    )


def write(session: Session, bundle_id: str, out: Path | None = None) -> list[Path]:
    """Write evidence.html into `out` (default: the bundle's folder); returns what was written."""
    bundle = release.find_bundle(session, bundle_id)
    folder = out or release.bundle_dir(bundle.id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"evidence-{bundle.id[:12]}.html"
    path.write_text(render(session, bundle.id), encoding="utf-8")
    return [path]
