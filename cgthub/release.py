"""Release bundles: what a hub maps with, frozen, signed, promoted and checked where it runs.

A bundle packs the files that decide how payloads become canonical events: every file under
`mappings/` (mapping versions and their fixtures), `config/markets/`, `config/sites.yaml` and
`config/reason_codes.yaml`. Its manifest lists each file's SHA-256, and its id is the SHA-256 of
the manifest, so the same content always gives the same id and a signature over the id covers
every byte. The files are copied to `var/releases/<id>/files/`, the manifest and release notes are
kept there and in the database.

Life of a bundle: `build` (signed by its builder, an operator decision `build_release`; with notes:
the change note of each new mapping version and, per market, what the changed mappings would fill
differently on archived traffic), `approve` (an electronic signature, re-authenticated like an
operator decision, by someone other than the signed builder unless the hub's CGTHUB_ENV allows
self-approval in config/security.yaml; a bundle without a valid builder's signature by nobody),
`promote` to validation, then to production (production needs an approval by a second person and a
prior promotion to validation), `rollback` to the bundle in force before. Every step is in the audit trail.

A hub whose `CGTHUB_RELEASE_ENV` is `validation` or `production` runs only the bundle last promoted
there: `ensure_release_in_force` compares the live files with that bundle's manifest at the start of
every ingest and refuses, naming the file and both hashes, a file edited, added or removed in place.
The guard and what it reads live in `cgthub.release_guard` (re-exported here), which imports nothing
that signs or maps, so the quarantine retry and the courier webhook call it without an import cycle.

Rollback (and a promotion to the hub's own environment) writes the bundle's files back into the
configuration and mapping folders, rather than pointing the hub at the bundle folder: the registry,
the site registry and the reason codes keep one place to read, and the manifest check stays the one
guard, whichever way a file got there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, audit_trail, decisions, security_policy, sites
from cgthub.errors import CgthubError
from cgthub.jsontext import canonical_json
from cgthub.mapping import registry
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.replay import FieldChange, configured_markets, diff, pinned_version
from cgthub.mapping.spec import LoadedSpec, MappingError
from cgthub.release_guard import (
    FileDifference,
    differences,
    live_files,
    live_manifest,
    manifest_id,
    sha256_file,
    stack,
)

# Re-exported: callers name the guard and the bundle in force as release.X (cgthub.release_guard holds them).
from cgthub.release_guard import ReleaseRefused as ReleaseRefused
from cgthub.release_guard import ensure_release_in_force as ensure_release_in_force
from cgthub.release_guard import in_force as in_force
from cgthub.release_guard import manifest_of as manifest_of
from cgthub.release_guard import promotions as promotions
from cgthub.release_tables import ReleaseApproval, ReleaseBundle, ReleasePromotion
from cgthub.settings import get_settings, var_dir
from cgthub.tables import AuditRecord, LedgerEntry, OperatorDecision, Order, utcnow

ENVIRONMENTS = ("validation", "production")
DIFF_PAYLOADS = 500  # newest archived payloads per feed the notes compare versions on


class ReleaseError(CgthubError):
    """A release step that cannot be taken; `hint` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# the files a bundle holds -------------------------------------------------------------------------


def live_path(name: str) -> Path:
    """Where the file a bundle calls `name` lives in this hub."""
    settings = get_settings()
    if name.startswith("mappings/"):
        return settings.mappings_dir / name.removeprefix("mappings/")
    return settings.config_dir / name.removeprefix("config/")


def releases_dir() -> Path:
    return var_dir() / "releases"


def bundle_dir(bundle_id: str) -> Path:
    return releases_dir() / bundle_id


def notes_of(bundle: ReleaseBundle) -> dict[str, Any]:
    notes: dict[str, Any] = orjson.loads(bundle.notes)
    return notes


def stored_differences(bundle: ReleaseBundle) -> list[FileDifference]:
    """The bundle folder against its manifest: a lost or altered copy is named."""
    folder = bundle_dir(bundle.id) / "files"
    stored = {
        path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }
    return differences(manifest_of(bundle), stored)


# the bundles a hub knows ----------------------------------------------------------------------------


def find_bundle(session: Session, ref: str) -> ReleaseBundle:
    """A bundle by its id or a unique prefix of at least 8 characters."""
    ref = ref.strip().lower()
    if len(ref) < 8:
        raise ReleaseError(f"{ref!r} is too short to name a bundle", "give at least 8 characters of its id")
    found = list(session.scalars(select(ReleaseBundle).where(ReleaseBundle.id.startswith(ref)).limit(2)))
    if not found:
        raise ReleaseError(f"no release bundle {ref}", "list them with `cgthub release list`")
    if len(found) > 1:
        raise ReleaseError(f"{ref} names more than one bundle", "give more characters of its id")
    return found[0]


def bundles(session: Session) -> list[ReleaseBundle]:
    return list(session.scalars(select(ReleaseBundle).order_by(ReleaseBundle.built_at, ReleaseBundle.id)))


def approvals(session: Session, bundle_id: str) -> list[ReleaseApproval]:
    query = select(ReleaseApproval).where(ReleaseApproval.bundle_id == bundle_id).order_by(ReleaseApproval.id)
    return list(session.scalars(query))


# building -------------------------------------------------------------------------------------------


def build(
    session: Session, signature: decisions.Signature, *, diff_payloads: int = DIFF_PAYLOADS
) -> tuple[ReleaseBundle, bool, BuildSignature | None]:
    """Pack the live files into a bundle (or find the one with the same content), signed by its
    builder: True when new, and the builder's new signature (None: this signer had signed it already).

    The builder re-authenticates like any signer of a decision (`decisions.sign_decision`, action
    build_release, meaning `reviewed`): the four-eyes rule compares this signed identity with the
    approver's, never a name from the environment. A refused signature builds nothing (the caller's
    transaction rolls back, and the bundle folder is written only after the signature). The same
    files built again by another operator add that operator's signature as a builder."""
    if signature.meaning is not decisions.Meaning.REVIEWED:
        raise decisions.NotApplicable(
            "a build is signed with the meaning `reviewed` (approval is another person's signature)",
            "sign the build with --meaning reviewed",
        )
    registry.clear_cache()
    sites.clear_cache()
    files = live_files()
    if not any(name.startswith("mappings/") for name in files):
        raise ReleaseError(f"no mapping files under {get_settings().mappings_dir}", "check CGTHUB_MAPPINGS_DIR")
    manifest = {name: sha256_file(path) for name, path in files.items()}
    bundle_id = manifest_id(manifest)
    existing = session.get(ReleaseBundle, bundle_id)
    if existing is not None:
        signed = None
        if signature.signer not in build_signatures(session, existing).signers:
            signed = _sign_build(session, existing, signature, new=False)
        if stored_differences(existing):  # its folder lost on this hub: the live files are its content
            _store(bundle_id, files, manifest, notes_of(existing))
        return existing, False, signed
    specs = _check_loads()
    compared = _comparison_bundle(session)
    notes = release_notes(session, manifest, compared, specs, diff_payloads=diff_payloads)
    row = ReleaseBundle(
        id=bundle_id,
        built_at=utcnow(),
        built_by=signature.signer,
        file_count=len(manifest),
        manifest=canonical_json({"files": manifest}),
        compared_with=compared.id if compared else None,
        notes=canonical_json(notes),
    )
    session.add(row)
    session.flush()
    signed = _sign_build(session, row, signature, new=True)
    folder = _store(bundle_id, files, manifest, notes)
    if stored_differences(row):
        raise ReleaseError(f"the copy of bundle {bundle_id} under {folder} does not match what was read", "build again")
    audit_trail.record(
        session,
        "release.built",
        f"release:{bundle_id}",
        {"files": len(manifest), "compared_with": row.compared_with, "changed_files": len(notes["files"]["changed"])},
        actor=row.built_by,
    )
    return row, True, signed


@dataclass(frozen=True)
class BuildSignature:
    """A builder's signature over a bundle: an operator decision (build_release) and its audit row."""

    decision_id: int
    signer: str
    meaning: str
    reason_code: str
    signed_at: datetime
    audit_seq: int


def _sign_build(
    session: Session, bundle: ReleaseBundle, signature: decisions.Signature, *, new: bool
) -> BuildSignature:
    shown = preview(session, bundle)
    decision, _reason = decisions.sign_decision(session, decisions.Action.BUILD_RELEASE, signature, shown, None)
    outcome = {"bundle": bundle.id, "files": bundle.file_count, "built": "new" if new else "already built"}
    trail = decisions.record_outcome(session, decision, outcome)
    decision.outcome = {**outcome, _AUDIT_SEQ: trail.seq}  # where `build_signatures` finds its sealed record
    return BuildSignature(
        decision.id, decision.signer, decision.meaning, decision.reason_code, decision.signed_at, trail.seq
    )


_AUDIT_SEQ = "audit_seq"


@dataclass
class BuildSignatures:
    """Who signed a bundle as its builder, each signature checked; what is wrong with the others."""

    valid: list[BuildSignature] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def signers(self) -> set[str]:
        return {s.signer for s in self.valid}


def build_signatures(session: Session, bundle: ReleaseBundle) -> BuildSignatures:
    """The bundle's builder signatures. One counts when its decision was signed over this bundle as
    it is (the shown-state hash) and matches, signer and decision hash, the audit row written with it,
    whose seal (HMAC under the ledger key, kept outside the database) still holds: a decision row
    edited in the database to name another builder does not count."""
    found = BuildSignatures()
    shown = preview(session, bundle)
    query = select(OperatorDecision).where(
        OperatorDecision.action == decisions.Action.BUILD_RELEASE.value, OperatorDecision.subject == shown.subject
    )
    for decision in session.scalars(query.order_by(OperatorDecision.id)):
        problem = _build_problem(session, decision, shown.shown_hash)
        if problem:
            found.problems.append(f"build signature #{decision.id} ({decision.signer}): {problem}")
            continue
        found.valid.append(
            BuildSignature(
                decision.id,
                decision.signer,
                decision.meaning,
                decision.reason_code,
                decision.signed_at,
                int(decision.outcome[_AUDIT_SEQ]),
            )
        )
    return found


def _build_problem(session: Session, decision: OperatorDecision, shown_hash: str) -> str:
    if decision.shown_hash != shown_hash:
        return "signed over another state of the bundle"
    seq = (decision.outcome or {}).get(_AUDIT_SEQ)
    trail = session.scalar(select(AuditRecord).where(AuditRecord.seq == seq)) if isinstance(seq, int) else None
    if trail is None:
        return "its audit trail record is missing"
    details = orjson.loads(trail.details)
    if (
        trail.action != f"decision.{decision.action}"
        or trail.subject != decision.subject
        or trail.actor != decision.signer
        or details.get("decision") != decision.id
        or details.get("decision_hash") != decisions.decision_digest(decision)
    ):
        return f"the decision does not match its audit trail record (seq {seq})"
    if not audit_trail.sealed(trail):
        return f"its audit trail record (seq {seq}) fails its seal"
    return ""


def _store(bundle_id: str, files: dict[str, Path], manifest: dict[str, str], notes: dict[str, Any]) -> Path:
    """Copy the files, manifest and notes into the bundle's folder (whole or not at all)."""
    folder = bundle_dir(bundle_id)
    staging = folder.with_name(f".{bundle_id}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name, path in files.items():
        target = staging / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (staging / "manifest.json").write_bytes(
        orjson.dumps({"id": bundle_id, "files": manifest}, option=orjson.OPT_INDENT_2)
    )
    (staging / "notes.json").write_bytes(orjson.dumps(notes, option=orjson.OPT_INDENT_2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _check_loads() -> dict[Path, LoadedSpec]:
    """A bundle whose files do not load would stop the hub it is promoted to: refuse it at build.
    Returns each mapping file read once (a file is parsed once per build: YAML is slow to read)."""
    problems = []
    specs: dict[Path, LoadedSpec] = {}
    for found in registry.discover():
        try:
            specs[found.path] = registry.load_file(found.path)
            CompiledMapping(specs[found.path])
        except MappingError as exc:
            problems.append(str(exc))
    try:
        sites.registry()
        decisions.reason_codes()
        for market in configured_markets():
            registry.market_config(market)
    except (CgthubError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        raise ReleaseError("not building: " + "; ".join(problems[:5]), "fix the files named, then build again")
    return specs


def _comparison_bundle(session: Session) -> ReleaseBundle | None:
    """What the notes compare against: the bundle in force in production, else the newest built."""
    current = in_force(session, "production")
    if current is not None:
        return session.get(ReleaseBundle, current)
    newest = session.scalars(select(ReleaseBundle).order_by(ReleaseBundle.built_at.desc()).limit(1)).first()
    return newest


# release notes --------------------------------------------------------------------------------------


@dataclass
class MarketDiff:
    """What one changed mapping would fill differently, for one market, on its archived traffic."""

    market: str
    system: str
    kind: str
    old_version: int | None
    new_version: int | None
    payloads: int = 0
    payloads_changed: int = 0
    orders: int = 0
    fields: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def in_force_table(specs: dict[Path, LoadedSpec]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per market and feed (`system/kind`), the version live ingest maps with (the market's pin, else
    the newest version in effect, as the registry chooses) and its file's bundle path."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    feeds = sorted({(f.system, f.kind) for f in registry.discover()})
    mappings_root = get_settings().mappings_dir
    today = datetime.now(UTC).date()
    for market in configured_markets():
        for system, kind in feeds:
            files = registry.versions(system, kind)
            pin = pinned_version(market, system, kind)
            if pin is not None:
                chosen = next((f for f in files if f.version == pin), None)
            else:
                chosen = next((f for f in reversed(files) if specs[f.path].spec.effective <= today), None)
            if chosen is not None:
                table.setdefault(market, {})[f"{system}/{kind}"] = {
                    "version": chosen.version,
                    "file": "mappings/" + chosen.path.relative_to(mappings_root).as_posix(),
                }
    return table


def release_notes(
    session: Session,
    manifest: dict[str, str],
    compared: ReleaseBundle | None,
    specs: dict[Path, LoadedSpec],
    *,
    diff_payloads: int = DIFF_PAYLOADS,
) -> dict[str, Any]:
    """What changed since `compared`: files, the change note of each new or changed mapping version,
    and per market what each changed mapping would fill differently on archived traffic."""
    before = manifest_of(compared) if compared else {}
    changes = differences(before, manifest)
    files = {
        "added": [d.name for d in changes if d.expected is None],
        "changed": [d.name for d in changes if d.expected is not None and d.actual is not None],
        "removed": [d.name for d in changes if d.actual is None],
    }
    touched = set(files["added"]) | set(files["changed"])
    versions = []
    for found in registry.discover():
        name = "mappings/" + found.path.relative_to(get_settings().mappings_dir).as_posix()
        if name in touched:
            spec = specs[found.path].spec
            versions.append(
                {
                    "mapping": f"{found.system}/{found.kind}",
                    "version": found.version,
                    "effective": str(spec.effective),
                    "change_note": " ".join(spec.change_note.split()),
                    "status": "new" if name in files["added"] else "changed in place",
                }
            )
    now = in_force_table(specs)
    then: dict[str, dict[str, dict[str, Any]]] = notes_of(compared).get("in_force", {}) if compared else {}
    diffs = [asdict(d) for d in _market_diffs(session, now, then, before, compared, diff_payloads)] if compared else []
    return {
        "compared_with": compared.id if compared else None,
        "files": files,
        "mapping_versions": versions,
        "in_force": now,
        "diffs": diffs,
        "diff_payloads": diff_payloads,
    }


def _market_diffs(
    session: Session,
    now: dict[str, dict[str, dict[str, Any]]],
    then: dict[str, dict[str, dict[str, Any]]],
    before: dict[str, str],
    compared: ReleaseBundle,
    limit: int,
) -> Iterator[MarketDiff]:
    manifest = live_manifest()
    markets_of: dict[tuple[str, str], dict[int, set[tuple[str, str | None]]]] = {}
    for market in sorted(now.keys() | then.keys()):
        for feed in sorted(now.get(market, {}).keys() | then.get(market, {}).keys()):
            new, old = now.get(market, {}).get(feed), then.get(market, {}).get(feed)
            if new and old and new["file"] == old["file"] and before.get(old["file"]) == manifest.get(new["file"]):
                continue  # same version, same bytes
            system, kind = feed.split("/", 1)
            result = MarketDiff(market, system, kind, old["version"] if old else None, new["version"] if new else None)
            if not new or not old:
                result.note = "no version in force before" if new else "no version in force any more"
                yield result
                continue
            old_path = bundle_dir(compared.id) / "files" / old["file"]
            if not old_path.is_file():
                result.note = f"bundle {compared.id[:12]} is not on this hub; nothing compared"
                yield result
                continue
            if (system, kind) not in markets_of:
                markets_of[(system, kind)] = _payload_orders(session, system, kind, limit)
            try:
                old_mapper = registry.compile_file(old_path, market)
                new_mapper = registry.compile_file(live_path(new["file"]), market)
            except MappingError as exc:
                result.note = str(exc)
                yield result
                continue
            _compare(session, result, markets_of[(system, kind)], old_mapper, new_mapper)
            yield result


def _payload_orders(session: Session, system: str, kind: str, limit: int) -> dict[int, set[tuple[str, str | None]]]:
    """The newest archived payloads of a feed, each with the (order, market) pairs the ledger holds for it."""
    from cgthub.mapping.replay import archived

    ids = [row.id for row in archived(session, system, kind, newest=limit)]
    found: dict[int, set[tuple[str, str | None]]] = {raw_id: set() for raw_id in ids}
    if ids:
        rows = session.execute(
            select(LedgerEntry.raw_id, Order.id, Order.market)
            .join(Order, Order.id == LedgerEntry.order_id)
            .where(LedgerEntry.raw_id.in_(ids))
            .distinct()
        )
        for raw_id, order_id, market in rows:
            if raw_id is not None:
                found[raw_id].add((order_id, market))
    return found


def _compare(
    session: Session,
    result: MarketDiff,
    payload_orders: dict[int, set[tuple[str, str | None]]],
    old: Any,
    new: Any,
) -> None:
    """Each payload of the market's orders compared on its own (mapping.replay.diff), so the counts
    say how many payloads and orders a change touches."""
    totals: dict[str, FieldChange] = {}
    orders: set[str] = set()
    for raw_id, pairs in sorted(payload_orders.items()):
        mine = {order for order, market in pairs if market == result.market}
        if not mine:
            continue
        compared, changes = diff([(f"raw #{raw_id}", archive.read(session, raw_id))], old, new)
        result.payloads += compared
        if changes:
            result.payloads_changed += 1
            orders |= mine
        for change in changes:
            total = totals.setdefault(change.field, FieldChange(change.field, example=change.example))
            total.changed += change.changed
            total.added += change.added
            total.removed += change.removed
    result.orders = len(orders)
    result.fields = [asdict(c) for c in sorted(totals.values(), key=lambda c: c.field)]
    if not result.payloads:
        result.note = "nothing archived for this market's orders yet"


# approving ------------------------------------------------------------------------------------------


def preview(session: Session, bundle: ReleaseBundle) -> decisions.Preview:
    """What a signer is shown: the bundle id (the hash of every file), its size and what it changes."""
    notes = notes_of(bundle)
    state = {
        "bundle": bundle.id,
        "files": bundle.file_count,
        "compared_with": bundle.compared_with,
        "changed_files": notes["files"],
        "mapping_versions": [f"{v['mapping']}@v{v['version']}" for v in notes["mapping_versions"]],
    }
    return decisions.Preview(f"release:{bundle.id}", state, decisions.state_hash(state))


def approve(session: Session, bundle_ref: str, signature: decisions.Signature) -> ReleaseApproval:
    """Sign a bundle as approved: the signer re-authenticates, gives a reason code and text."""
    bundle = find_bundle(session, bundle_ref)
    shown = preview(session, bundle)
    operator = _operator(session, signature.signer, signature.password.get_secret_value())
    _four_eyes(session, bundle, operator.id)
    if signature.meaning is not decisions.Meaning.APPROVED:
        raise decisions.NotApplicable(
            "a release is approved with the meaning `approved`", "sign with --meaning approved"
        )
    reason = decisions.reason_codes().check(signature.reason_code, decisions.Action.APPROVE_RELEASE)
    if signature.shown_hash is not None and signature.shown_hash != shown.shown_hash:
        raise decisions.StaleView(f"{shown.subject} is not what was shown to you", "look at it again")
    signed_at = utcnow()
    signed = {
        "bundle": bundle.id,
        "signer": operator.id,
        "meaning": signature.meaning.value,
        "reason_code": reason.code,
        "reason_text": signature.reason_text.strip(),
        "shown_hash": shown.shown_hash,
        "signed_at": signed_at.isoformat(),
    }
    row = ReleaseApproval(
        bundle_id=bundle.id,
        signer=operator.id,
        meaning=signature.meaning.value,
        reason_code=reason.code,
        reason_text=signature.reason_text.strip(),
        signed_at=signed_at,
        signature_hash=decisions.state_hash(signed),
    )
    session.add(row)
    session.flush()
    audit_trail.record(
        session,
        "release.approved",
        shown.subject,
        {
            "approval": row.id,
            "meaning": row.meaning,
            "reason_code": row.reason_code,
            "signature_hash": row.signature_hash,
        },
        actor=operator.id,
    )
    return row


def builders(session: Session, bundle: ReleaseBundle) -> set[str]:
    """The operators whose builder's signature over the bundle holds; refused, naming what to do,
    when there is none (a bundle built before builds were signed, or a signature that does not hold):
    an unsigned build is approved by nobody."""
    signed = build_signatures(session, bundle)
    if signed.valid:
        return signed.signers
    why = "; ".join(signed.problems) or "no builder signed it"
    raise decisions.NotApplicable(
        f"bundle {bundle.id[:12]} has no valid builder's signature ({why}): an unsigned build cannot be approved",
        "its builder signs it by building the same files again: cgthub release build --signer BUILDER "
        "--reason RELEASE-BUILT --text ... (the same files give the same bundle)",
    )


def _four_eyes(session: Session, bundle: ReleaseBundle, signer: str) -> None:
    """A GxP change needs a second person: who signed a bundle as its builder may not approve it,
    unless the hub's CGTHUB_ENV is one config/security.yaml lets self-approve (a development hub)."""
    if signer not in builders(session, bundle):
        return
    environment = get_settings().env
    try:
        allowed = security_policy.policy().releases.self_approval_environments
    except security_policy.PolicyError as exc:
        raise decisions.Unavailable(str(exc), exc.hint or "") from exc
    if environment not in allowed:
        raise decisions.NotPermitted(
            f"operator {signer} signed bundle {bundle.id[:12]} as its builder and may not approve it too: "
            "a release needs a second person (four eyes)",
            f"ask another operator with the scope {decisions.Action.APPROVE_RELEASE.value} to approve it "
            f"(CGTHUB_ENV={environment}: self-approval is not allowed by config/security.yaml)",
        )


def _operator(session: Session, signer: str, password: str) -> Any:
    operator = decisions.authenticate(session, signer, password)
    allowed = {decisions.Action.APPROVE_RELEASE.value, decisions.ALL_ACTIONS}
    if not allowed & set(operator.scopes):
        raise decisions.NotPermitted(
            f"operator {operator.id} may not approve or promote releases",
            f"ask an administrator to add the scope {decisions.Action.APPROVE_RELEASE.value}",
        )
    return operator


# promoting and rolling back -------------------------------------------------------------------------


def promote(
    session: Session, bundle_ref: str, environment: str, *, signer: str, password: str, note: str = ""
) -> ReleasePromotion:
    """Put a bundle in force in an environment. Production takes only a bundle that is approved and
    was promoted to validation before. On the hub whose own environment it is, the files are installed."""
    if environment not in ENVIRONMENTS:
        raise ReleaseError(f"no environment {environment!r}", f"choose one of: {', '.join(ENVIRONMENTS)}")
    bundle = find_bundle(session, bundle_ref)
    operator = _operator(session, signer, password)
    if environment == "production":
        signed = approvals(session, bundle.id)
        if not signed:
            raise ReleaseError(
                f"bundle {bundle.id[:12]} is not approved", f"approve it first: cgthub release approve {bundle.id[:12]}"
            )
        built = builders(session, bundle)
        if all(a.signer in built for a in signed):
            raise ReleaseError(
                f"bundle {bundle.id[:12]} is approved only by its builder {', '.join(sorted(built))}: production "
                "needs the approval of a second person (four eyes)",
                f"another operator approves it: cgthub release approve {bundle.id[:12]} --signer ...",
            )
        if not promotions(session, environment="validation", bundle_id=bundle.id):
            raise ReleaseError(
                f"bundle {bundle.id[:12]} was never promoted to validation",
                f"validate it first: cgthub release promote {bundle.id[:12]} --env validation",
            )
    current = in_force(session, environment)
    if current == bundle.id:
        raise ReleaseError(f"bundle {bundle.id[:12]} is already in force in {environment}")
    installed = install(bundle) if environment == get_settings().release_env else []
    return _record(session, bundle, environment, "promoted", operator.id, current, note, installed)


def rollback(session: Session, environment: str, *, signer: str, password: str, note: str = "") -> ReleasePromotion:
    """Return an environment to the bundle in force before the current one, in one step."""
    if environment not in ENVIRONMENTS:
        raise ReleaseError(f"no environment {environment!r}", f"choose one of: {', '.join(ENVIRONMENTS)}")
    operator = _operator(session, signer, password)
    held = stack(session, environment)
    if len(held) < 2:
        raise ReleaseError(f"{environment} has no earlier bundle to return to", "promote the bundle you want instead")
    target = session.get(ReleaseBundle, held[-2])
    assert target is not None
    installed = install(target) if environment == get_settings().release_env else []
    return _record(session, target, environment, "rolled_back", operator.id, held[-1], note, installed)


def _record(
    session: Session,
    bundle: ReleaseBundle,
    environment: str,
    action: str,
    by: str,
    replaced: str | None,
    note: str,
    installed: list[str],
) -> ReleasePromotion:
    row = ReleasePromotion(
        bundle_id=bundle.id, environment=environment, action=action, by=by, at=utcnow(), replaced_id=replaced, note=note
    )
    session.add(row)
    session.flush()
    audit_trail.record(
        session,
        f"release.{action}",
        f"release:{bundle.id}",
        {"environment": environment, "replaced": replaced, "files_written": installed},
        actor=by,
    )
    return row


def install(bundle: ReleaseBundle) -> list[str]:
    """Make the live files the bundle's: write those that differ, remove those it does not hold.

    The stored copy is checked against the manifest first, so a damaged bundle installs nothing."""
    damaged = stored_differences(bundle)
    if damaged:
        raise ReleaseError(
            f"the stored copy of bundle {bundle.id[:12]} does not match its manifest: {damaged[0]}",
            f"restore {bundle_dir(bundle.id)} from a backup",
        )
    wanted = manifest_of(bundle)
    touched = []
    for difference in differences(wanted, live_manifest()):
        target = live_path(difference.name)
        if difference.expected is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.release-partial")
            shutil.copyfile(bundle_dir(bundle.id) / "files" / difference.name, partial)
            os.replace(partial, target)
        touched.append(difference.name)
    registry.clear_cache()
    sites.clear_cache()
    return touched


def replays_after_rollback(session: Session, left: str | None, returned_to: str) -> list[tuple[str, str, int]]:
    """The replays that re-map, with the bundle returned to, what the bundle left had mapped: each
    feed whose version in force (or its bytes) differs between the two, with the version to use."""
    old = session.get(ReleaseBundle, left) if left else None
    new = session.get(ReleaseBundle, returned_to)
    if old is None or new is None:
        return []
    then, now = notes_of(old).get("in_force", {}), notes_of(new).get("in_force", {})
    old_files, new_files = manifest_of(old), manifest_of(new)
    wanted: set[tuple[str, str, int]] = set()
    for market, feeds in now.items():
        for feed, entry in feeds.items():
            before = then.get(market, {}).get(feed)
            if (
                before is None
                or before["file"] != entry["file"]
                or old_files.get(entry["file"]) != new_files.get(entry["file"])
            ):
                system, kind = feed.split("/", 1)
                wanted.add((system, kind, int(entry["version"])))
    return sorted(wanted)


def summary(session: Session) -> dict[str, Any]:
    """The hub's release state at a glance (console, CLI): what is in force where, and the live files'."""
    live = manifest_id(live_manifest())
    return {
        "release_env": get_settings().release_env or None,
        "live": live,
        "live_is_bundle": session.get(ReleaseBundle, live) is not None,
        "in_force": {env: in_force(session, env) for env in ENVIRONMENTS},
        "checked_at": datetime.now(UTC).isoformat(),
    }
