"""README, "Two commands": what `make test` runs, and what becomes of its PostgreSQL half when the
server is not there.

- `make test` runs ruff and the whole suite (read from `make -n test`, the recipe make would run),
  and installs Debian's chromium and docker-compose with apt-get where missing, only as root;
- without PostgreSQL at the configured address the PostgreSQL half of a database test is skipped
  and its SQLite half still runs, except under `CI=true`, where the PostgreSQL half fails: a pytest
  run in a subprocess, on a test using the `db_url` fixture, with the server's address pointing at
  a closed port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_make_test_runs_ruff_and_the_whole_suite_and_installs_debian_tools_only_as_root() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    recipe = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert recipe.returncode == 0, recipe.stderr
    lines = recipe.stdout.splitlines()
    assert any(re.fullmatch(r"\S*ruff check \.", line) for line in lines), recipe.stdout
    pytest_line = next(line for line in lines if " -m pytest " in line)
    assert "tests/" not in pytest_line and " -k " not in pytest_line  # the whole suite, not a part
    apt = recipe.stdout[recipe.stdout.index("missing=") :]
    assert 'missing="chromium"' in apt and "docker-compose" in apt
    assert '[ "$(id -u)" = 0 ]' in apt and "apt-get" in apt and "install" in apt


_DATABASE_TEST = """
def test_a_database(db_url):
    assert db_url
"""


def _run_with_postgres_down(tmp_path: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_backends.py").write_text(_DATABASE_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CGTHUB_", "AIRFLOW")) and k != "CI"}
    env |= {"PYTHONPATH": str(ROOT), "CGTHUB_TEST_PG_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", "test_backends.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_postgresql_its_half_is_skipped_and_sqlite_still_runs(tmp_path: Path) -> None:
    done = _run_with_postgres_down(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert "PostgreSQL not reachable" in done.stdout


def test_under_ci_true_a_missing_postgresql_fails_the_run(tmp_path: Path) -> None:
    done = _run_with_postgres_down(tmp_path, ci=True)
    assert done.returncode != 0, done.stdout
    assert "1 passed" in done.stdout and "1 error" in done.stdout, done.stdout
    assert "PostgreSQL at 127.0.0.1:5432 is required under CI=true" in done.stdout
