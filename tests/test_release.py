"""Release bundles end to end through the CLI: build, approve (a wrong password refused), promote to
validation then production, a production hub refusing a mapping edited in place (naming the file and
both hashes), rollback with the replay that re-maps what the rolled-back bundle mapped, and the
validation evidence checked section by section. Each test runs on a temporary copy of config/ and
mappings/, never on the repository's files."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner, Result

from cgthub import ledger, partner_sync, release, release_evidence, settings, sites
from cgthub.cli import app
from cgthub.jsontext import canonical_json
from cgthub.mapping import registry
from cgthub.release_tables import ReleaseApproval, ReleaseBundle
from cgthub.store import session_scope
from cgthub.tables import AuditRecord, LedgerEntry, OperatorDecision, Order
from connectors.hospital import simulator
from tests import test_console
from tests.factories import enrolment

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "release-manager-pw-1"
ORM = "mappings/hl7/ORM_O01"
BUILD = ("release", "build", "--reason", "RELEASE-BUILT", "--text", "the mapping change, tested")

# The console as Airflow mounts it, signed in with Airflow's token (tests/test_console.py's fixtures).
auth_manager = test_console.auth_manager
console = test_console.console
signed_in = test_console.signed_in


@dataclass
class Hub:
    root: Path
    url: str

    def cli(self, *args: str, password: str | None = None) -> Result:
        result = CliRunner().invoke(
            app, list(args), input=f"{password}\n" if password else None, env={"COLUMNS": "250"}
        )
        return result

    def ok(self, *args: str, password: str | None = None) -> str:
        result = self.cli(*args, password=password)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    def signed(self, *args: str, password: str = PASSWORD) -> Result:
        return self.cli(*args, "--signer", "qa", "--password-stdin", password=password)

    def build(self, signer: str = "rm", password: str = PASSWORD) -> str:
        """`cgthub release build`, signed by `signer` as the bundle's builder (rm: the release manager)."""
        return self.ok(*BUILD, "--signer", signer, "--password-stdin", password=password)

    def subprocess(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cgthub.cli", *args],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=120,
        )

    def feed(self, name: str, patients: range) -> Path:
        return simulator.write_batch_file(self.root / name, list(simulator.feed(patients)))


def said(result: Result) -> str:
    """What a person sees: the output, and the error `cgthub`'s main would print for an exception."""
    return result.output + (str(result.exception) if result.exception else "")


def _clear() -> None:
    settings.get_settings.cache_clear()
    registry.clear_cache()
    sites.clear_cache()


@pytest.fixture
def hub(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(tmp_path / "mappings"))
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CGTHUB_ENV", "dev")
    monkeypatch.setenv("CGTHUB_RELEASE_ENV", "production")
    monkeypatch.delenv("CGTHUB_OPERATOR", raising=False)
    _clear()
    hub = Hub(tmp_path, db_url)
    hub.ok("operators", "add", "qa", "--scope", "approve_release", "--password-stdin", password=PASSWORD)
    hub.ok("operators", "add", "rm", "--scope", "build_release", "--password-stdin", password=PASSWORD)
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in range(1, 6)])
    yield hub
    _clear()


def _built(output: str) -> str:
    found = re.search(r"built: bundle ([0-9a-f]{64})", output)
    assert found, output
    return found.group(1)


def _v3_without_filler_order(hub: Hub) -> None:
    """A new ORM version (after v2, the one in force) that no longer keeps the hospital's filler order
    number, with its fixtures."""
    v2 = (hub.root / ORM / "v2.yaml").read_text()
    v3 = v2.replace("version: 2\n", "version: 3\n").replace(
        "change_note: >\n", "change_note: >\n  v3: the filler order number (ORC-3) is no longer kept.\n"
    )
    v3 = v3.replace("      refs.hospital_filler_order: {from: ORC-3}\n", "")
    assert v3.count("version: 3") == 1 and "ORC-3" not in v3.split("events:")[1]
    (hub.root / ORM / "v3.yaml").write_text(v3)
    registry.clear_cache()  # a new process would read the folder afresh; this one remembers it
    hub.ok("mappings", "test", "--update")  # writes each fixture's v3 expectation


def _orm_filler_orders(url: str) -> dict[str, int]:
    """Per order, how many of its live hospital order events keep the filler order number."""
    with session_scope(url) as s:
        rows = s.execute(
            select(LedgerEntry.order_id, LedgerEntry.body).where(LedgerEntry.event_type == "apheresis.scheduled")
        ).all()
    kept: dict[str, int] = {}
    superseded = {orjson.loads(body).get("supersedes") for _, body in rows}
    for order_id, body in rows:
        event = orjson.loads(body)
        if "#order" in event["source_event_id"] and event["source_event_id"] not in superseded:
            kept[order_id] = kept.get(order_id, 0) + int(bool(event["refs"].get("hospital_filler_order")))
    return kept


def test_build_approve_promote_refuse_an_edit_in_place_and_roll_back(hub: Hub) -> None:
    # a production hub with nothing promoted maps nothing
    refused = hub.cli("hl7", "ingest", str(hub.feed("early.hl7", range(1, 2))))
    assert isinstance(refused.exception, release.ReleaseRefused)
    assert "no release bundle is promoted to production" in str(refused.exception)

    built = hub.build()
    first = _built(built)
    stored = orjson.loads((hub.root / "var" / "releases" / first / "manifest.json").read_bytes())["files"]
    assert (
        stored["mappings/hl7/ORM_O01/v1.yaml"] == hashlib.sha256((hub.root / ORM / "v1.yaml").read_bytes()).hexdigest()
    )
    assert {"config/sites.yaml", "config/reason_codes.yaml", "config/markets/DE.yaml"} <= stored.keys()
    assert hashlib.sha256(canonical_json({"files": stored}).encode()).hexdigest() == first
    shutil.rmtree(hub.root / "var" / "releases" / first)  # the folder lost: building again restores it
    assert "already built: bundle " + first in hub.build()  # same content, same bundle
    assert (hub.root / "var" / "releases" / first / "files" / ORM / "v1.yaml").exists()

    wrong = hub.signed(
        "release", "approve", first[:12], "--reason", "RELEASE-VALIDATED", "--text", "ok", password="wrong-pw-12345"
    )
    assert wrong.exit_code == 1 and "re-authentication failed" in said(wrong)
    assert "is not approved" in said(hub.signed("release", "promote", first[:12], "--env", "production"))
    hub.signed("release", "approve", first[:12], "--reason", "RELEASE-VALIDATED", "--text", "OQ/PQ passed")
    not_validated = hub.signed("release", "promote", first[:12], "--env", "production")
    assert not_validated.exit_code == 1 and "never promoted to validation" in said(not_validated)
    for env in ("validation", "production"):
        promoted = hub.signed("release", "promote", first[:12], "--env", env)
        assert promoted.exit_code == 0 and f"to {env} by qa" in promoted.output, said(promoted)

    ingested = hub.ok("hl7", "ingest", str(hub.feed("first.hl7", range(1, 4))))
    assert "9 accepted" in ingested, ingested
    assert sorted(_orm_filler_orders(hub.url).values()) == [1, 1, 1]

    # the next release: a new ORM version; its notes say what it changes on the archived traffic
    _v3_without_filler_order(hub)
    assert "not release bundle" in str(hub.cli("hl7", "ingest", str(hub.feed("x.hl7", range(4, 5)))).exception)
    built = hub.build()
    second = _built(built)
    assert "hl7/ORM_O01 v3 (new): v3: the filler order number (ORC-3) is no longer kept." in built
    assert "US hl7/ORM_O01 v2 -> v3: 3 of 3 archived payloads, 3 orders: refs.hospital_filler_order" in built, built
    hub.signed("release", "approve", second[:12], "--reason", "RELEASE-VALIDATED", "--text", "v3 reviewed")
    for env in ("validation", "production"):
        assert hub.signed("release", "promote", second[:12], "--env", env).exit_code == 0
    assert "6 accepted" in hub.ok("hl7", "ingest", str(hub.feed("second.hl7", range(4, 6))))
    assert partner_sync.apply_hl7_inbox(database_url=hub.url)["release"] == second  # what a DAG run records
    assert sorted(_orm_filler_orders(hub.url).values()) == [0, 0, 1, 1, 1]  # v3 mapped patients 4 and 5

    # an edit in place: production refuses it, naming the file and both hashes
    edited = hub.root / ORM / "v3.yaml"
    expected = hashlib.sha256(edited.read_bytes()).hexdigest()
    edited.write_text(edited.read_text().replace("no longer kept", "dropped"))
    drop = hub.feed("third.hl7", range(1, 2))
    run = hub.subprocess("hl7", "ingest", str(drop))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"mappings/hl7/ORM_O01/v3.yaml differs: expected sha256 {expected}, found " in run.stderr, run.stderr
    assert hashlib.sha256(edited.read_bytes()).hexdigest() in run.stderr and drop.exists()  # nothing read
    for other in (
        ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v3"],
        ["sites", "replay"],
    ):
        assert "mappings/hl7/ORM_O01/v3.yaml differs" in said(hub.cli(*other)), other
    assert "mappings/hl7/ORM_O01/v3.yaml differs" in said(hub.cli("hl7", "listen", "--port", "0"))  # never listens
    archiving = subprocess.Popen(  # archive-only maps nothing: it still takes the hospital's messages
        [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert archiving.stdout is not None and "listening for MLLP" in archiving.stdout.readline()
    finally:
        archiving.terminate()
        archiving.wait(timeout=30)

    # rollback: the bundle before, its files back in place, and the replay that re-maps with it
    rolled = hub.signed("release", "rollback", "--env", "production", "--text", "v3 loses the filler order")
    assert rolled.exit_code == 0, said(rolled)
    assert f"to bundle {first[:12]} by qa" in rolled.output
    assert "cgthub mappings replay --system hl7 --kind ORM_O01 --version v2" in rolled.output
    assert not edited.exists()
    assert first in hub.ok("release", "check")
    hub.ok("mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2")
    assert sorted(_orm_filler_orders(hub.url).values()) == [1, 1, 1, 1, 1]  # v2's mapping again for all

    listed = {line.split("│")[1].strip(): line for line in hub.ok("release", "list").splitlines() if "│" in line}
    assert "production" in listed[first[:12]].split("│")[7] and "production" not in listed[second[:12]].split("│")[7]
    shown = hub.ok("release", "show", second[:12])
    assert f"bundle {second}" in shown and "hl7/ORM_O01 v3 (new)" in shown

    with session_scope(hub.url) as s:
        trail = [(r.action, r.actor) for r in s.scalars(select(AuditRecord).order_by(AuditRecord.seq))]
        assert s.scalar(select(Order.market).limit(1)) == "US"
    assert ("decision.refused", "claimed:qa") in trail
    steps = [action for action, actor in trail if action.startswith("release.") and actor == "qa"]
    assert steps == ["release.approved", *["release.promoted"] * 2] * 2 + ["release.rolled_back"]


def test_evidence_has_every_section_a_reviewer_needs(hub: Hub) -> None:
    first = _built(hub.build())
    hub.signed("release", "approve", first[:12], "--reason", "RELEASE-VALIDATED", "--text", "baseline")
    for env in ("validation", "production"):
        hub.signed("release", "promote", first[:12], "--env", env)
    hub.ok("hl7", "ingest", str(hub.feed("first.hl7", range(1, 4))))
    _v3_without_filler_order(hub)
    second = _built(hub.build())
    approval = hub.signed("release", "approve", second[:12], "--reason", "RELEASE-EMERGENCY-FIX", "--text", "urgent")
    signature = re.search(r"signature ([0-9a-f]{64})", approval.output)
    assert signature, approval.output
    hub.signed("release", "promote", second[:12], "--env", "validation")

    written = hub.ok("release", "evidence", second[:12], "--out", str(hub.root / "evidence"))
    page = (hub.root / "evidence" / f"evidence-{second[:12]}.html").read_text()
    assert "wrote" in written
    for section in release_evidence.SECTIONS:
        assert f">{section}</h2>" in page, section
    sections = dict(zip(release_evidence.SECTIONS, re.split(r"<h2 id='[a-z-]+'>", page)[1:], strict=True))
    assert second in sections["Bundle"] and first in sections["Bundle"] and "matches the manifest" in sections["Bundle"]
    notes = sections["Release notes"]
    assert "mappings/hl7/ORM_O01/v3.yaml" in notes and "the filler order number (ORC-3) is no longer kept" in notes
    fixtures = sections["Fixtures"]
    assert re.search(r"(\d+) fixtures, <span class='ok'>0 failed", fixtures), fixtures[:400]
    assert fixtures.count("<td>hl7/ORM_O01</td><td>v3</td>") == len(list((hub.root / ORM / "fixtures").glob("*.hl7")))
    diff = sections["Diff on archived traffic"]
    assert "<td>US</td><td>hl7/ORM_O01</td><td>v2 -&gt; v3</td><td>3</td><td>3</td><td>3</td>" in diff, diff
    assert "refs.hospital_filler_order: changed 0, added 0, removed 3" in diff
    approvals = sections["Approvals"]
    assert "<td>qa</td><td>approved</td><td>RELEASE-EMERGENCY-FIX</td>" in approvals and signature.group(1) in approvals
    promotions = sections["Promotions"]
    assert "<td>validation</td><td>promoted</td><td>qa</td>" in promotions and "production" not in promotions
    with session_scope(hub.url) as s:
        bundle = s.get(ReleaseBundle, second)
        assert bundle is not None
        manifest = release.manifest_of(bundle)
    for name, digest in manifest.items():
        assert f"<td>{name}</td><td>{digest}</td>" in sections["Files"], name
    assert "MRN0000000" not in page and "Patient^Test" not in page  # the feed's identifiers stay out


@pytest.mark.slow  # Airflow's auth manager and metadata database are set up once per module
def test_the_console_shows_the_bundle_in_force(hub: Hub, console: Any, auth_manager: Any) -> None:
    before = signed_in(console, auth_manager).get("/cgthub/console/mappings").text
    assert "(no bundle built from them)" in before and "In force in production: none." in before
    bundle = _built(hub.build())
    hub.signed("release", "approve", bundle[:12], "--reason", "RELEASE-VALIDATED", "--text", "validated")
    for env in ("validation", "production"):
        hub.signed("release", "promote", bundle[:12], "--env", env)
    page = console.get("/cgthub/console/mappings").text
    assert f'data-release-live="{bundle}"' in page and "(no bundle built from them)" not in page
    assert f'data-release-validation="{bundle}"' in page and f'data-release-production="{bundle}"' in page
    assert "This hub runs as production and maps only with the bundle in force there." in page


def test_a_build_is_signed_and_an_unsigned_or_badly_signed_one_is_approved_by_nobody(hub: Hub) -> None:
    approve = ("release", "approve", "--reason", "RELEASE-VALIDATED", "--text", "OQ passed", "--password-stdin")

    # who builds signs, with their own password and the scope build_release; else nothing is built
    wrong = hub.cli(*BUILD, "--signer", "rm", "--password-stdin", password="not-the-password")
    assert wrong.exit_code == 1 and "re-authentication failed" in said(wrong)
    not_a_builder = hub.cli(*BUILD, "--signer", "qa", "--password-stdin", password=PASSWORD)
    assert not_a_builder.exit_code == 1 and "operator qa may not sign build_release" in said(not_a_builder)
    nobody = hub.cli(*BUILD, "--password-stdin", password=PASSWORD)
    assert nobody.exit_code == 1 and "who signs? no --signer given" in said(nobody)
    with session_scope(hub.url) as s:
        assert s.scalars(select(ReleaseBundle)).all() == []
        refused = s.scalars(select(AuditRecord.details).where(AuditRecord.action == "decision.refused")).all()
    assert not (hub.root / "var" / "releases").exists() or not any((hub.root / "var" / "releases").iterdir())
    assert sorted(refused) == [
        '{"action":"build_release","why":"forbidden"}',
        '{"action":"build_release","why":"signature_refused"}',
    ]

    built = hub.build("rm")
    bundle = _built(built)
    assert "signed as builder by rm (reviewed, RELEASE-BUILT)" in built
    assert "signed as builder by rm" in hub.ok("release", "show", bundle[:12])

    # a build whose signature is gone (as one built before builds were signed): nobody may approve it
    with session_scope(hub.url) as s:
        s.execute(delete(OperatorDecision).where(OperatorDecision.action == "build_release"))
    unsigned = hub.cli(*approve[:2], bundle[:12], *approve[2:], "--signer", "qa", password=PASSWORD)
    assert unsigned.exit_code == 1
    assert f"bundle {bundle[:12]} has no valid builder's signature (no builder signed it)" in said(unsigned)
    assert "cgthub release build --signer BUILDER --reason RELEASE-BUILT" in unsigned.exception.hint
    assert "nobody (rm, unsigned)" in hub.ok("release", "list")
    # its builder signs it by building the same files again; then a second person approves
    assert "already built: bundle " + bundle in hub.build("rm")
    assert hub.cli(*approve[:2], bundle[:12], *approve[2:], "--signer", "qa", password=PASSWORD).exit_code == 0

    # another operator building the same files signs as a builder too
    hub.ok("operators", "add", "lead", "--scope", "all", "--password-stdin", password=PASSWORD)
    assert "signed as builder by lead (reviewed, RELEASE-BUILT)" in hub.build("lead")
    assert "signed as builder by lead, rm" in hub.ok("release", "show", bundle[:12])

    # a builder's signature edited in the database to name someone else does not hold
    _v3_without_filler_order(hub)
    second = _built(hub.build("lead"))
    with session_scope(hub.url) as s:
        s.execute(
            update(OperatorDecision)
            .where(OperatorDecision.subject == f"release:{second}", OperatorDecision.signer == "lead")
            .values(signer="rm")
        )
    forged = hub.cli(*approve[:2], second[:12], *approve[2:], "--signer", "lead", password=PASSWORD)
    assert forged.exit_code == 1, said(forged)
    assert "build signature #" in said(forged) and "(rm): the decision does not match its audit trail" in said(forged)
    assert "an unsigned build cannot be approved" in said(forged)
    page = hub.ok("release", "evidence", second[:12], "--out", str(hub.root / "evidence"))
    assert "NOT VALID: build signature #" in (hub.root / "evidence" / f"evidence-{second[:12]}.html").read_text()
    assert "wrote" in page
    with session_scope(hub.url) as s:
        assert [a.bundle_id for a in s.scalars(select(ReleaseApproval))] == [bundle]
