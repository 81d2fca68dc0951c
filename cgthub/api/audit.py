"""The access audit log: every request, allowed or refused, becomes one `api_access_log` row.

A request's row is committed before its answer's first byte leaves the server, so no answered
request can go unlogged, whatever happens to the process afterwards. Rows are written by one
thread in group commits: requests arriving while a commit runs share the next one, so concurrency
costs one commit per round, not one per request, and the event loop never waits on a write.
When a row cannot be committed the request is answered 503 instead (`AuditMiddleware`), and a
row for that 503 is kept in memory and retried every `retry_interval` seconds: the only rows this
process holds that are not yet in the table are those of requests refused because the database
was not writable.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from cgthub.api.tables import ApiAccess
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
        }


@dataclass
class _Waiter:
    """One row and whoever waits for its commit (an event loop's future, or nobody)."""

    access: Access
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[bool] | None = None

    def settle(self, committed: bool) -> None:
        if self.loop is None or self.future is None:
            return
        future = self.future
        try:
            self.loop.call_soon_threadsafe(lambda: future.done() or future.set_result(committed))
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class AuditWriter:
    def __init__(self, database_url: str, *, retry_interval: float = 0.2, batch: int = 500) -> None:
        self.database_url = database_url
        self.retry_interval = retry_interval
        self.batch = batch
        self._waiting: deque[_Waiter] = deque()
        self._retry: deque[Access] = deque()  # rows of requests answered 503: the log was not writable
        self._wake = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._registered = False

    async def commit(self, access: Access) -> bool:
        """Write `access` and wait until it is committed; False when it could not be."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(access, loop, loop.create_future())
        self._submit(waiter)
        assert waiter.future is not None
        return await waiter.future

    def keep(self, access: Access) -> None:
        """A row to write as soon as the database takes it (kept in memory until then)."""
        with self._wake:
            self._retry.append(access)
            self._wake.notify()
        self._ensure_started()

    def _submit(self, waiter: _Waiter) -> None:
        with self._wake:
            self._waiting.append(waiter)
            self._wake.notify()
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._wake:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cgthub-api-audit", daemon=True)
            self._thread.start()
            if not self._registered:
                atexit.register(self.close)
                self._registered = True

    def _run(self) -> None:
        next_retry = 0.0
        while True:
            with self._wake:
                if not self._waiting and not self._stop:
                    self._wake.wait(self.retry_interval if self._retry else None)
                if self._stop and not self._waiting:
                    return
                round_ = [self._waiting.popleft() for _ in range(min(self.batch, len(self._waiting)))]
            self._commit_round(round_)
            if self._retry and time.monotonic() >= next_retry:
                self._retry_kept()
                next_retry = time.monotonic() + self.retry_interval

    def _commit_round(self, round_: list[_Waiter]) -> None:
        if not round_:
            return
        try:
            self._write([w.access for w in round_])
        except Exception:
            log.exception("could not write the API access log; %d request(s) will be answered 503", len(round_))
            for waiter in round_:
                waiter.settle(False)
            return
        for waiter in round_:
            waiter.settle(True)

    def _retry_kept(self) -> None:
        with self._wake:
            rows = [self._retry.popleft() for _ in range(min(self.batch, len(self._retry)))]
        if not rows:
            return
        try:
            self._write(rows)
        except Exception:
            with self._wake:
                self._retry.extendleft(reversed(rows))
            log.warning("the API access log is still not writable; %d row(s) kept for retry", len(self._retry))

    def _write(self, accesses: list[Access]) -> None:
        with self._write_lock, get_engine(self.database_url).begin() as conn:
            conn.execute(insert(ApiAccess), [a.row() for a in accesses])

    def pending(self) -> int:
        """Rows this process holds that are not yet in the table (only those of 503 answers)."""
        with self._wake:
            return len(self._retry) + len(self._waiting)

    def flush(self) -> int:
        """Write the kept rows now; returns how many were written. Every answered request's row is
        already committed, so this only matters after the database was unwritable."""
        with self._wake:
            rows = list(self._retry)
            self._retry.clear()
        if not rows:
            return 0
        try:
            self._write(rows)
        except Exception:
            with self._wake:
                self._retry.extendleft(reversed(rows))
            raise
        return len(rows)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._wake:  # a request after close (a server restarted in-process) starts a new writer
            self._thread, self._stop = None, False
        try:
            self.flush()
        except Exception:
            log.exception("could not write the API access log at shutdown")
