"""`cgthub release`: build, approve, promote and roll back release bundles; write validation evidence.

See `cgthub.release`. Building, approving, promoting and rolling back are signed: the signer
re-enters their operator password (or pipes it with --password-stdin), as for operator decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from cgthub import decisions, release, release_guard
from cgthub.cli.common import CliError, console, open_session, read_password, signer_id
from cgthub.cli.decisions import _signature as signing  # the CLI's one way to gather a signature
from cgthub.decisions import Action, Meaning, Signature
from cgthub.release_tables import ReleaseBundle
from cgthub.settings import get_settings
from cgthub.store import database_url

app = typer.Typer(help="Release bundles: build, approve, promote, roll back, evidence.", no_args_is_help=True)

_T = TypeVar("_T")

_SIGNER = typer.Option(None, "--signer", help="your operator user id (default: CGTHUB_OPERATOR)")
_STDIN = typer.Option(False, "--password-stdin", help="read the password from the first line of stdin")
_ENV = typer.Option(..., "--env", help="validation or production")


def _signed(work: Callable[[Session], _T], *, signer: str, subject: str, action: Action = Action.APPROVE_RELEASE) -> _T:
    """One transaction; a refused signature is recorded in the audit trail apart (decisions.run)."""
    try:
        return decisions.run(database_url(), work, signer=signer, action=action, subject=subject)
    except decisions.DecisionError as refused:
        raise CliError(refused.message, refused.hint or None) from refused
    except release.ReleaseError as refused:
        raise CliError(refused.message, refused.hint or None) from refused


def _bundle_ref(ref: str) -> str:
    with open_session(readonly=True) as session:
        try:
            return release.find_bundle(session, ref).id
        except release.ReleaseError as exc:
            raise CliError(exc.message, exc.hint or None) from exc


@app.command()
def build(
    signer: str | None = _SIGNER,
    reason: str = typer.Option(..., "--reason", help="a reason code for build_release (RELEASE-BUILT)"),
    text: str = typer.Option(..., "--text", help="what the bundle is for, in your words"),
    password_stdin: bool = _STDIN,
) -> None:
    """Pack mappings, markets, the site registry and reason codes into a content-hashed bundle, signed
    by you as its builder (re-authentication, meaning `reviewed`): the approver must be someone else."""
    signature = signing(signer, Meaning.REVIEWED, reason, text, password_stdin, None)
    user = signature.signer
    subject = f"release:{release_guard.manifest_id(release_guard.live_manifest())}"
    built = _signed(lambda s: _build(s, signature), signer=user, subject=subject, action=Action.BUILD_RELEASE)
    bundle, new, signed, notes = built
    console.print(f"{'built' if new else 'already built'}: bundle {bundle.id} ({bundle.file_count} files)")
    if signed is not None:
        console.print(
            f"signed as builder by {signed.signer} ({signed.meaning}, {signed.reason_code}), decision "
            f"#{signed.decision_id}: another operator approves it"
        )
    else:
        console.print(f"{user} had signed it as builder already")
    console.print(f"stored in {release.bundle_dir(bundle.id)}")
    _print_notes(notes)


def _build(
    session: Session, signature: Signature
) -> tuple[ReleaseBundle, bool, release.BuildSignature | None, dict[str, object]]:
    bundle, new, signed = release.build(session, signature)
    return bundle, new, signed, release.notes_of(bundle)


def _print_notes(notes: dict[str, object]) -> None:
    files = notes["files"]
    assert isinstance(files, dict)
    compared = notes.get("compared_with")
    console.print(
        f"since {str(compared)[:12] if compared else 'nothing (first bundle)'}: "
        f"{len(files['added'])} files added, {len(files['changed'])} changed, {len(files['removed'])} removed"
    )
    for version in notes["mapping_versions"]:  # type: ignore[attr-defined]
        console.print(f"  {version['mapping']} v{version['version']} ({version['status']}): {version['change_note']}")
    for d in notes["diffs"]:  # type: ignore[attr-defined]
        fields = ", ".join(f["field"] for f in d["fields"]) or "no canonical field changes"
        console.print(
            f"  {d['market']} {d['system']}/{d['kind']} v{d['old_version']} -> v{d['new_version']}: "
            f"{d['payloads_changed']} of {d['payloads']} archived payloads, {d['orders']} orders: {fields}"
            + (f" ({d['note']})" if d["note"] else "")
        )


@app.command("list")
def list_bundles() -> None:
    """Every bundle: when built, approvals, where it is in force."""
    with open_session(readonly=True) as session:
        force = {env: release.in_force(session, env) for env in release.ENVIRONMENTS}
        table = Table(title="release bundles")
        for col in ("bundle", "built", "by", "files", "approvals", "promoted to", "in force"):
            table.add_column(col)
        for bundle in release.bundles(session):
            promoted = sorted({p.environment for p in release.promotions(session, bundle_id=bundle.id)})
            table.add_row(
                bundle.id[:12],
                bundle.built_at.isoformat(timespec="seconds"),
                _builders(session, bundle),
                str(bundle.file_count),
                ", ".join(a.signer for a in release.approvals(session, bundle.id)) or "-",
                ", ".join(promoted) or "-",
                ", ".join(env for env, held in force.items() if held == bundle.id) or "-",
            )
    console.print(table)


def _builders(session: Session, bundle: ReleaseBundle) -> str:
    """The signed builders, or why there is none (an unsigned build names who ran it, unsigned)."""
    signed = release.build_signatures(session, bundle)
    if signed.valid:
        return ", ".join(sorted(signed.signers))
    return f"nobody ({bundle.built_by}, unsigned)" if not signed.problems else "nobody (signature not valid)"


@app.command()
def show(bundle: str = typer.Argument(..., help="bundle id (or its first 8+ characters)")) -> None:
    """A bundle's release notes: files changed, mapping versions with their change notes, diffs."""
    with open_session(readonly=True) as session:
        try:
            found = release.find_bundle(session, bundle)
        except release.ReleaseError as exc:
            raise CliError(exc.message, exc.hint or None) from exc
        console.print(
            f"bundle {found.id}, built {found.built_at.isoformat(timespec='seconds')}, "
            f"signed as builder by {_builders(session, found)}"
        )
        _print_notes(release.notes_of(found))


@app.command()
def approve(
    bundle: str = typer.Argument(..., help="bundle id (or its first 8+ characters)"),
    signer: str | None = _SIGNER,
    reason: str = typer.Option(..., "--reason", help="a reason code for approve_release"),
    text: str = typer.Option(..., "--text", help="why, in your words"),
    meaning: Meaning = typer.Option(Meaning.APPROVED, "--meaning", help="what your signature means"),
    password_stdin: bool = _STDIN,
) -> None:
    """Sign a bundle as approved (re-authentication, reason code and text), recorded in the audit trail."""
    bundle_id = _bundle_ref(bundle)
    signature = signing(signer, meaning, reason, text, password_stdin, None)
    user = signature.signer
    approval = _signed(lambda s: release.approve(s, bundle_id, signature), signer=user, subject=f"release:{bundle_id}")
    console.print(
        f"approved bundle {bundle_id[:12]} by {approval.signer} ({approval.reason_code}) at "
        f"{approval.signed_at.isoformat(timespec='seconds')}, signature {approval.signature_hash}"
    )


@app.command()
def promote(
    bundle: str = typer.Argument(..., help="bundle id (or its first 8+ characters)"),
    env: str = _ENV,
    signer: str | None = _SIGNER,
    note: str = typer.Option("", "--note", help="kept with the promotion"),
    password_stdin: bool = _STDIN,
) -> None:
    """Put a bundle in force in validation or production (production: approved and validated first)."""
    bundle_id = _bundle_ref(bundle)
    user = signer_id(signer)
    password = read_password(password_stdin, f"password for {user} (promoting to {env})")
    row = _signed(
        lambda s: release.promote(s, bundle_id, env, signer=user, password=password, note=note),
        signer=user,
        subject=f"release:{bundle_id}",
    )
    console.print(f"promoted bundle {bundle_id[:12]} to {env} by {row.by} at {row.at.isoformat(timespec='seconds')}")


@app.command()
def rollback(
    env: str = _ENV,
    signer: str | None = _SIGNER,
    text: str = typer.Option(..., "--text", help="why, in your words"),
    password_stdin: bool = _STDIN,
) -> None:
    """Return an environment to the bundle in force before the current one (files reinstalled here)."""
    user = signer_id(signer)
    password = read_password(password_stdin, f"password for {user} (rolling back {env})")
    with open_session(readonly=True) as session:
        before = release.in_force(session, env)
    row = _signed(
        lambda s: release.rollback(s, env, signer=user, password=password, note=text),
        signer=user,
        subject=f"release:{env}",
    )
    console.print(
        f"rolled {env} back from {str(before)[:12]} to bundle {row.bundle_id[:12]} by {row.by} "
        f"at {row.at.isoformat(timespec='seconds')}"
    )
    with open_session(readonly=True) as session:
        for system, kind, version in release.replays_after_rollback(session, before, row.bundle_id):
            console.print(
                f"re-map what {str(before)[:12]} mapped: "
                f"cgthub mappings replay --system {system} --kind {kind} --version v{version}",
                soft_wrap=True,
            )


@app.command()
def check() -> None:
    """Whether this hub's live files are the bundle in force in its release environment (exit 1 if not)."""
    bundle_id = release.ensure_release_in_force()
    environment = get_settings().release_env
    if environment:
        console.print(f"the live files are bundle {bundle_id}, in force in {environment}")
    else:
        console.print(f"the live files hash to {bundle_id} (CGTHUB_RELEASE_ENV not set: not enforced)")


@app.command()
def evidence(
    bundle: str = typer.Argument(..., help="bundle id (or its first 8+ characters)"),
    out: Path | None = typer.Option(None, "--out", help="folder to write into (default: the bundle's folder)"),
) -> None:
    """Write the computerized-system validation report of a bundle (HTML)."""
    from cgthub.release_evidence import write

    bundle_id = _bundle_ref(bundle)
    with open_session(readonly=True) as session:
        written = write(session, bundle_id, out)
    for path in written:
        console.print(f"wrote {path}")
