"""README, Development: "`make install` installs exactly `uv.lock` (...; it refuses a lock that no
longer matches `pyproject.toml`)" and "`make test` runs `ruff check` and the suite ... (three
workers)". What make would run (`make -n`, nothing run): the install exports the lock with
`--locked` (uv's refusal of a lock that no longer matches pyproject.toml) and installs only that
export; the test recipe's pytest has as many workers as README says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def _recipe(target: str) -> list[str]:
    shown = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.splitlines()


def test_make_install_installs_the_locked_export_only():
    lines = _recipe("install")
    export = next(line for line in lines if " export " in line)
    assert "--locked" in export and "-o .venv/requirements.lock.txt" in export
    installs = [line for line in lines if line.startswith("VIRTUAL_ENV=") and " pip install " in line]
    assert installs[0].endswith("-r .venv/requirements.lock.txt") and "--no-deps -e ." in installs[1]


def test_make_test_runs_as_many_workers_as_readme_says():
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"`make test` runs `ruff check` and the suite on SQLite and PostgreSQL \((\w+) workers\)", readme)
    assert said, "README's Development line about make test moved"
    pytest_line = next(line for line in _recipe("test") if " -m pytest " in line)
    workers = re.search(r"\s-n\s+(\d+)\b", pytest_line)
    assert workers and int(workers[1]) == WORDS[said[1]], (said[1], pytest_line)
