"""README's promises about the `cgthub` command itself, run as a user runs it (the installed
`cgthub` script, in a subprocess):

- How data flows, the CLI row: the commands it lists are the commands `cgthub --help` lists, no
  more and no fewer, and each answers `--help`;
- What a sender is told: `cgthub hl7 listen --help` lists the bounds on what a sender can make it
  hold (connections, frame deadline, idle time, buffered bytes) and `--metrics-port`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CGTHUB = str(Path(sys.executable).parent / "cgthub")


def _help(*command: str) -> str:
    done = subprocess.run(
        [CGTHUB, *command, "--help"], capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _readme_cli_row() -> list[str]:
    (row,) = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| CLI |")]
    listed = row.split("|")[3]
    return re.findall(r"`(?:cgthub )?([a-z0-9-]+)`", listed.split("(each with")[0])


def test_the_readme_cli_row_lists_every_command_and_each_answers_help() -> None:
    shown = _help()
    commands = re.findall(r"^  ([a-z0-9-]+)\s{2,}", shown.split("Commands:", 1)[1], flags=re.MULTILINE)
    assert len(commands) > 10, shown
    assert sorted(_readme_cli_row()) == sorted(commands)
    for command in commands:
        assert "Usage: cgthub " + command in _help(command)


def test_hl7_listen_help_lists_the_bounds_on_what_a_sender_can_make_it_hold() -> None:
    shown = _help("hl7", "listen")
    for option in ("--max-connections", "--frame-timeout", "--idle-timeout", "--max-buffered-bytes", "--metrics-port"):
        assert option in shown, option
