"""The CLI as a new integration engineer meets it: wrong inputs get one clear line, lookups take the
ids people have, and what it prints explains itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cgthub import ledger, pipeline, quarantine
from cgthub.cli import app
from cgthub.mapping import registry
from cgthub.store import session_scope
from tests.factories import PATIENTS, coi, din, enrolment, happy_path


def _run(*args: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CGTHUB_DATABASE_URL": url, "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=environment, timeout=60
    )


def _refused(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode != 0, run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    for word in words:
        assert word in run.stderr, (word, run.stderr)


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            found += _commands(sub, (*path, name))
    return found


def test_no_help_screen_gives_a_flag_a_value_type():
    """`--help <bool>` reads as if --help took a value; flags are listed as flags everywhere."""
    runner = CliRunner()
    paths = _commands(typer.main.get_command(app))
    assert ("api", "serve") in paths and ("mappings", "test") in paths
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, (path, shown.output)
        assert "--help" in shown.output
    serve_help = runner.invoke(app, ["api", "serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--webhooks / --no-webhooks" in serve_help


def test_quarantine_commands_say_what_they_do():
    runner = CliRunner()
    listing = runner.invoke(app, ["quarantine", "--help"], env={"COLUMNS": "200"}).output
    lines = {line.split()[0]: line for line in listing.splitlines() if line.strip().startswith(("list", "show"))}
    assert len(lines["list"].split()) > 3 and len(lines["show"].split()) > 3, listing


def test_order_status_filter_takes_only_real_statuses(db_url):
    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1)[:1])
    for wrong in ("bogus", "on-hold"):
        _refused(_run("orders", "list", "--status", wrong, url=db_url), wrong, "on_hold", "manufacturing")
    assert "1 orders" in _run("orders", "list", "--status", "enrolled", url=db_url).stdout


def test_orders_list_filters_by_site(db_url):
    with session_scope(db_url) as s:
        us, de = (ledger.append_many(s, [enrolment(n, market=m)])[0].order_id for n, m in ((1, "US"), (2, "DE")))
    listing = _run("orders", "list", "--site", "DE-SITE-1", url=db_url)
    assert listing.returncode == 0, listing.stderr
    assert de in listing.stdout and us not in listing.stdout and "1 orders" in listing.stdout


def test_orders_show_finds_the_order_by_any_partner_reference(db_url):
    with session_scope(db_url) as s:
        order_id = ledger.append_many(s, happy_path(7)[:9])[-1].order_id
        ledger.append_many(s, happy_path(8)[:1])
    for reference in ("CRM-00007", din(7), coi(7), "SHP-7-OUT"):
        shown = _run("orders", "show", reference, url=db_url)
        assert shown.returncode == 0, (reference, shown.stderr)
        assert shown.stdout.startswith(order_id), (reference, shown.stdout[:200])
    _refused(_run("orders", "show", "CRM-09999", url=db_url), "no order CRM-09999", "CRM order id")


def test_quarantine_show_explains_a_mapping_failure_without_phi(db_url):
    crm = registry.get_mapper("crm", "enrollment")
    patient = PATIENTS[0]
    with session_scope(db_url) as s:
        payload = json.dumps({"orders": [{"patient": patient["name"], "dob": patient["birth_date"]}]})[:-3].encode()
        result = pipeline.ingest(s, system="crm", kind="enrollment", channel="test", payload=payload, mapper=crm)
        assert result.rejected
    listing = _run("quarantine", "list", url=db_url)
    entry_id = next(
        re.search(r"\d+", line)[0] for line in listing.stdout.splitlines() if "crm" in line and "enrollment" in line
    )
    shown = _run("quarantine", "show", entry_id, url=db_url)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for expected in ("reason:", "stage:   parse", "partner: crm", "kind:    enrollment", "age:", "ago", "raw #"):
        assert expected in out, (expected, out)
    assert f"mapping now in use: {crm.mapping_id}@v{crm.spec.version}" in out, out
    assert "{}" not in out and "cgthub mappings replay --system crm --kind enrollment" in out
    for phi in (patient["birth_date"], *patient["name"].split("^")):
        assert phi not in out


@pytest.mark.parametrize(
    "document",
    [{}, [], {"resourceType": "Bundle", "type": "collection", "entry": []}, {"type": "EPCISDocument"}],
    ids=["empty", "list", "fhir", "no-ledger"],
)
def test_verify_custody_names_a_wrong_file_as_such(tmp_path, document):
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(document))
    run = _run("api", "verify-custody", str(path), url="sqlite://")
    _refused(run, "is not a custody document", "GET /orders/{id}/custody")
    assert "untampered" not in run.stderr


def test_api_serve_leaves_airflow_its_port_and_says_when_a_port_is_taken(db_url):
    from cgthub.cli.api import DEFAULT_PORT
    from connectors.sandboxes import FIXED_PORTS

    compose = (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text()
    assert DEFAULT_PORT not in (8080, 2575, *FIXED_PORTS.values()) and f"{DEFAULT_PORT}:" not in compose
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _run("api", "serve", "--port", str(port), "--no-webhooks", url=db_url)
    _refused(run, f"cannot listen on 127.0.0.1:{port}", "--port")
    assert run.returncode == 1 and "uvicorn" not in run.stderr.lower() and "errno" not in run.stderr.lower()


@pytest.fixture
def mappings_copy(tmp_path, monkeypatch):
    """The committed mappings, copied, so a test may add versions and update fixtures."""
    root = tmp_path / "mappings"
    shutil.copytree(Path(registry.mappings_dir()), root)
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(root))
    registry.clear_cache()
    yield root
    monkeypatch.undo()
    registry.clear_cache()


def _mapping_cli(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return _run("mappings", *args, url="sqlite://", CGTHUB_MAPPINGS_DIR=str(root))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_mappings_test_update_leaves_passing_fixtures_byte_for_byte(mappings_copy):
    before = {kind: _snapshot(kind / "fixtures") for kind in mappings_copy.glob("*/*") if (kind / "fixtures").is_dir()}
    run = _mapping_cli("test", "--update", root=mappings_copy)
    assert run.returncode == 0, run.stdout + run.stderr
    after = {kind: _snapshot(kind / "fixtures") for kind in before}
    assert after == before


def test_a_version_copied_unchanged_is_compared_with_its_own_expectation_or_told_which(mappings_copy):
    folder = mappings_copy / "crm" / "enrollment"
    newest = max(int(p.stem[1:]) for p in folder.glob("v*.yaml"))
    copied = newest + 1
    text = (folder / f"v{newest}.yaml").read_text()
    assert f"version: {newest}" in text
    (folder / f"v{copied}.yaml").write_text(text.replace(f"version: {newest}", f"version: {copied}", 1))
    run = _mapping_cli("test", root=mappings_copy)
    out = run.stdout + run.stderr
    own = sorted(p.name for p in (folder / "fixtures").glob(f"*.v{newest}.expected.json"))
    assert own, "the committed fixtures document a change in the newest version"
    stem = own[0].split(".")[0]
    assert f"{stem}.v{copied}.expected.json" in out, out
    assert f"{stem}.v{newest}.expected.json" in out, out
    updated = _mapping_cli("test", "--update", root=mappings_copy)
    assert (folder / "fixtures" / f"{stem}.v{copied}.expected.json").exists(), updated.stdout
    wrote = [line for line in updated.stdout.splitlines() if line.startswith("wrote ")]  # README: says what it wrote
    assert f"wrote crm/enrollment@v{copied} fixtures/{stem}.v{copied}.expected.json" in wrote, updated.stdout
    assert _mapping_cli("test", root=mappings_copy).returncode == 0


def test_mappings_diff_takes_system_and_kind_either_way(db_url):
    for args in (("crm", "enrollment", "v1"), ("crm/enrollment", "v1", "v2"), ("crm", "enrollment", "1", "v2")):
        run = _run("mappings", "diff", *args, url=db_url)
        assert run.returncode == 0, (args, run.stderr)
        assert "crm/enrollment v1 -> v2" in run.stdout, (args, run.stdout)
    _refused(_run("mappings", "diff", "crm", url=db_url), "SYSTEM/KIND")
    _refused(_run("mappings", "diff", "crm/enrollment", "v9", url=db_url), "v9")


def test_mappings_list_cuts_change_notes_at_a_word(mappings_copy):
    folder = mappings_copy / "crm" / "enrollment"
    text = (folder / "v2.yaml").read_text()
    note = " ".join(f"qqnote{n}" for n in range(40))  # words no other note has
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("change_note:"))
    end = next((i for i in range(at + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    lines[at:end] = [f"change_note: {note}"]
    (folder / "v2.yaml").write_text("\n".join(lines) + "\n")
    listing = _mapping_cli("list", root=mappings_copy).stdout
    words = set(note.split())
    tokens = [t for t in re.split(r"[\s│┃|]+", listing) if t]
    shown = [t for t in tokens if t.startswith("qq")]
    assert shown and all(t in words for t in shown), shown
    assert "…" in listing


def test_deadline_alert_text_follows_the_order(db_url):
    """An alert raised 18 days in must not still say 18 days when the order is at 30."""
    from cgthub import alerts, deadlines, ops_config

    config = ops_config.get()
    events = happy_path(3)[:6]  # manufacturing, a long way from infusion
    with session_scope(db_url) as s:
        order_id = ledger.append_many(s, events)[0].order_id
    collected = min(e.occurred_at for e in events)
    messages = []
    for day in (18, 30):
        with session_scope(db_url) as s:
            deadlines.run(s, collected + timedelta(days=day), config)
        with session_scope(db_url) as s:
            found = [a for a in alerts.open_alerts(s, order_id) if a.kind == deadlines.VEIN_TO_VEIN_AT_RISK]
            assert found, f"no vein-to-vein alert at day {day}"
            messages.append(found[0].message)
    assert messages[0] != messages[1] and "30" in messages[1], messages


def test_demo_table_explains_its_columns(db_url):
    """The demo's last screen: no abbreviation a newcomer has to guess."""
    from cgthub import demo, ledger
    from cgthub.lifecycle import MAIN_PATH
    from tests.factories import T0

    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1) + happy_path(2)[:7])
    table = demo.render_table(T0 + timedelta(days=40))
    for unexplained in ("v2v d", "OOS->exc", "mkt ", f"{len(MAIN_PATH)}/{len(MAIN_PATH)}"):
        assert unexplained not in table, unexplained
    header, legend = table.splitlines()[0], table.split("\n\n", 1)[1]
    assert "vein-to-vein" in header and "milestones reached" in header
    assert "vein-to-vein: days from apheresis collection to infusion" in legend and "! = critical" in legend
    assert f"{len(MAIN_PATH)} of {len(MAIN_PATH)}" in table


@pytest.mark.parametrize("stage", list(quarantine.Stage))
def test_quarantine_show_explains_every_stage(db_url, stage):
    """A stage added to the pipeline (such as `route`) is explained, not a crash of `show`."""
    with session_scope(db_url) as s:
        entry = quarantine.put(s, stage=stage, reason="an operator-readable reason", system="hl7", kind="ORM^O01")
        entry_id = str(entry.id)
    shown = CliRunner().invoke(app, ["quarantine", "show", entry_id])
    assert shown.exit_code == 0, shown.output
    assert f"stage:   {stage.value}: " in shown.output and "an operator-readable reason" in shown.output
