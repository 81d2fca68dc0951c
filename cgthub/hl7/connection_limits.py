"""Connections one address may hold open on the MLLP listener.

The MLLP listener caps its connections in all (`max_connections`), so without a cap per address one
misbehaving host (a sender opening a connection per message and never closing them, a scanner) can
hold them all and shut every hospital out for `idle_timeout`. `PerAddressLimit` admits a connection
while its address has fewer than the cap open and closes the one over it at once, unanswered: a
sender retries later, as it does after any refused connection. Hospitals behind one NAT share an
address, so the cap is well above what one site's senders open (CGTHUB_MLLP_MAX_CONNECTIONS_PER_ADDRESS).
The refusals are logged by `WarningPerAddress` (cgthub.warning_per_address), as the API's are.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from prometheus_client import Counter as PrometheusCounter

from cgthub.warning_per_address import WarningPerAddress

log = logging.getLogger(__name__)

REFUSED_PER_ADDRESS = PrometheusCounter(
    "cgthub_mllp_connections_refused_per_address",
    "MLLP connections closed on arrival: their address already had its cap open",
)


def peer_address(writer: asyncio.StreamWriter) -> str:
    """The connection's remote IP address ('' when the transport has none, as on a Unix socket)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class PerAddressLimit:
    """At most `limit` connections open from one address; those over it are closed on arrival."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connections allowed per address must be positive")
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.refused = 0
        self._warn = WarningPerAddress(
            "refused MLLP connections from %s: %d open from it, the limit per address is %d", logger=log
        )

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
