"""README, Configuration: "A bad value is named by its variable in one line, never echoed", and
`CGTHUB_ENV` outside `dev`: "every command stops at startup naming each missing key, instead of
making dev keys". Driven through the `cgthub` command as an operator runs it. SQLite only: each
refusal comes before the database is read (and the suite's time is counted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgthub import store

# A value someone might paste by mistake: were it echoed, it would land in a terminal or a CI log.
SECRET_LOOKING = "hunter2-NOT-A-KEY-7f3a9c"
KEYS = ("CGTHUB_PSEUDONYM_KEY", "CGTHUB_ARCHIVE_KEY", "CGTHUB_LEDGER_KEY")
ORM = Path(__file__).resolve().parent.parent / "mappings/hl7/ORM_O01/fixtures/new_apheresis.hl7"


@pytest.fixture
def hub_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    store.upgrade(url)
    return url


def _cgthub(*args: str, var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (*KEYS, "CGTHUB_ENV")}
    base.update({"CGTHUB_VAR_DIR": str(var_dir), **env})
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=base, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "command"),
    [
        ("CGTHUB_ARCHIVE_KEY", ("hl7", "ingest")),  # archiving encrypts: the key is needed
        ("CGTHUB_LEDGER_KEY", ("ledger", "verify")),
        ("CGTHUB_ENV", ("orders", "list")),
    ],
)
def test_a_bad_value_is_named_by_its_variable_in_one_line_and_never_echoed(hub_url, tmp_path, variable, command):
    if command[0] == "hl7":
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / "one.hl7").write_bytes(ORM.read_bytes())
        command = (*command, str(inbox / "one.hl7"))
    run = _cgthub(*command, var_dir=tmp_path / "var", CGTHUB_DATABASE_URL=hub_url, **{variable: SECRET_LOOKING})
    said = run.stdout + run.stderr
    assert run.returncode == 1, said
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {variable} is not valid"), run.stderr
    assert SECRET_LOOKING not in said and "hunter2" not in said
    assert "Traceback" not in said


def test_outside_dev_every_command_stops_naming_each_missing_key_and_makes_none(hub_url, tmp_path):
    var_dir = tmp_path / "var"
    for command in (("orders", "list"), ("sites", "list")):  # one reads the database, one only config/
        run = _cgthub(*command, var_dir=var_dir, CGTHUB_DATABASE_URL=hub_url, CGTHUB_ENV="production")
        assert run.returncode == 1, run.stdout + run.stderr
        assert all(key in run.stderr for key in KEYS), run.stderr
        assert "Traceback" not in run.stderr and run.stdout == ""
    assert not var_dir.exists() or not any(var_dir.rglob("*.key"))  # no dev key was made


def test_a_database_password_is_masked_when_the_database_cannot_be_opened(tmp_path):
    url = f"postgresql://cgthub:{SECRET_LOOKING}@127.0.0.1:1/nowhere"
    run = _cgthub("orders", "list", var_dir=tmp_path / "var", CGTHUB_DATABASE_URL=url)
    assert run.returncode == 1 and "CGTHUB_DATABASE_URL" in run.stderr
    assert SECRET_LOOKING not in run.stdout + run.stderr and "Traceback" not in run.stderr
