"""README, Markets and sites: "`cgthub sites list` shows it and exits 1 on a bad file; errors name the
file and line. The file is read again when it changes, no restart needed" (within a second: the
registry looks at the file's change time once a second at most). The CLI as an operator
runs it, and a running MLLP listener (applying, as `cgthub hl7 listen` runs) that is not restarted
and whose registry cache nobody clears, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from tests.test_hl7_listener import Running, exchange
from tests.test_residency_live import US_POSTAL, _crm_record, _enrol_through_crm, _orders
from tests.test_residency_live import _orm as _site_orm
from tests.test_sites import config_dir  # noqa: F401  (a copy of config/ the test may edit)


def _sites_list(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_CONFIG_DIR": str(config), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", "sites", "list"], capture_output=True, text=True, env=env, timeout=60
    )


def test_sites_list_shows_the_registry_and_exits_1_naming_file_and_line_of_a_bad_one(config_dir):  # noqa: F811
    shown = _sites_list(config_dir)
    assert shown.returncode == 0 and "US-BOS-01" in shown.stdout, shown.stderr
    path = config_dir / "sites.yaml"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "market: US")
    lines[at] = lines[at].replace("market: US", "market: United States")
    path.write_text("\n".join(lines) + "\n")
    refused = _sites_list(config_dir)
    assert refused.returncode == 1
    assert f"sites.yaml:{at + 1}" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_a_running_listener_reads_the_changed_registry_without_a_restart(db_url, monkeypatch, config_dir):  # noqa: F811
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(1, "US-BOS-01", "US", US_POSTAL)])
    before = _site_orm(1, "US-BOS-09", crm="CRM-00001", placer="PL-NEW-1", control="NEW1")
    after = _site_orm(1, "US-BOS-09", crm="CRM-00001", placer="PL-NEW-2", control="NEW2")
    path = config_dir / "sites.yaml"
    with Running(db_url) as running:
        (refused,) = exchange(running.port, frame(before), 1)
        text = path.read_text()
        assert "facilities: [US-BOS-01]" in text
        path.write_text(text.replace("facilities: [US-BOS-01]", "facilities: [US-BOS-01, US-BOS-09]", 1))
        later = time.time() + 2
        os.utime(path, (later, later))  # a changed file, whatever the file system's mtime resolution
        time.sleep(1.1)  # sites.registry() looks at the file's change time once a second at most
        (taken,) = exchange(running.port, frame(after), 1)
    assert ack_code(refused) == "AE" and b"103" in refused  # an unknown sender: stage route
    assert ack_code(taken) == "AA", taken
    assert _orders(db_url)["CRM-00001"].status == "apheresis_scheduled"
