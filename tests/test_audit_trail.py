"""The audit trail of people as an auditor meets it: `cgthub audit export` and `cgthub audit verify`.

Key creation and revocation, operators added and console sign-ins are rows; the export carries
every row with its seals; verify passes an untouched trail and names an edited, a deleted and an
inserted row.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import subprocess
import sys

from sqlalchemy import text

from cgthub import audit_trail, decisions
from cgthub.api.auth import create_key, revoke
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope


def _cli(*args: str, url: str, stdin: str | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url, "CGTHUB_OPERATOR": "it.admin", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env, input=stdin
    )


def _trail_of_five(url: str) -> None:
    created = _cli("api", "keys", "create", "--name", "site dashboard", "--scope", "status:read", "--all-data", url=url)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[1]
    assert _cli("api", "keys", "revoke", key_id, url=url).returncode == 0
    added = _cli("operators", "add", "qa.lead", "--scope", "all", "--password-stdin", url=url, stdin="long enough pw\n")
    assert added.returncode == 0, added.stderr
    with session_scope(url) as s:  # what the console does when a person signs in
        audit_trail.record(s, "console.sign_in", "console", {"roles": ["Op"]}, actor="maria.k")
        audit_trail.record(s, "config.changed", "config/sites.yaml", {"sha256": "ab" * 32}, actor="maria.k")


def test_people_actions_are_exported_with_their_seals_and_verify(db_url):
    _trail_of_five(db_url)
    as_json = _cli("audit", "export", "--format", "json", url=db_url)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [(r["seq"], r["actor"], r["action"]) for r in rows] == [
        (1, "it.admin", "api_key.created"),
        (2, "it.admin", "api_key.revoked"),
        (3, "it.admin", "operator.added"),
        (4, "maria.k", "console.sign_in"),
        (5, "maria.k", "config.changed"),
    ]
    assert rows[0]["details"] == {"name": "site dashboard", "scopes": ["status:read"]}
    assert all(r["prev_mac"] == p["mac"] for p, r in itertools.pairwise(rows))
    assert "long enough pw" not in as_json.stdout
    as_csv = _cli("audit", "export", "--format", "csv", url=db_url)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["mac"] for r in table] == [r["mac"] for r in rows]
    verified = _cli("audit", "verify", url=db_url)
    assert verified.returncode == 0 and "5 audit rows, chain unbroken to seq 5" in verified.stdout


def _tamper_and_verify(url: str, statement: str) -> subprocess.CompletedProcess[str]:
    with session_scope(url) as s:  # the same five rows, written in process (the CLI's part is tested above)
        row, _token = create_key(s, name="site dashboard", scopes=["status:read"], all_data=True)
        revoke(s, row.id)
        decisions.add_operator(s, "qa.lead", "long enough pw", ["all"])
        for action in ("console.sign_in", "config.changed"):
            audit_trail.record(s, action, "console", actor="maria.k")
    with session_scope(url) as s:
        s.execute(text(statement))
    return _cli("audit", "verify", url=url)


def test_verify_catches_an_edited_row(db_url):
    run = _tamper_and_verify(db_url, "UPDATE audit_trail SET actor = 'someone.else' WHERE seq = 4")
    assert run.returncode == 1
    assert "(seq 4): seal does not match" in run.stdout and "the trail was altered" in run.stderr


def test_verify_catches_a_deleted_row(db_url):
    run = _tamper_and_verify(db_url, "DELETE FROM audit_trail WHERE seq = 2")
    assert run.returncode == 1
    assert "(seq 3): seq jumps from 1 to 3 (rows deleted)" in run.stdout and "link to the row before" in run.stdout


def test_verify_catches_an_inserted_row(db_url):
    # A row slipped in at the end, linked to the last one as a genuine row would be, but sealed without the key.
    forged = (
        "INSERT INTO audit_trail (seq, at, actor, action, subject, details, prev_mac, mac) "
        "SELECT 6, at, 'it.admin', 'api_key.created', 'api_key:backdoor', '{}', mac, '" + "0" * 64 + "' "
        "FROM audit_trail WHERE seq = 5"
    )
    run = _tamper_and_verify(db_url, forged)
    assert run.returncode == 1
    assert "(seq 6): seal does not match under the ledger key" in run.stdout


def test_a_configuration_change_is_noted_once(db_url, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    env = {"CGTHUB_CONFIG_DIR": str(config)}
    first = _cli("audit", "config", url=db_url, **env)
    assert first.returncode == 0 and "sites.yaml" in first.stdout
    assert "changed since the trail last noted it" in _cli("audit", "config", url=db_url, **env).stdout
    sites = config / "sites.yaml"
    sites.write_text(sites.read_text() + "\n# a site added by hand\n")
    noted = _cli("audit", "config", url=db_url, **env)
    assert noted.returncode == 0 and noted.stdout.strip().endswith(": sites.yaml")
    with session_scope(db_url) as s:
        rows = [r for r in audit_trail.rows(s) if r.action == "config.changed"]
    assert [r.actor for r in rows] == ["config-files", "config-files"]


def test_verify_catches_the_newest_rows_deleted_against_the_checkpoint(db_url):
    # Cutting the newest rows leaves a chain with no gap and every seal genuine: only the signed
    # head outside the database shows it.
    with session_scope(db_url) as s:
        for action in ("console.sign_in", "config.changed", "api_key.created"):
            audit_trail.record(s, action, "console", actor="maria.k")
    anchored = _cli("audit", "checkpoint", url=db_url)
    assert anchored.returncode == 0 and "head seq 3" in anchored.stdout, anchored.stderr
    assert _cli("audit", "verify", url=db_url).returncode == 0
    with session_scope(db_url) as s:
        s.execute(text("DELETE FROM audit_trail WHERE seq >= 2"))
    run = _cli("audit", "verify", url=db_url)
    assert run.returncode == 1
    assert "trail ends at seq 1" in run.stdout and "recorded seq 3 (newest rows deleted)" in run.stdout
    refused = _cli("audit", "checkpoint", url=db_url)
    assert refused.returncode == 1 and "head not recorded" in refused.stderr


def test_the_trail_grows_past_its_checkpoint_and_still_verifies(db_url):
    with session_scope(db_url) as s:
        audit_trail.record(s, "console.sign_in", "console", actor="maria.k")
    assert _cli("audit", "checkpoint", url=db_url).returncode == 0
    with session_scope(db_url) as s:
        audit_trail.record(s, "config.changed", "console", actor="maria.k")
    verified = _cli("audit", "verify", url=db_url)
    assert verified.returncode == 0 and "chain unbroken to seq 2" in verified.stdout
    with session_scope(db_url) as s:  # the checkpointed row rewritten with a fresh (unkeyed) seal
        s.execute(text("UPDATE audit_trail SET mac = '" + "1" * 64 + "' WHERE seq = 1"))
    run = _cli("audit", "verify", url=db_url)
    assert run.returncode == 1 and "audit row seq 1 is not the one the checkpoint" in run.stdout
