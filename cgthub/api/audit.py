"""The access audit log: every request, allowed or refused, becomes one `api_access_log` row.

Rows are written by a background thread in small batches (at most `interval` seconds late) so a read
never waits on a write lock; `flush()` writes what is queued (shutdown, tests, the audit query).
The writer starts on first use, so the app works the same when mounted inside another server.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
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


class AuditWriter:
    def __init__(self, database_url: str, *, interval: float = 0.2, batch: int = 500) -> None:
        self.database_url = database_url
        self.interval = interval
        self.batch = batch
        self._queue: queue.Queue[Access] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def record(self, access: Access) -> None:
        self._queue.put(access)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cgthub-api-audit", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # keep the writer alive; the rows stay queued for the next round
                log.exception("could not write the API access log; will retry")

    def flush(self) -> int:
        """Write every queued access now; returns how many rows were written."""
        written = 0
        with self._lock:
            while True:
                rows: list[Access] = []
                while len(rows) < self.batch:
                    try:
                        rows.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not rows:
                    return written
                try:
                    with get_engine(self.database_url).begin() as conn:
                        conn.execute(insert(ApiAccess), [r.row() for r in rows])
                except Exception:
                    for r in rows:
                        self._queue.put(r)
                    raise
                written += len(rows)

    def close(self) -> None:
        self._stop.set()
        try:
            self.flush()
        except Exception:
            log.exception("could not write the API access log at shutdown")
