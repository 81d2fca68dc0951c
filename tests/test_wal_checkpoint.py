"""The background WAL checkpointer: commits leave copying the log back to it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from cgthub import store
from cgthub.wal_checkpoint import checkpointer


def _wait_for(condition, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _write_pages(url: str, rows: int = 400) -> None:
    with store.get_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, body TEXT)"))
    for start in range(0, rows, 50):  # several commits, each adding pages to the log
        with store.get_engine(url).begin() as conn:
            conn.execute(text("INSERT INTO filler (body) VALUES (:body)"), [{"body": "x" * 3000}] * 50)


def test_the_log_is_copied_back_by_the_background_thread_not_by_a_commit(tmp_path: Path) -> None:
    folder = tmp_path / "a folder #1"  # characters a file: URI must escape
    folder.mkdir()
    url = f"sqlite:///{folder / 'hub.db'}"
    _write_pages(url)  # ~400 pages: far below wal_autocheckpoint (10,000), so no commit checkpoints
    watched = store.wal_checkpoints(url)
    assert watched is not None
    assert _wait_for(lambda: watched.pages_copied >= 400), watched
    # Nothing is left for a checkpoint to copy: every frame in the log is already in the database.
    with sqlite3.connect(folder / "hub.db") as probe:
        _busy, in_log, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert in_log > 0 and copied == in_log
    store.dispose_engines()


def test_a_database_is_watched_only_by_its_writer_and_forgotten_on_dispose(tmp_path: Path) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    url = f"sqlite:///{path}"
    store.get_engine(url, readonly=True)
    assert store.wal_checkpoints(url) is None  # readers never checkpoint
    store.get_engine(url)
    assert store.wal_checkpoints(url) is not None
    assert not path.exists()  # watching never creates the file: the first write does
    store.dispose_engines()
    assert store.wal_checkpoints(url) is None
    assert store.wal_checkpoints("sqlite:///:memory:") is None


def test_a_database_at_rest_is_not_checkpointed_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rest.db'}"
    _write_pages(url, rows=100)
    watched = store.wal_checkpoints(url)
    assert watched is not None
    assert _wait_for(lambda: watched.checkpoints >= 1)
    time.sleep(1.5)  # more than one idle interval
    before = (watched.checkpoints, watched.cpu_seconds)
    time.sleep(1.5)
    assert (watched.checkpoints, watched.cpu_seconds) == before
    store.dispose_engines()


def test_a_forked_child_starts_its_own_thread_and_leaves_the_parents_connection_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    _write_pages(url, rows=100)
    watched = store.wal_checkpoints(url)
    assert watched is not None
    assert _wait_for(lambda: watched._connection is not None)
    parents = watched._connection
    pid = os.fork()  # the hub's own fork handlers run: the checkpointer is outside SQLite meanwhile
    if pid == 0:  # the child: only this thread came along
        code = 1
        try:
            dropped = watched._connection is None and checkpointer._thread is None
            before = watched.pages_copied
            with sqlite3.connect(tmp_path / "fork.db") as writer:  # the child's own connection
                writer.executemany("INSERT INTO filler (body) VALUES (?)", [("y" * 3000,)] * 100)
            checkpointer.watch(str(tmp_path / "fork.db"))  # as its next engine would: a thread of its own
            own = _wait_for(lambda: watched.pages_copied > before and watched._connection is not None)
            code = 0 if dropped and own and watched._connection is not parents else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parents.execute("SELECT count(*) FROM filler").fetchone() == (200,)  # still open, sees the child's
    store.dispose_engines()


def test_a_fork_waits_until_the_checkpointer_is_out_of_sqlite() -> None:
    held, released = threading.Event(), []

    def checkpointing() -> None:  # stands in for the thread inside a checkpoint
        with checkpointer._in_sqlite:
            held.set()
            time.sleep(0.3)
            released.append(True)

    worker = threading.Thread(target=checkpointing)
    worker.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert released == [True]  # the fork went ahead only once the lock was let go
    os.waitpid(pid, 0)
    worker.join()
