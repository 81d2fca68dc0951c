"""HTTP to partners, resilient in one place: retries with exponential backoff and jitter (tenacity)
on timeouts, connection resets, 5xx and 429 (honouring Retry-After), behind the partner's circuit
breaker, with answers that are not what was promised (HTML error pages, malformed JSON) turned
into clear PartnerError messages instead of stack traces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cgthub.partners import PartnerUnavailable
from connectors.common.breaker import breaker_for


class PartnerError(PartnerUnavailable):
    """A partner answered, but not usefully; the message says what came back (never the body's PHI)."""


class RetryableError(PartnerError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        if "json" not in self.content_type:
            raise PartnerError(f"expected JSON, got {self.content_type or 'no content type'} ({len(self.body)} bytes)")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise PartnerError(f"malformed JSON from partner: {exc}") from exc


def _retryable(exc: BaseException) -> bool:
    """Timeouts, refused or reset connections, bodies cut off mid-way, 5xx and 429."""
    return isinstance(
        exc, (RetryableError, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    )


def retrying(attempts: int) -> Any:
    """The retry policy every connector uses, as a decorator (exponential backoff, jitter, Retry-After)."""
    return retry(retry=retry_if_exception(_retryable), wait=_wait, stop=stop_after_attempt(attempts), reraise=True)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    backoff = wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05)(state)
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        return min(max(exc.retry_after, backoff), 30.0)
    return backoff


class PartnerSession:
    """requests.Session for one partner: timeouts, retries, circuit breaker, typed errors."""

    def __init__(self, partner: str, base_url: str, *, timeout: float = 10.0, attempts: int = 6) -> None:
        self.partner, self.base_url, self.timeout, self.attempts = partner, base_url.rstrip("/"), timeout, attempts
        self.http = requests.Session()
        self.breaker = breaker_for(partner)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
        @retrying(self.attempts)
        def once() -> Answer:
            return self._send(method, path, headers or {}, kwargs)

        return self.breaker.call(once)

    def _send(self, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Answer:
        response = self.http.request(method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs)
        answer = Answer(response.status_code, response.content, response.headers.get("content-type", ""))
        if response.status_code == 429:
            raise RetryableError(f"{self.partner}: rate limited (429)", _retry_after(response))
        if response.status_code >= 500:
            raise RetryableError(f"{self.partner}: server error {response.status_code} on {method} {path}")
        return answer


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
