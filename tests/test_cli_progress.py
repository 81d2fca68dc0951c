"""Long CLI work shows a progress bar on a terminal's stderr and ends with one summary line with its pace."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
import threading

from tests.test_mapping_replay import _ingest_v1

REPLAY_V2 = ("mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", "v2", "--force")


def _replay(url: str, *, terminal: bool) -> subprocess.CompletedProcess[str]:
    """Run a replay with stdout piped, and stderr on a pseudo-terminal when `terminal` (as a person runs it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TERM")}
    env |= {"CGTHUB_DATABASE_URL": url, "COLUMNS": "160", "TERM": "xterm"}
    command = [sys.executable, "-m", "cgthub.cli", *REPLAY_V2]
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    leader, follower = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the child closes its side
            while chunk := os.read(leader, 4096):
                seen.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=follower, text=True, env=env, timeout=120)
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(leader)
    return subprocess.CompletedProcess(command, done.returncode, done.stdout, seen.decode(errors="replace"))


def test_replay_shows_a_bar_with_counts_and_rate_on_a_terminal(db_url: str) -> None:
    _ingest_v1(db_url)
    run = _replay(db_url, terminal=True)
    assert run.returncode == 0, run.stderr
    assert "replaying crm/enrollment with v2" in run.stderr
    assert "3/3" in run.stderr and "3 payloads," in run.stderr and "/s" in run.stderr
    assert "replaying crm/enrollment" not in run.stdout  # the bar never mixes into the summary
    summary = [line for line in run.stdout.splitlines() if line.startswith("replayed 3 payloads")]
    assert len(summary) == 1 and summary[0].endswith("payloads/s)")


def test_replay_piped_prints_the_summary_alone(db_url: str) -> None:
    _ingest_v1(db_url)
    run = _replay(db_url, terminal=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[-1].startswith("replayed 3 payloads") and " s (" in lines[-1] and lines[-1].endswith("payloads/s)")
