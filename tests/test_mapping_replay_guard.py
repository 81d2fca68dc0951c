"""`cgthub mappings replay` replays only what live ingest would use, can dry-run, and counts what it did.

Live ingest maps with a market's pinned version, else the newest version already effective; a
replay with another version would rewrite the ledger with a mapping no new payload gets, so the
CLI refuses it unless forced. Every case runs through the CLI entry point on both databases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cgthub import pipeline, quarantine
from cgthub.mapping import registry
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.test_mapping_engine import _crm


@pytest.fixture
def config_dirs(tmp_path: Path) -> dict[str, str]:
    """crm/enrollment v1 and v2 with v2 effective only in 2999; DE pins v1, US pins nothing."""
    mappings = tmp_path / "mappings" / "crm" / "enrollment"
    shutil.copytree(PROJECT_ROOT / "mappings" / "crm" / "enrollment", mappings)
    v2 = mappings / "v2.yaml"
    lines = v2.read_text().splitlines()
    v2.write_text("\n".join("effective: 2999-01-01" if line.startswith("effective:") else line for line in lines))
    markets = tmp_path / "config" / "markets"
    markets.mkdir(parents=True)
    (markets / "DE.yaml").write_text("market: DE\nmappings:\n  crm/enrollment: 1\n")
    (markets / "US.yaml").write_text("market: US\nmappings: {}\n")
    shutil.copy(PROJECT_ROOT / "config" / "sites.yaml", tmp_path / "config")  # a replay judges each site by it
    return {"CGTHUB_MAPPINGS_DIR": str(tmp_path / "mappings"), "CGTHUB_CONFIG_DIR": str(tmp_path / "config")}


def _replay(url: str, dirs: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **dirs, "CGTHUB_DATABASE_URL": url, "COLUMNS": "400"}
    argv = [sys.executable, "-m", "cgthub.cli", "mappings", "replay", "--system", "crm", "--kind", "enrollment"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=env, timeout=120)


def _ingest_with_v1(url: str) -> None:
    """Three enrolments (KYM-CD22 is unknown to v1: quarantined) and CRM-00001's whole record sent again."""
    v1 = registry.get_mapper("crm", "enrollment", version=1)
    resent = json.loads(_crm(1))
    resent["modifiedAt"] = "2026-03-02T10:00:00"
    with session_scope(url) as s:
        for payload in (_crm(1), _crm(2, therapy="KYM-CD22"), _crm(3), json.dumps(resent).encode()):
            pipeline.ingest(s, system="crm", kind="enrollment", channel="t", payload=payload, mapper=v1)


def _ledger_state(url: str) -> tuple[int, list[str | None], int]:
    with session_scope(url) as s:
        entries = s.scalar(select(func.count()).select_from(LedgerEntry))
        therapies = sorted(s.scalars(select(Order.therapy)), key=str)
        return entries, therapies, len(quarantine.list_entries(s))


def test_a_version_not_yet_effective_is_refused_unless_forced(db_url, config_dirs):
    _ingest_with_v1(db_url)
    before = _ledger_state(db_url)
    refused = _replay(db_url, config_dirs, "--version", "v2", "--market", "US")
    assert refused.returncode == 1
    assert "v2 takes effect on 2999-01-01" in refused.stderr and "--force" in refused.stderr
    assert _ledger_state(db_url) == before
    forced = _replay(db_url, config_dirs, "--version", "v2", "--market", "US", "--force")
    assert forced.returncode == 0, forced.stderr
    # v2 maps KYM-CD19 to CART-19-KYM: CRM-00001 and CRM-00003 corrected, CRM-00002 now maps.
    assert "forced:" in forced.stdout and "2 corrected, 1 added" in forced.stdout
    assert "1 quarantined payloads released" in forced.stdout
    assert _ledger_state(db_url) != before


def test_a_version_the_market_pins_otherwise_is_refused(db_url, config_dirs):
    _ingest_with_v1(db_url)
    before = _ledger_state(db_url)
    for market_args in (["--market", "DE"], []):  # no market: every market's pin counts
        refused = _replay(db_url, config_dirs, "--version", "v2", *market_args)
        assert refused.returncode == 1, refused.stdout
        assert "market DE pins crm/enrollment to v1" in refused.stderr
    assert _ledger_state(db_url) == before
    pinned = _replay(db_url, config_dirs, "--version", "v1", "--market", "DE")
    assert pinned.returncode == 0, pinned.stderr


def test_dry_run_reports_what_a_replay_would_do_and_writes_nothing(db_url, config_dirs):
    _ingest_with_v1(db_url)
    before = _ledger_state(db_url)
    dry = _replay(db_url, config_dirs, "--version", "v2", "--market", "US", "--force", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing written" in dry.stdout
    assert "correct 2, add 1" in dry.stdout and "release 1 quarantined payloads" in dry.stdout
    assert _ledger_state(db_url) == before
    real = _replay(db_url, config_dirs, "--version", "v2", "--market", "US", "--force")
    assert "2 corrected, 1 added" in real.stdout and "1 quarantined payloads released" in real.stdout


def test_a_rerun_reports_nothing_added_when_the_ledger_already_holds_every_event(db_url, config_dirs):
    _ingest_with_v1(db_url)
    before = _ledger_state(db_url)
    for _ in range(2):
        run = _replay(db_url, config_dirs, "--version", "v1", "--market", "DE")
        assert run.returncode == 0, run.stderr
        # The resent record maps to CRM-00001's enrolment, which the ledger holds from the first payload.
        assert " 0 added" in run.stdout and "1 already in the ledger from another payload" in run.stdout
        assert _ledger_state(db_url) == before
