"""The access audit log: every request, allowed or refused, becomes one `api_access_log` row.

Before a request's answer starts, its row is appended to this process's journal, a local file
(`<CGTHUB_VAR_DIR>/api-access/<database>/`): one `write()`, so the row is in the kernel's hands and
survives anything that happens to the process after it, a SIGKILL included, without the answer
waiting for a database commit (which cost each request a thread hop and a commit, about ten times
the hot path's latency on a loaded machine). A background thread drains the journal into the table
every `interval` seconds, syncing the file to disk first; a journal left behind by a process that
died is replayed by the next writer on the same database when it starts. Each row carries its
request's id, unique in the table, so a row drained and then replayed is written once.

What is held outside the table at any moment is therefore the journal's undrained tail: the rows
since the last drain round (rounds start `interval` seconds apart, each taking its insert's time on
top), on local disk. A power cut or an operating-system crash can lose the part of it not yet
synced; a crash of the API process loses nothing.
If the journal itself cannot be written, the request is answered 503 (`AuditMiddleware`).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cgthub.api.tables import ApiAccess
from cgthub.settings import var_dir
from cgthub.store import get_engine
from cgthub.tables import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status_code: int
    key_id: str | None = None
    route: str | None = None
    order_id: str | None = None
    client: str | None = None
    at: datetime = field(default_factory=utcnow)
    request_id: str = field(default_factory=lambda: secrets.token_hex(16))

    def row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "key_id": self.key_id,
            "method": self.method[:8],
            "path": self.path[:300],
            "route": (self.route or "")[:100] or None,
            "order_id": (self.order_id or "")[:40] or None,
            "status_code": self.status_code,
            "client": (self.client or "")[:64] or None,
            "request_id": self.request_id,
        }

    def line(self) -> bytes:
        return json.dumps(self.row() | {"at": self.at.isoformat()}, separators=(",", ":")).encode() + b"\n"


def _row_of(line: bytes) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(line)
    row["at"] = datetime.fromisoformat(row["at"])
    return row


def journal_dir(database_url: str) -> Path:
    """Where the journals of the API processes writing to `database_url` live."""
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    path = var_dir() / "api-access" / digest
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class AuditWriter:
    def __init__(self, database_url: str, *, interval: float = 0.2, batch: int = 500) -> None:
        self.database_url = database_url
        self.interval = interval
        self.batch = batch
        self._lock = threading.Lock()  # the journal's descriptor and offsets
        self._drain_lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._drained = 0  # bytes of the journal already in the table
        self._written = 0  # bytes appended to the journal
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._registered = False

    def record(self, access: Access) -> None:
        """Append the row to the journal; raises OSError when it cannot be written."""
        line = access.line()
        with self._lock:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            os.write(self._fd, line)
            self._written += len(line)
        if self._thread is None:
            self._start()

    def _open(self) -> None:
        directory = journal_dir(self.database_url)
        path = directory / f"{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while alive: a locked journal is not an orphan
        self._fd, self._path, self._drained, self._written = fd, path, 0, 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cgthub-api-audit", daemon=True)
            self._thread.start()
            if not self._registered:
                atexit.register(self.close)
                self._registered = True

    def start(self) -> None:
        """Replay what dead processes left and start draining (also happens on the first request)."""
        self._start()

    def _run(self) -> None:
        try:
            self.replay_orphans()
        except Exception:
            log.exception("could not replay the API access journals left by stopped processes; will retry")
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # the rows stay in the journal for the next round
                log.exception("could not write the API access log; its rows wait in the journal")

    def flush(self) -> int:
        """Move what the journal holds into the table now; returns how many rows were offered."""
        with self._drain_lock:
            with self._lock:
                path, start, end = self._path, self._drained, self._written
            if path is None or start >= end:
                return 0
            with open(path, "rb") as journal:
                os.fsync(journal.fileno())
                journal.seek(start)
                data = journal.read(end - start)
            self._insert([_row_of(line) for line in data.splitlines() if line])
            with self._lock:
                self._drained = end
                if self._drained == self._written and self._fd is not None and self._written > (1 << 20):
                    os.ftruncate(self._fd, 0)  # all of it is in the table: start the file over
                    self._drained = self._written = 0
            return data.count(b"\n")

    def replay_orphans(self) -> int:
        """Write the rows of journals whose process died (their lock is free), then delete them."""
        replayed = 0
        for path in sorted(journal_dir(self.database_url).glob("*.jsonl")):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                with os.fdopen(os.dup(fd), "rb") as journal:
                    lines = [line for line in journal.read().splitlines() if line.endswith(b"}")]
                rows = []
                for line in lines:
                    try:
                        rows.append(_row_of(line))
                    except ValueError:
                        log.warning("skipped a torn line in the API access journal %s", path.name)
                self._insert(rows)
                path.unlink()
                replayed += len(rows)
            finally:
                os.close(fd)
        if replayed:
            log.warning("replayed %d API access-log rows left by stopped processes", replayed)
        return replayed

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        engine = get_engine(self.database_url)
        upserts: dict[str, Callable[[type[ApiAccess]], PgInsert | SqliteInsert]] = {
            "postgresql": pg_insert,
            "sqlite": sqlite_insert,
        }
        make = upserts.get(engine.dialect.name)
        statement = make(ApiAccess).on_conflict_do_nothing(index_elements=["request_id"]) if make else insert(ApiAccess)
        with engine.begin() as conn:
            for at in range(0, len(rows), self.batch):
                conn.execute(statement, rows[at : at + self.batch])

    def pending(self) -> int:
        """Bytes of journal not yet in the table."""
        with self._lock:
            return self._written - self._drained

    def close(self) -> None:
        """Drain the journal; delete it when all of it is in the table (else the next start replays it)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            log.exception("could not write the API access log at shutdown; the journal keeps the rows")
        with self._lock:
            self._thread = None
            if self._fd is None:
                return
            if self._drained == self._written and self._path is not None:
                self._path.unlink(missing_ok=True)
            os.close(self._fd)  # releases the lock: a journal left behind is replayed at the next start
            self._fd = self._path = None
            self._drained = self._written = 0
