"""Every connection the listener would serve can complete its handshake at once, even while the
event loop is busy: after a restart or a failover every hospital reconnects together. With
asyncio's default backlog of 100 the kernel dropped the handshakes beyond it and each such sender
retried a second later, so its first message waited that long (the bench's 256-sender runs: one
stall of 590-640 ms in their maximum, docs/benchmarks.md, MLLP latency tail, 5 December evening)."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

from tests.test_hl7_listener import Running

SENDERS = 200  # more than asyncio's default backlog of 100


def _handshakes_done(port: int, count: int, seconds: float) -> int:
    """Open `count` connections at once; how many the kernel completed within `seconds`."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        time.sleep(seconds)
        _readable, writable, _ = select.select([], sockets, [], 0)
        return sum(1 for sock in writable if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    finally:
        for sock in sockets:
            sock.close()


def test_a_burst_of_connections_is_queued_while_the_loop_is_busy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-touched.db'}"  # no message is sent
    with Running(url, apply=False, max_connections=256, max_connections_per_address=256) as running:
        running.loop.call_soon_threadsafe(time.sleep, 1.5)  # the loop accepts nothing meanwhile
        time.sleep(0.05)
        done = _handshakes_done(running.listener.port, SENDERS, 0.5)  # well before a dropped SYN's retry (1 s)
        time.sleep(1.0)  # the loop free again before the listener stops
    assert done == SENDERS  # about 101 with asyncio's default backlog
