"""Copying SQLite's write-ahead log back into the database file off the commit path.

In WAL mode every commit appends pages to the `-wal` file; a checkpoint copies them into the
database file and syncs it, so the log can start over. SQLite runs one inside whichever commit
crosses `wal_autocheckpoint`: that commit then takes many times its usual time, and on the
MLLP listener every sender in that group commit waits for its ACK meanwhile. One thread per
process checkpoints each database it writes (PASSIVE: it never blocks a writer or a reader) a few
times a second on a connection of its own, so a commit rarely pays for a checkpoint. The automatic
checkpoint stays on as the fallback (a process forked away from this thread, or a log that a long
read kept from starting over), and then finds little left to copy.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUSY_INTERVAL = 0.2  # seconds between checkpoints while commits keep coming
IDLE_INTERVAL = 1.0  # ... and once the last one found nothing to copy


@dataclass
class Watched:
    """One database file and what its checkpoints did (for benches and tests)."""

    path: str
    checkpoints: int = 0  # checkpoints that copied pages
    pages_copied: int = 0
    cpu_seconds: float = 0.0  # this thread's CPU time spent on it
    _backfilled: int = 0
    _seen: tuple[int, int] = (0, 0)  # the log file's size and mtime at the last checkpoint
    _connection: sqlite3.Connection | None = None

    def checkpoint(self) -> int:
        """Copy what the log holds beyond the last checkpoint; the number of pages copied."""
        try:
            stat = os.stat(self.path + "-wal")
        except FileNotFoundError:
            return 0  # no log (yet): nothing to copy
        seen = (stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return 0  # no commit since the last look: a database at rest costs a stat
        self._seen = seen
        if self._connection is None:  # mode=rw: never create the file, it is the writer's to make
            self._connection = sqlite3.connect(
                Path(self.path).resolve().as_uri() + "?mode=rw",  # as_uri escapes spaces, '?' and '#'
                uri=True,
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
        started = time.thread_time()
        try:
            row = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            self.cpu_seconds += time.thread_time() - started
        backfilled = row[2] if row is not None else -1  # (busy, frames in the log, frames copied)
        if backfilled < 0:  # not in WAL mode (yet)
            return 0
        # Counted from the log's last restart: fewer than last time means it started over.
        copied = backfilled - self._backfilled if backfilled >= self._backfilled else backfilled
        self._backfilled = backfilled
        if copied > 0:
            self.checkpoints += 1
            self.pages_copied += copied
        return copied

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class WalCheckpointer:
    """The process's checkpointing thread, started with the first database it is asked to watch."""

    def __init__(self) -> None:
        self._watched: dict[str, Watched] = {}
        self._forgotten: list[Watched] = []
        self._lock = threading.Lock()
        # Held while the thread is inside SQLite: a fork waits until it is out, or the child could
        # inherit SQLite's own mutexes locked by a thread it does not have, and hang on first use.
        self._in_sqlite = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, path: str) -> Watched:
        with self._lock:
            watched = self._watched.get(path)
            if watched is None:
                watched = self._watched[path] = Watched(path)
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
                self._thread.start()
            return watched

    def watching(self, path: str) -> Watched | None:
        return self._watched.get(path)

    def forget(self, path: str) -> None:
        """Stop checkpointing `path`; its connection is closed by the thread that used it."""
        with self._lock:
            watched = self._watched.pop(path, None)
            if watched is not None:
                self._forgotten.append(watched)
        self._wake.set()

    def _run(self) -> None:
        interval = BUSY_INTERVAL
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            with self._lock:
                forgotten, self._forgotten = self._forgotten, []
                watched = list(self._watched.values())
            copied = 0
            with self._in_sqlite:
                for item in forgotten:
                    item.close()
                for item in watched:
                    try:
                        copied += item.checkpoint()
                    except sqlite3.Error as exc:  # busy, or the file went away (tests): try again later
                        log.debug("WAL checkpoint of %s skipped: %s", item.path, exc)
            interval = BUSY_INTERVAL if copied else IDLE_INTERVAL

    def _before_fork(self) -> None:
        self._in_sqlite.acquire()

    def _after_fork_in_parent(self) -> None:
        self._in_sqlite.release()

    def _after_fork_in_child(self) -> None:
        """A forked child has no checkpointing thread and must not touch its parent's connections:
        they are kept referenced, never closed (closing could checkpoint or remove the parent's log),
        and the child opens its own when it next writes."""
        self._lock = threading.Lock()
        self._in_sqlite = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        for item in [*self._watched.values(), *self._forgotten]:
            if item._connection is not None:
                _inherited.append(item._connection)
                item._connection = None
        self._forgotten = []


_inherited: list[sqlite3.Connection] = []
checkpointer = WalCheckpointer()
os.register_at_fork(
    before=checkpointer._before_fork,
    after_in_parent=checkpointer._after_fork_in_parent,
    after_in_child=checkpointer._after_fork_in_child,
)
