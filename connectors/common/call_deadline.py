"""One deadline over a whole partner call, head included, for requests Sessions.

requests' `timeout` bounds each socket read only: a partner sending its status line and headers a
byte every few seconds (http.client accepts 100 header lines of 64 KiB) holds a call, and the
Airflow task making it, for hours. Inside `CallDeadline(...)`, every socket a `DeadlineAdapter`
opens or reuses in this thread is watched, and a timer shuts them down when the deadline passes:
the blocked read returns and the caller sees `expired` (`connectors.common.http.bounded_call`
turns that into a PartnerError naming the partner, the call and the deadline).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class CallDeadline:
    """The sockets of one call, shut down `seconds` after it started if it is still going."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._outer: CallDeadline | None = None

    def __enter__(self) -> CallDeadline:
        self._outer = getattr(_current, "deadline", None)
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._timer.cancel()
        _current.deadline = self._outer

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop its TLS
    state under the thread reading it. The reader's recv returns (EOF) or fails at once."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _watched(sock: socket.socket | None) -> None:
    deadline: CallDeadline | None = getattr(_current, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watched(sock)  # before any TLS handshake, so a dribbled handshake is cut too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self.sock)  # a pooled connection reused for this call
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same watch; HTTPSConnection.connect opens its socket through _new_conn."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' HTTPAdapter whose connections are watched by the thread's CallDeadline, if any
    (outside one they behave as HTTPAdapter's), through an HTTP(S) proxy too (HTTP_PROXY and the
    like, which requests honours); a SOCKS proxy's connections are urllib3's own and not watched."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
