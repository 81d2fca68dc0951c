"""A circuit breaker per partner, so a dead partner fails fast instead of stalling every sync.

Closed: calls go through; `threshold` consecutive failures open it. Open: calls fail at once with
CircuitOpen until `reset_after` seconds pass. Half-open: one trial call; success closes, failure
re-opens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cgthub.errors import CgthubError

T = TypeVar("T")


class CircuitOpen(CgthubError, RuntimeError):
    """The partner failed too often recently; the call was not attempted."""


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int = 5, reset_after: float = 30.0) -> None:
        self.name, self.threshold, self.reset_after = name, threshold, reset_after
        self.failures = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.reset_after else "open"

    def call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self.state == "open":
                raise CircuitOpen(
                    f"{self.name}: circuit open after {self.failures} consecutive failures; "
                    f"next try in {self.reset_after - (time.monotonic() - (self.opened_at or 0)):.0f} s"
                )
        try:
            result = fn()
        except Exception:
            with self._lock:
                self.failures += 1
                if self.failures >= self.threshold or self.opened_at is not None:
                    self.opened_at = time.monotonic()
            raise
        with self._lock:
            self.failures, self.opened_at = 0, None
        return result


_breakers: dict[str, CircuitBreaker] = {}


def breaker_for(partner: str) -> CircuitBreaker:
    if partner not in _breakers:
        _breakers[partner] = CircuitBreaker(partner)
    return _breakers[partner]
