"""Connections one address may hold open on a live edge, and warnings that do not flood the log.

The MLLP listener caps its connections in all (`max_connections`), so without a cap per address one
misbehaving host (a sender opening a connection per message and never closing them, a scanner) can
hold them all and shut every hospital out for `idle_timeout`. `PerAddressLimit` admits a connection
while its address has fewer than the cap open and closes the one over it at once, unanswered: a
sender retries later, as it does after any refused connection. Hospitals behind one NAT share an
address, so the cap is well above what one site's senders open (CGTHUB_MLLP_MAX_CONNECTIONS_PER_ADDRESS).

`WarningPerAddress` logs an event at most once a minute per address, with how often it happened
meanwhile: a host that retries in a tight loop makes one line a minute, not thousands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from prometheus_client import Counter as PrometheusCounter

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds between two warnings about one address
FORGET_AFTER = 4096  # addresses remembered for the warnings before the quiet ones are dropped

REFUSED_PER_ADDRESS = PrometheusCounter(
    "cgthub_mllp_connections_refused_per_address",
    "MLLP connections closed on arrival: their address already had its cap open",
)


def peer_address(writer: asyncio.StreamWriter) -> str:
    """The connection's remote IP address ('' when the transport has none, as on a Unix socket)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class WarningPerAddress:
    """A warning logged at most once per `every` seconds for each address, with the count meanwhile."""

    def __init__(self, message: str, every: float = WARN_EVERY, logger: logging.Logger = log) -> None:
        self.message = message + " (%d time(s) since the last such warning for this address)"
        self.every = every
        self.logger = logger
        self._pending: Counter[str] = Counter()
        self._next_at: dict[str, float] = {}

    def __call__(self, address: str, *args: object) -> None:
        now = time.monotonic()
        self._pending[address] += 1
        if now < self._next_at.get(address, 0.0):
            return
        count = self._pending.pop(address)
        if len(self._next_at) >= FORGET_AFTER:  # many addresses: keep those warned about within the minute
            for quiet in [known for known, at in self._next_at.items() if at <= now]:
                del self._next_at[quiet]
                self._pending.pop(quiet, None)
        self.logger.warning(self.message, address or "(no address)", *args, count)
        self._next_at[address] = now + self.every


class PerAddressLimit:
    """At most `limit` connections open from one address; those over it are closed on arrival."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connections allowed per address must be positive")
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.refused = 0
        self._warn = WarningPerAddress("refused MLLP connections from %s: %d open from it, the limit per address is %d")

    def admit(self, writer: asyncio.StreamWriter) -> bool:
        """Count the current task's connection for its address until the task ends, or, when the address
        has `limit` open already, close it at once (no ACK: nothing was read), log and count it."""
        address = peer_address(writer)
        if self.open[address] >= self.limit:
            writer.transport.abort()
            self.refused += 1
            REFUSED_PER_ADDRESS.inc()
            self._warn(address, self.open[address], self.limit)
            return False
        task = asyncio.current_task()
        if task is None:  # not in a connection's task: nothing would release it
            raise RuntimeError("PerAddressLimit.admit runs in the connection's own task")
        self.open[address] += 1
        task.add_done_callback(lambda _task: self._release(address))
        return True

    def _release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
