"""README, Mappings: "`cgthub mappings list` shows every version". The command as an operator runs
it, on a copy of the shipped mappings with one version added: each `mappings/<system>/<kind>/v<N>.yaml`
is one row (system, kind, vN, its effective date), the added one too. No database is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml

from cgthub.settings import PROJECT_ROOT


def test_mappings_list_shows_every_version_on_disk(tmp_path):
    root = tmp_path / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", root)
    enrollment = root / "crm" / "enrollment"
    newest = max(int(p.stem[1:]) for p in enrollment.glob("v*.yaml"))
    text = (enrollment / f"v{newest}.yaml").read_text()
    added = text.replace(f"version: {newest}", f"version: {newest + 1}", 1)
    (enrollment / f"v{newest + 1}.yaml").write_text(added.replace("effective:", "effective: 2999-01-01 #", 1))

    env = {
        **os.environ,
        "CGTHUB_MAPPINGS_DIR": str(root),
        "CGTHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'not-made.db'}",
        "COLUMNS": "400",
    }
    run = subprocess.run(
        [sys.executable, "-m", "cgthub.cli", "mappings", "list"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    cells = [[c.strip() for c in line.split("│")[1:5]] for line in run.stdout.splitlines() if line.startswith("│ ")]
    listed = {(s, k, v, e) for s, k, v, e in cells if s}
    on_disk = set()
    for path in root.glob("*/*/v*.yaml"):
        spec = yaml.safe_load(path.read_text())
        on_disk.add((path.parts[-3], spec["kind"], f"v{spec['version']}", str(spec["effective"])))
    assert listed == on_disk and len(on_disk) >= 20
    assert ("crm", "enrollment", f"v{newest + 1}", "2999-01-01") in listed
