"""Drop folders against careless and hostile writers (cgthub.drop_folder), through each reader as
deployed: `cgthub hl7 ingest` as a subprocess, the ingest DAG's `partner_sync.pull` for the inbox
folders, `connectors.cmo.batch.pull` for the CMO's CSV drop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cgthub import canonical_feed, ledger, partner_sync, pipeline
from cgthub.hl7.files import ingest_paths
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from connectors.cmo import batch
from connectors.hospital import simulator
from tests.factories import enrolment, happy_path

HEADER = "batch_id,order_reference,coi_id,din,lot,step,step_time,result\n"
ROW = "B26-0002,CRM-00002,,,,MFG_START,2026-03-12 08:00:00,PASS\n"
PASSWD = Path("/etc/passwd")


def _aged(path: Path, seconds: float = 600) -> Path:
    """As if the sender finished writing it `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _hl7_file(path: Path, patients: range) -> Path:
    return _aged(simulator.write_batch_file(path, list(simulator.feed(patients))))


def _count(url: str, table: type) -> int:
    with session_scope(url, readonly=True) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def _hl7_ingest(url: str, *paths: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CGTHUB_DATABASE_URL": url, "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", "hl7", "ingest", *map(str, paths)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,  # a FIFO opened for reading would block here for ever
    )


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[Callable[[Path, str], list[str]]]:
    """Builds a folder's hostile entries: symlinks (a file the hub can read, a file elsewhere, a
    folder), a FIFO, a socket, a device node and a directory, each named like a drop."""
    sockets: list[socket.socket] = []

    def make(folder: Path, suffix: str) -> list[str]:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        secret = elsewhere / f"secret{suffix}"
        secret.write_text(HEADER + ROW if suffix == ".csv" else '[{"not": "yours"}]')
        _aged(secret)
        (folder / f"passwd{suffix}").symlink_to(PASSWD)
        (folder / f"secret{suffix}").symlink_to(secret)
        (folder / f"folder{suffix}").symlink_to(elsewhere, target_is_directory=True)
        os.mkfifo(folder / f"pipe{suffix}")
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(str(folder / f"sock{suffix}"))
        sockets.append(unix)
        names = [f"passwd{suffix}", f"secret{suffix}", f"folder{suffix}", f"pipe{suffix}", f"sock{suffix}"]
        if os.geteuid() == 0:
            os.mknod(folder / f"null{suffix}", 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
            names.append(f"null{suffix}")
        (folder / f"dir{suffix}").mkdir()
        names.append(f"dir{suffix}")
        return names

    yield make
    for unix in sockets:
        unix.close()


def _left_alone(folder: Path, names: list[str], report: str) -> None:
    for name in names:
        assert os.path.lexists(folder / name), name  # nothing moved or deleted
        assert f"{name}: " in report, name
    assert PASSWD.exists() and PASSWD.stat().st_size > 0


def test_drop_folder_defaults_are_a_few_seconds_and_256_mib(monkeypatch: pytest.MonkeyPatch):
    from cgthub.settings import get_settings

    monkeypatch.delenv("CGTHUB_DROP_MIN_AGE_SECONDS", raising=False)
    monkeypatch.delenv("CGTHUB_DROP_MAX_FILE_BYTES", raising=False)
    assert (get_settings().drop_min_age_seconds, get_settings().drop_max_file_bytes) == (3, 256 * 1024 * 1024)


# --- `cgthub hl7 ingest` (subprocess) ----------------------------------------------------------


def test_hl7_ingest_leaves_a_file_younger_than_the_minimum_age_and_temporary_names(db_url: str, tmp_path: Path):
    drop = tmp_path / "drop"
    drop.mkdir()
    _hl7_file(drop / "finished.hl7", range(1, 2))
    young = simulator.write_batch_file(drop / "writing.hl7", list(simulator.feed(range(2, 3))))
    partial = _hl7_file(drop / "upload.hl7.part", range(3, 4))
    temporaries = [_hl7_file(drop / name, range(3, 4)) for name in (".upload.hl7", "feed.hl7~", "feed.hl7.tmp")]

    run = _hl7_ingest(db_url, drop, CGTHUB_DROP_MIN_AGE_SECONDS="60")

    assert run.returncode == 0, run.stderr
    assert "1 file, 3 messages" in run.stdout
    assert "not ingested: writing.hl7: written " in run.stdout
    assert "s ago, younger than CGTHUB_DROP_MIN_AGE_SECONDS=60: left for the next run" in run.stdout
    assert young.exists() and partial.exists() and not (drop / "finished.hl7").exists()
    assert all(path.exists() for path in temporaries)
    assert "upload.hl7.part" not in run.stdout  # a temporary name is not a drop: silent
    assert _count(db_url, RawMessage) == 3  # only the finished file's messages


def test_hl7_ingest_never_follows_a_symlink_nor_opens_a_fifo_socket_device_or_directory(
    db_url: str, tmp_path: Path, specials
):
    drop = tmp_path / "drop"
    drop.mkdir()
    names = specials(drop, ".hl7")
    _hl7_file(drop / "real.hl7", range(1, 2))

    run = _hl7_ingest(db_url, drop, CGTHUB_DROP_MIN_AGE_SECONDS="1")

    assert run.returncode == 0, run.stderr
    _left_alone(drop, names, run.stdout)
    assert "passwd.hl7: a symlink, not a regular file: left alone" in run.stdout
    assert "pipe.hl7: a FIFO" in run.stdout and "sock.hl7: a socket" in run.stdout
    assert _count(db_url, RawMessage) == 3  # real.hl7 only: /etc/passwd and the secret never archived
    assert "root:" not in run.stdout + run.stderr


def test_hl7_ingest_sets_a_file_over_the_size_cap_aside_unread(db_url: str, tmp_path: Path):
    drop = tmp_path / "drop"
    drop.mkdir()
    huge = drop / "huge.hl7"
    with huge.open("wb") as handle:
        handle.truncate(2 * 1024**3)  # 2 GB, sparse
    _aged(huge)

    started = time.monotonic()
    run = _hl7_ingest(db_url, drop, CGTHUB_DROP_MAX_FILE_BYTES="1000000")

    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started < 30  # not read
    assert (
        "not ingested: huge.hl7: 2147483648 bytes, over CGTHUB_DROP_MAX_FILE_BYTES=1000000: not read, moved to failed/"
        in run.stdout
    )
    assert (drop / "failed" / "huge.hl7").stat().st_size == 2 * 1024**3  # nothing lost
    assert _count(db_url, RawMessage) == 0


def test_hl7_file_that_changes_while_read_is_left_for_the_next_run(db_url: str, tmp_path: Path):
    """The sender appends after the hub read the file: it stays; the next run takes it whole."""
    path = _hl7_file(tmp_path / "feed.hl7", range(1, 2))
    more = b"".join(list(simulator.feed(range(2, 3))))

    def sender_goes_on(_report) -> None:
        with path.open("ab") as handle:
            handle.write(more)

    report = ingest_paths([path], database_url=db_url, progress=sender_goes_on)
    assert report.skipped == ["feed.hl7: changed while it was read (still being written?): left for the next run"]
    assert path.exists() and not (tmp_path / "done").exists()

    again = ingest_paths([path], database_url=db_url)
    assert again.messages == 6 and not path.exists() and (tmp_path / "done" / "feed.hl7.receipt.json").exists()
    assert _count(db_url, RawMessage) == 6  # the first three were duplicates the second time


def test_two_hl7_runs_at_once_apply_a_file_once_and_neither_fails(db_url: str, tmp_path: Path):
    with session_scope(db_url) as session:
        ledger.append_many(session, [enrolment(n) for n in range(1, 3)])
    path = _hl7_file(tmp_path / "feed.hl7", range(1, 3))
    nested: list[object] = []

    def second_run_meanwhile(_report) -> None:
        if not nested:  # another run (a DAG try, an operator) takes the same file to the end
            nested.append(ingest_paths([path], database_url=db_url))

    report = ingest_paths([path], database_url=db_url, progress=second_run_meanwhile)

    assert report.messages == 6 and not path.exists()
    assert (tmp_path / "done" / "feed.hl7.receipt.json").exists()
    assert _count(db_url, RawMessage) == 6
    assert _count(db_url, LedgerEntry) == 2 + 2 * 4  # enrolments, then each patient's four events once


# --- inbox folders (partner_sync.pull, what the ingest DAG's task runs) ----------------------------


@pytest.fixture
def inbox(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CGTHUB_CONNECTORS", "none")
    return canonical_feed.inbox("crm")


def _events_file(path: Path, events) -> Path:
    path.write_text(json.dumps([e.model_dump(mode="json", exclude_none=True) for e in events]))
    return _aged(path)


def _pull_within(seconds: float, db_url: str) -> dict:
    """partner_sync.pull in a thread: a FIFO would hold it for ever, the test fails instead."""
    answer: list[dict] = []
    worker = threading.Thread(target=lambda: answer.append(partner_sync.pull("crm", database_url=db_url)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert answer, "partner_sync.pull blocked"
    return answer[0]


def test_inbox_leaves_young_temporary_and_special_entries_and_takes_the_rest(
    db_url: str, inbox: Path, specials, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CGTHUB_DROP_MIN_AGE_SECONDS", "60")
    events = happy_path(1)
    _events_file(inbox / "ready.json", events[:2])
    (inbox / "writing.json").write_text('[{"source_event_id": ')  # the sender is still at it
    _events_file(inbox / "upload.json.tmp", events[2:3])
    names = specials(inbox, ".json")
    native = inbox / "crm_enrolment"
    native.mkdir()
    (native / "link.xml").symlink_to(PASSWD)

    report = _pull_within(20, db_url)

    lines = "\n".join(report["errors"])
    _left_alone(inbox, names, lines)
    assert "writing.json: written " in lines and "younger than CGTHUB_DROP_MIN_AGE_SECONDS=60: left" in lines
    assert "crm_enrolment/link.xml: a symlink, not a regular file: left alone" in lines
    assert (inbox / "writing.json").exists() and (inbox / "upload.json.tmp").exists()
    assert (inbox / "done" / "ready.json").exists() and report["payloads"] == 1 and report["appended"] == 2
    assert _count(db_url, RawMessage) == 1


def test_inbox_sets_a_file_over_the_size_cap_aside_in_failed(db_url: str, inbox: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CGTHUB_DROP_MAX_FILE_BYTES", "1000000")
    huge = inbox / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate(2 * 1024**3)
    _aged(huge)

    report = _pull_within(20, db_url)

    assert report["errors"] == [
        "drop folder: huge.json: 2147483648 bytes, over CGTHUB_DROP_MAX_FILE_BYTES=1000000: not read, moved to failed/"
    ]
    assert (inbox / "failed" / "huge.json").stat().st_size == 2 * 1024**3
    assert _count(db_url, RawMessage) == 0


def test_inbox_file_that_changes_while_read_stays_for_the_next_run(
    db_url: str, inbox: Path, monkeypatch: pytest.MonkeyPatch
):
    events = happy_path(1)
    path = _events_file(inbox / "batch.json", events[:1])
    ingest_batch = pipeline.ingest_batch

    def sender_rewrites(session, items, mapper_for):  # between the read and the move to done/
        path.write_text(json.dumps([e.model_dump(mode="json", exclude_none=True) for e in events[:2]]))
        return ingest_batch(session, items, mapper_for)

    monkeypatch.setattr(pipeline, "ingest_batch", sender_rewrites)
    first = partner_sync.pull("crm", database_url=db_url)
    monkeypatch.setattr(pipeline, "ingest_batch", ingest_batch)
    assert first["errors"] == [
        "drop folder: batch.json: changed while it was read (still being written?): left for the next run"
    ]
    assert path.exists() and first["appended"] == 1

    second = partner_sync.pull("crm", database_url=db_url)
    assert second["appended"] == 1 and second["duplicates"] == 1  # the whole file now; its start once
    assert (inbox / "done" / "batch.json").exists() and not path.exists()


def test_two_inbox_runs_at_once_apply_a_file_once_and_neither_fails(
    db_url: str, inbox: Path, monkeypatch: pytest.MonkeyPatch
):
    path = _events_file(inbox / "batch.json", happy_path(1)[:2])
    release = canonical_feed.mark_done
    others: list[dict] = []
    started: list[bool] = []

    def another_run_first(drop):  # a second DAG try takes the file to the end before this one moves it
        if not started:
            started.append(True)
            others.append(partner_sync.pull("crm", database_url=db_url))
        return release(drop)

    monkeypatch.setattr(canonical_feed, "mark_done", another_run_first)
    first = partner_sync.pull("crm", database_url=db_url)

    assert first["appended"] == 2 and others[0]["appended"] == 0 and others[0]["duplicate_payloads"] == 1
    assert first["errors"] == ["drop folder: batch.json: gone before it was released (another run took it)"]
    assert (inbox / "done" / "batch.json").exists() and not path.exists()
    assert _count(db_url, LedgerEntry) == 2


# --- the CMO's CSV drop (connectors.cmo.batch.pull) --------------------------------------------


def test_cmo_drop_leaves_young_and_special_files_and_sets_a_huge_one_aside(
    db_url: str, tmp_path: Path, specials, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CGTHUB_DROP_MIN_AGE_SECONDS", "60")
    monkeypatch.setenv("CGTHUB_DROP_MAX_FILE_BYTES", "1000000")
    drop = tmp_path / "cmo"
    drop.mkdir()
    (drop / "export.csv").write_text(HEADER + ROW)
    _aged(drop / "export.csv")
    (drop / "writing.csv").write_text(HEADER)
    huge = drop / "huge.csv"
    with huge.open("wb") as handle:
        handle.truncate(2 * 1024**3)
    _aged(huge)
    names = specials(drop, ".csv")

    report = batch.pull(database_url=db_url, directory=drop)

    lines = "\n".join(report.errors)
    _left_alone(drop, names, lines)
    assert "writing.csv: written " in lines and (drop / "writing.csv").exists()
    assert "huge.csv: 2147483648 bytes, over CGTHUB_DROP_MAX_FILE_BYTES=1000000: not read, moved to failed/" in lines
    assert (drop / "failed" / "huge.csv").exists() and (drop / "done" / "export.csv").exists()
    assert report.payloads == 1 and _count(db_url, RawMessage) == 1


def test_cmo_file_that_changes_while_read_stays_for_the_next_run(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    drop = tmp_path / "cmo"
    drop.mkdir()
    path = drop / "export.csv"
    path.write_text(HEADER + ROW)
    _aged(path)
    ingest_batch = pipeline.ingest_batch

    def sender_appends(session, items, mapper_for):
        if items:
            with path.open("a") as handle:
                handle.write(ROW.replace("MFG_START", "MFG_END"))
        return ingest_batch(session, items, mapper_for)

    monkeypatch.setattr(pipeline, "ingest_batch", sender_appends)
    first = batch.pull(database_url=db_url, directory=drop)
    monkeypatch.setattr(pipeline, "ingest_batch", ingest_batch)
    assert first.errors == [
        "drop folder: export.csv: changed while it was read (still being written?): left for the next run"
    ]
    assert path.exists() and _count(db_url, RawMessage) == 1

    second = batch.pull(database_url=db_url, directory=drop)
    assert second.payloads == 2 and _count(db_url, RawMessage) == 2  # the new row archived; the first once
    assert (drop / "done" / "export.csv").exists()
