"""Bad input as a new integration engineer types it, through the installed CLI in a process of its
own: each is refused with a non-zero exit, one error line naming the thing (and a line saying what
to do), no traceback, and nothing created or changed."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cgthub.api.tables import ApiKey
from cgthub.store import session_scope

_GOOD_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
_HL7 = b"MSH|^~\\&|EPIC|US-SITE-1|CGTHUB|HUB|20260303112005||ORM^O01^ORM_O01|C-1|P|2.5.1\rPID|1||X\r"


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    named: tuple[str, ...]  # words the error line must hold: the thing and what is wrong with it
    env: dict[str, str] = field(default_factory=dict)


def _run(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    environment |= {"COLUMNS": "200", "CGTHUB_VAR_DIR": str(cwd / "var"), **env}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=120,
    )


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _refused_clearly(run: subprocess.CompletedProcess[str], named: tuple[str, ...]) -> None:
    assert run.returncode != 0, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    assert len(errors) == 1, run.stderr  # one line says what is wrong
    assert len(lines) <= 4, run.stderr  # (a usage error adds its usage and --help lines)
    for word in named:
        assert word in errors[0], (word, run.stderr)


def _hl7_file(folder: Path) -> Path:
    path = folder / "drop" / "order.hl7"
    path.parent.mkdir()
    path.write_bytes(_HL7)
    return path


# No database is needed to refuse these: each runs in an empty folder that must stay as it is.
WITHOUT_DATABASE = [
    Case(
        "missing SQLite database",
        ("orders", "list"),
        ("does not exist",),
        {"CGTHUB_DATABASE_URL": "sqlite:///{tmp}/nonexistent/dir/x.db"},
    ),
    Case(
        "upgrade into a missing directory",
        ("db", "upgrade"),
        ("directory", "does not exist"),
        {"CGTHUB_DATABASE_URL": "sqlite:///{tmp}/nonexistent/dir/x.db"},
    ),
    Case(
        "nonsense database URL", ("orders", "list"), ("not a database URL",), {"CGTHUB_DATABASE_URL": "localhost/hub"}
    ),
    Case(
        "key that is not base64",
        ("hl7", "ingest", "{tmp}/drop/order.hl7"),
        ("CGTHUB_PSEUDONYM_KEY is not valid: must be 32 bytes, url-safe base64",),
        {"CGTHUB_PSEUDONYM_KEY": "abc"},
    ),
    Case(
        "key of 4 bytes",
        ("hl7", "ingest", "{tmp}/drop/order.hl7"),
        ("CGTHUB_ARCHIVE_KEY is not valid",),
        {"CGTHUB_PSEUDONYM_KEY": _GOOD_KEY, "CGTHUB_ARCHIVE_KEY": base64.urlsafe_b64encode(b"four").decode()},
    ),
    Case("unknown environment", ("orders", "list"), ("CGTHUB_ENV is not valid", "production"), {"CGTHUB_ENV": "prod"}),
    Case(
        "flag that is no boolean",
        ("mappings", "list"),
        ("CGTHUB_MAPPING_FASTPATH",),
        {"CGTHUB_MAPPING_FASTPATH": "maybe"},
    ),
    Case(
        "production without keys", ("orders", "list"), ("CGTHUB_PSEUDONYM_KEY", "not set"), {"CGTHUB_ENV": "production"}
    ),
    Case("wrong option", ("orders", "list", "--colour", "red"), ("--colour",)),
    Case("missing file", ("hl7", "ingest", "{tmp}/drop/missing.hl7"), ("missing.hl7", "does not exist")),
    Case("empty folder", ("hl7", "ingest", "{tmp}/empty"), ("no files", "empty")),
]


@pytest.mark.parametrize("case", WITHOUT_DATABASE, ids=lambda case: case.name)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case: Case, tmp_path: Path) -> None:
    _hl7_file(tmp_path)
    (tmp_path / "empty").mkdir()
    before = _tree(tmp_path)
    fill = {"tmp": str(tmp_path)}
    run = _run(tuple(a.format(**fill) for a in case.args), {k: v.format(**fill) for k, v in case.env.items()}, tmp_path)
    _refused_clearly(run, case.named)
    assert _tree(tmp_path) == before  # no database, directory, key file or receipt was made


# These need the hub's database; each must leave it as it was.
WITH_DATABASE = [
    Case("unknown order", ("orders", "show", "ORD-NOPE"), ("ORD-NOPE",)),
    Case("unknown quarantine entry", ("quarantine", "show", "987654"), ("987654",)),
    Case(
        "key for a site nobody knows",
        ("api", "keys", "create", "--name", "x", "--scope", "status:read", "--site", "US-SITE-9"),
        ("US-SITE-9", "US-SITE-1"),
    ),
    Case("unknown mapping version", ("mappings", "diff", "crm/enrollment", "v9"), ("v9",)),
]


@pytest.mark.parametrize("case", WITH_DATABASE, ids=lambda case: case.name)
def test_bad_input_against_the_hub_database_is_refused_and_changes_nothing(
    case: Case, db_url: str, tmp_path: Path
) -> None:
    run = _run(case.args, {"CGTHUB_DATABASE_URL": db_url}, tmp_path)
    _refused_clearly(run, case.named)
    with session_scope(db_url, readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0
    assert not (tmp_path / "var").exists()


def test_a_command_that_needs_no_key_works_with_a_bad_one(db_url: str, tmp_path: Path) -> None:
    run = _run(("orders", "list"), {"CGTHUB_DATABASE_URL": db_url, "CGTHUB_PSEUDONYM_KEY": "abc"}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "0 orders" in run.stdout
