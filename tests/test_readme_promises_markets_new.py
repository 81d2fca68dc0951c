"""README, Markets: `cgthub markets new FR --like DE` writes the market where the running hub reads
markets from, says where, and never writes over a market that exists.

The installed `cgthub` runs in a subprocess from a working folder outside the repository, its
configuration directory a copy of config/ elsewhere (CGTHUB_CONFIG_DIR), as a hub deployed from the
package with its own configuration runs it:
- the file lands in that directory's markets/, not in the repository's config/ nor the working folder,
  and the command prints its full path; `markets show FR` (the hub's reader) then resolves it;
- the checklist names that directory's sites.yaml, the file the hub reads sites from;
- a second `markets new FR`, or one for a market saved as `fr.yaml`, exits 2 naming the file and
  leaves it byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cgthub.settings import PROJECT_ROOT

CGTHUB = str(Path(sys.executable).parent / "cgthub")


def _markets(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_CONFIG")}
    env |= {"CGTHUB_CONFIG_DIR": str(config), "COLUMNS": "200"}
    return subprocess.run([CGTHUB, "markets", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_markets_new_writes_into_the_configuration_the_hub_reads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = tmp_path / "hub-config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    written = config / "markets" / "FR.yaml"

    made = _markets(config, elsewhere, "new", "FR", "--like", "DE")
    assert made.returncode == 0, made.stderr
    assert f"wrote {written} (extends DE)" in made.stdout, made.stdout
    assert "extends: DE" in written.read_text()
    assert f"to {config / 'sites.yaml'} with `market: FR`" in made.stdout, made.stdout
    assert not (PROJECT_ROOT / "config" / "markets" / "FR.yaml").exists()
    assert list(elsewhere.iterdir()) == []

    shown = _markets(config, elsewhere, "show", "FR")
    assert shown.returncode == 0, shown.stderr
    assert "market FR: baseline.yaml -> DE.yaml -> FR.yaml" in shown.stdout, shown.stdout

    decided = written.read_text() + "language: fr\n"
    written.write_text(decided)
    again = _markets(config, elsewhere, "new", "FR", "--like", "US")
    assert again.returncode == 2, (again.returncode, again.stdout, again.stderr)
    message = " ".join(again.stderr.split())
    assert f"market FR exists already: {written} (left as it is)" in message, again.stderr
    assert "Traceback" not in again.stderr
    assert written.read_text() == decided

    saved_lower = config / "markets" / "it.yaml"
    saved_lower.write_text("market: IT\nextends: DE\n")
    lower = _markets(config, elsewhere, "new", "IT", "--like", "US")
    assert lower.returncode == 2, (lower.returncode, lower.stdout, lower.stderr)
    assert not (config / "markets" / "IT.yaml").exists()
    assert saved_lower.read_text() == "market: IT\nextends: DE\n"
