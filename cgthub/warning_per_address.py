"""Warnings about one peer address that do not flood the log, on every live edge (MLLP, API).

`WarningPerAddress` logs an event at most once a minute per address, with how often it happened
meanwhile: a host that retries in a tight loop makes one line a minute, not thousands.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds between two warnings about one address
FORGET_AFTER = 4096  # addresses remembered for the warnings before the quiet ones are dropped


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
