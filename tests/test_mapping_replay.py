"""Replay and diff end to end: archived payloads re-mapped with v2 correct the ledger, never edit it."""

import os
import subprocess
import sys
from datetime import UTC, datetime

from sqlalchemy import func, select

from cgthub import ledger, pipeline, quarantine
from cgthub.mapping import registry
from cgthub.mapping.replay import replay
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.test_mapping_engine import _crm

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _cli(*args, url):
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env)


def _ingest_v1(url):
    v1 = registry.get_mapper("crm", "enrollment", version=1)
    with session_scope(url) as s:
        for n, therapy in ((1, "KYM-CD19"), (2, "KYM-CD22"), (3, "KYM-BCMA")):
            pipeline.ingest(
                s, system="crm", kind="enrollment", channel="t", payload=_crm(n, therapy=therapy), mapper=v1
            )


def test_replay_with_v2_corrects_releases_and_is_idempotent(db_url):
    _ingest_v1(db_url)
    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(Order.therapy))) == ["CART-19", "CART-BCMA"]
        assert len(quarantine.list_entries(s)) == 1  # KYM-CD22 is unknown to v1
        report = replay(s, registry.get_mapper("crm", "enrollment", version=2))
    assert (report.payloads, report.corrected, report.unchanged, report.released) == (3, 1, 1, 1)
    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(Order.therapy))) == ["CART-19-KYM", "CART-22", "CART-BCMA"]
        correction = s.scalars(select(LedgerEntry).where(LedgerEntry.source_event_id == "enrol:CRM-00001@v2")).one()
        assert '"supersedes":"enrol:CRM-00001"' in correction.body
        assert (
            s.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_event_id == "enrol:CRM-00001")
            )
            == 1
        )
        assert quarantine.list_entries(s) == []
        assert ledger.verify(s) == (3, [])
        again = replay(s, registry.get_mapper("crm", "enrollment", version=2))
    assert (again.corrected, again.added, again.released, again.unchanged) == (0, 0, 0, 3)


def test_cli_diff_on_archived_payloads_and_replay(db_url):
    _ingest_v1(db_url)
    shown = _cli("mappings", "diff", "crm/enrollment", "v1", "v2", url=db_url)
    assert shown.returncode == 0, shown.stderr
    assert "3 archived payloads" in shown.stdout and "order.therapy" in shown.stdout
    assert "CART-19 -> CART-19-KYM" in shown.stdout
    replay_v2 = ("mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", "v2")
    refused = _cli(*replay_v2, url=db_url)  # the shipped markets pin v1: live ingest does not use v2
    assert refused.returncode == 1 and "pins crm/enrollment to v1" in refused.stderr
    run = _cli(*replay_v2, "--force", url=db_url)
    assert run.returncode == 0, run.stderr
    assert "1 corrected" in run.stdout and "1 quarantined payloads released" in run.stdout
    assert "0 corrected" in _cli(*replay_v2, "--force", url=db_url).stdout
    missing = _cli("mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", "v9", url=db_url)
    assert missing.returncode == 1 and "there is no version v9" in missing.stderr


def test_cli_validate_and_test_pass_for_shipped_mappings(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert _cli("mappings", "validate", url=url).returncode == 0
    tested = _cli("mappings", "test", url=url)
    assert tested.returncode == 0 and "FAIL" not in tested.stdout
