"""README, Audit trail, through `cgthub` as an operator runs it and the monitoring DAG as Airflow runs
it, on SQLite and PostgreSQL (test_audit_trail holds export, verify and `audit config`):

- a configuration change is "noted by its SHA-256 before every signed decision": the row naming the
  edited file comes before the decision's, with no `cgthub audit config` in between;
- the trail keeps a "mapping replay" and an "operator ... disabled" row;
- rows "carry ids and codes, never a patient's identifiers": the export after decisions about an
  order of a patient with a name, birth date and MRN holds none of them;
- `cgthub audit export` writes CSV "by default";
- "`cgthub audit checkpoint` (and the monitoring DAG's checkpoint task) signs the trail's newest row
  ...; `verify` then also fails when the trail is shorter": the DAG's task alone checkpoints here;
- "Rows deleted before the first checkpoint do not [show]": verify passes such a cut, as written.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from sqlalchemy import text

from cgthub import audit_trail, ledger
from cgthub.mapping import registry
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from tests.factories import happy_path
from tests.test_conflict_words import PHI, _decide, _received_conflict
from tests.test_dags_run import dags, hub, run  # noqa: F401  (fixtures)
from tests.test_decisions import PASSWORD, _add_operator, _cli, _held_orders

SIGN = ["--meaning", "approved", "--text", "checked with the site and the CMO", "--password-stdin"]


def _trail(url: str) -> list[tuple[str, str, str]]:
    with session_scope(url, readonly=True) as s:
        return [(r.actor, r.action, r.subject) for r in audit_trail.rows(s)]


def test_a_configuration_edit_is_noted_before_the_next_signed_decision(db_url, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    env = {"CGTHUB_CONFIG_DIR": str(config)}
    held, other = _held_orders(db_url)
    _add_operator(db_url, "qa.lead", "all")
    release = ["orders", "release-hold", "--reason", "COI-VERIFIED", *SIGN, "--signer", "qa.lead"]

    first = _cli(*release[:2], held, *release[2:], url=db_url, password=PASSWORD, **env)
    assert first.returncode == 0, first.stderr
    sites = config / "sites.yaml"
    sites.write_text(sites.read_text() + "\n# a comment added by hand on the hub\n")
    second = _cli(*release[:2], other, *release[2:], url=db_url, password=PASSWORD, **env)
    assert second.returncode == 0, second.stderr

    actions = [(actor, action) for actor, action, _subject in _trail(db_url)]
    assert actions[-4:] == [
        ("config-files", "config.changed"),  # every file, first seen at the first decision
        ("qa.lead", "decision.release_hold"),
        ("config-files", "config.changed"),  # the edit, before the decision taken under it
        ("qa.lead", "decision.release_hold"),
    ]
    with session_scope(db_url, readonly=True) as s:
        noted = [r for r in audit_trail.rows(s) if r.action == "config.changed"][-1]
    details = json.loads(noted.details) if isinstance(noted.details, str) else noted.details
    assert details["changed"] == ["sites.yaml"]
    assert details["files"]["sites.yaml"] == audit_trail.config_fingerprints(config)["sites.yaml"]


def test_a_replay_and_a_disabled_operator_are_rows_and_no_row_names_a_patient(db_url):
    entry = _received_conflict(db_url)  # an HL7 resend from the listener, its PID naming the patient
    assert '"result": "released"' in _decide(db_url, "retry", entry.id, "CHANGE-CONFIRMED")  # signed
    assert _cli("operators", "disable", "coordinator", url=db_url).returncode == 0
    version = registry.get_mapper("crm", "enrollment").version
    replay = ["mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", f"v{version}"]
    replayed = _cli(*replay, url=db_url)
    assert replayed.returncode == 0, replayed.stderr

    trail = _trail(db_url)
    assert trail[-1][1:] == ("mapping.replayed", f"mapping:crm/enrollment@{version}")
    assert trail[-2][1:] == ("operator.disabled", "operator:coordinator")
    assert ("coordinator", "decision.retry_quarantine", f"quarantine:{entry.id}") in trail

    exported = _cli("audit", "export", url=db_url)  # no --format: CSV
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["actor"], r["action"], r["subject"]) for r in rows] == trail
    assert {"seq", "prev_mac", "mac"} <= set(rows[0])
    assert not [p for p in PHI if p in exported.stdout]


@pytest.mark.slow
def test_the_monitoring_dags_checkpoint_makes_verify_see_the_newest_rows_deleted(dags, hub):  # noqa: F811
    with session_scope(hub) as s:
        ledger.append_many(s, happy_path(1))
        for action in ("console.sign_in", "config.changed", "api_key.created"):
            audit_trail.record(s, action, "console", actor="maria.k")
    with session_scope(hub) as s:  # before any checkpoint, the newest row cut away is not seen
        s.execute(text("DELETE FROM audit_trail WHERE seq = 3"))
    unseen = _cli("audit", "verify", url=hub)
    assert unseen.returncode == 0 and "chain unbroken to seq 2" in unseen.stdout

    dag_run, states = run(dags["cgthub_monitoring"])
    assert dag_run.state == "success" and states["checkpoint_ledger"] == "success"
    assert _cli("audit", "verify", url=hub).returncode == 0
    with session_scope(hub) as s:
        s.execute(text("DELETE FROM audit_trail WHERE seq = 2"))
    cut = _cli("audit", "verify", url=hub)
    assert cut.returncode == 1 and "recorded seq 2 (newest rows deleted)" in cut.stdout
