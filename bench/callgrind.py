"""Instructions a command executes, counted by valgrind's callgrind: the figure that does not move
with this VM's speed (two to three times from session to session), for the *_instructions benches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def instructions(argv: list[str], tree: Path) -> int:
    """Instructions `argv` executes under callgrind, run in `tree` with it on PYTHONPATH."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))
