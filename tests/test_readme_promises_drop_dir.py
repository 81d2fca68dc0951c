"""README, Configuration: "`CGTHUB_CMO_DROP_DIR` (default `$CGTHUB_VAR_DIR/drop/cmo`): where the CMO's
CSV batch records arrive". The CMO batch pull as its ingest DAG runs it (no folder passed: the
setting decides), on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from cgthub import ledger, settings
from cgthub.store import session_scope
from cgthub.tables import Order
from connectors.cmo import batch
from tests.factories import happy_path

EXPORT = Path(__file__).resolve().parent.parent / "mappings/cmo/batch_record/fixtures/nightly_export.csv"


def test_the_cmo_batch_pull_reads_the_folder_cgthub_cmo_drop_dir_names(db_url, tmp_path, monkeypatch):
    with session_scope(db_url) as session:
        ledger.append_many(session, happy_path(2)[:3])  # CRM-00002 enrolled and collected
    default = tmp_path / "var" / "drop" / "cmo"
    default.mkdir(parents=True)
    shutil.copy(EXPORT, default / "in-default.csv")
    drop = tmp_path / "sftp" / "cmo"
    drop.mkdir(parents=True)
    shutil.copy(EXPORT, drop / "export1.csv")
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CGTHUB_CMO_DROP_DIR", str(drop))
    settings.get_settings.cache_clear()

    report = batch.pull()
    assert report.appended >= 1 and report.errors == []
    assert [p.name for p in (drop / "done").iterdir()] == ["export1.csv"]
    assert (default / "in-default.csv").exists()  # the default folder is not read when the variable is set
    with session_scope(db_url) as session:
        assert session.scalars(select(Order.status)).one() == "released"

    monkeypatch.delenv("CGTHUB_CMO_DROP_DIR")
    settings.get_settings.cache_clear()
    assert batch.pull().payloads >= 1  # unset: $CGTHUB_VAR_DIR/drop/cmo
    assert [p.name for p in (default / "done").iterdir()] == ["in-default.csv"]
