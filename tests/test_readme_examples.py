"""README's shell examples, each run as written against a fresh hub in a temporary folder.

Every line of every ```sh block is a command a reader may paste. Lines are run in order by bash
(cgthub from the project's venv first on PATH, the working folder a temporary one holding
`var/demo`, CGTHUB_VAR_DIR pointing there, so the default SQLite database, dev keys and files the
examples write stay in it), after `cgthub db upgrade` made the database. Each must exit 0.

A line is skipped, by rule, when it cannot run without something this test does not start:
  - it runs `make` (sets up the venv, runs the demo or the whole suite), `docker` or `airflow`;
  - it starts a server (`serve`, `listen`) or asks one (`curl`);
  - it is a synopsis, not an example: it holds a placeholder (`...`, `…`, `[optional]`, or an
    upper-case word such as ORDER or ID standing for a value the reader supplies).
`test_the_skip_rule_leaves_most_examples_running` keeps the rule from quietly skipping everything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
VENV_BIN = Path(sys.executable).parent
PASSWORD = "readme-example-passphrase-42"

_NEEDS_MORE = re.compile(r"(^|[\s;&|])(make|docker|airflow|curl)(\s|$)|\bcgthub\s+(\S+\s+)?(serve|listen)\b")
_PLACEHOLDER = re.compile(r"\.\.\.|…|\[|\b[A-Z]{2,}\b(?![-=_/])")


def _shell_lines() -> list[str]:
    """Each command line of README's ```sh blocks, its trailing comment dropped."""
    lines: list[str] = []
    in_block = False
    for raw in README.read_text(encoding="utf-8").splitlines():
        if raw.strip().startswith("```"):
            in_block = not in_block and raw.strip() == "```sh"
            continue
        if in_block:
            command = re.sub(r"\s+#.*$", "", raw).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def _skipped_because(line: str) -> str | None:
    if _NEEDS_MORE.search(line):
        return "needs make, docker, Airflow or a server"
    without_env = re.sub(r"\b[A-Z_]+=\S+\s*", "", line)  # CGTHUB_VAR_DIR=... is a setting, not a placeholder
    without_options = re.sub(r"(?<!\S)--?[\w-]+|\"[^\"]*\"", "", without_env)  # quoted text and option names
    if _PLACEHOLDER.search(without_options):
        return "a synopsis with a placeholder"
    return None


LINES = _shell_lines()
RUN = [line for line in LINES if _skipped_because(line) is None]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A temporary working folder with a migrated hub under var/demo, and the environment to run in."""
    folder = tmp_path_factory.mktemp("readme")
    var = folder / "var" / "demo"
    var.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    env |= {"CGTHUB_VAR_DIR": str(var), "CGTHUB_ENV": "dev", "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}"}
    upgraded = subprocess.run(
        [str(VENV_BIN / "cgthub"), "db", "upgrade"], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert upgraded.returncode == 0, upgraded.stderr
    (folder / ".venv").symlink_to(VENV_BIN.parent)  # README writes `.venv/bin/cgthub`
    return folder, env


@pytest.mark.parametrize("line", RUN)
def test_readme_example_runs(hub: tuple[Path, dict[str, str]], line: str) -> None:
    folder, env = hub
    done = subprocess.run(
        ["bash", "-c", f"set -eo pipefail; {line}"],
        cwd=folder,
        env=env,
        input=f"{PASSWORD}\n{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{line}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stderr


def test_the_skip_rule_leaves_most_examples_running() -> None:
    skipped = {line: _skipped_because(line) for line in LINES if _skipped_because(line)}
    assert len(RUN) >= 9, skipped
    assert any(line.startswith("make demo") for line in skipped)
    assert any("api serve" in line for line in skipped)
