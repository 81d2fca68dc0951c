"""README, "Markets: one baseline, market variants": its four `cgthub markets` lines run as written,
by the installed command in a subprocess, on a copy of config/ (CGTHUB_CONFIG_DIR), in README's order.

test_readme_examples skips `markets show DE` and `markets new FR --like DE` (their market codes read
as placeholders) and runs `markets check` only on a repo where every market runs; test_markets_baseline
drives them in-process and reads "exit 1" as any non-zero code. Here:
- `markets list` names each market and the files it resolves through;
- `markets show DE` gives every resolved value with the file:line it came from;
- `markets new FR --like DE` writes config/markets/FR.yaml, `extends: DE` and a checklist;
- `markets check` then exits 1 naming what stops FR (no site of it in config/sites.yaml), and exits
  0 once the README's FR file and one site line are in place.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cgthub.settings import PROJECT_ROOT

CGTHUB = str(Path(sys.executable).parent / "cgthub")
README_FR = PROJECT_ROOT / "README.md"


def _markets(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_CONFIG")}
    env |= {"CGTHUB_CONFIG_DIR": str(config), "COLUMNS": "200"}
    return subprocess.run([CGTHUB, "markets", *args], capture_output=True, text=True, env=env, timeout=120)


def _readme_fr_yaml() -> str:
    text = README_FR.read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(market: FR\n.*?)```", text, flags=re.DOTALL)
    return block


def test_the_readme_markets_commands_run_as_written(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)

    listed = _markets(config, "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"DE\b.*baseline\.yaml.*DE\.yaml", listed.stdout), listed.stdout

    shown = _markets(config, "show", "DE")
    assert shown.returncode == 0, shown.stderr
    values = [line for line in shown.stdout.splitlines() if " = " in line]
    assert values and all(re.search(r"(baseline|DE)\.yaml:\d+$", line) for line in values), shown.stdout

    made = _markets(config, "new", "FR", "--like", "DE")
    assert made.returncode == 0, made.stderr
    written = (config / "markets" / "FR.yaml").read_text()
    assert "extends: DE" in written and "[ ]" in written and "[ ] sites:" in made.stdout
    assert not (PROJECT_ROOT / "config" / "markets" / "FR.yaml").exists()  # the copy, not the repo

    stopped = _markets(config, "check")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "lists no site of market FR" in stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr

    (config / "markets" / "FR.yaml").write_text(_readme_fr_yaml())
    sites = config / "sites.yaml"
    site = "  FR-PAR-01: {market: FR, cmo: CMO-LEI, facilities: [FR-PAR-01], therapies: [CART-19]}\n"
    sites.write_text(sites.read_text().replace("\nsites:\n", "\nsites:\n" + site, 1))
    passed = _markets(config, "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "FR: ok" in passed.stdout
