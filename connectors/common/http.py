"""HTTP to partners, resilient in one place: retries with exponential backoff and jitter (tenacity)
on timeouts, connection resets, 5xx and 429 (honouring Retry-After), behind the partner's circuit
breaker, with answers that are not what was promised (HTML error pages, malformed JSON) turned
into clear PartnerError messages instead of stack traces. An answer is read up to a size
(CGTHUB_PARTNER_MAX_RESPONSE_BYTES) and the whole call, from sending the request to the body's last
byte, head included, within a deadline (CGTHUB_PARTNER_RESPONSE_DEADLINE, connectors.common.
call_deadline): a partner answering a page of millions of records, an endless body, or its head or
body a byte at a time ends the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cgthub.partners import PartnerUnavailable
from cgthub.settings import get_settings
from connectors.common.breaker import breaker_for
from connectors.common.call_deadline import CallDeadline, DeadlineAdapter


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
        self.http.mount("http://", DeadlineAdapter())
        self.http.mount("https://", DeadlineAdapter())
        self.breaker = breaker_for(partner)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
        @retrying(self.attempts)
        def once() -> Answer:
            return self._send(method, path, headers or {}, kwargs)

        return self.breaker.call(once)

    def _send(self, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Answer:
        response, body = bounded_call(
            self.partner,
            f"{method} {path}",
            lambda: self.http.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, stream=True, **kwargs
            ),
        )
        answer = Answer(response.status_code, body, response.headers.get("content-type", ""))
        if response.status_code == 429:
            raise RetryableError(f"{self.partner}: rate limited (429)", _retry_after(response))
        if response.status_code >= 500:
            raise RetryableError(f"{self.partner}: server error {response.status_code} on {method} {path}")
        return answer


def bounded_call(partner: str, call: str, send: Callable[[], requests.Response]) -> tuple[requests.Response, bytes]:
    """`send()` (a streamed request on a Session with DeadlineAdapter mounted) and its answer's body,
    read (decompressed) up to CGTHUB_PARTNER_MAX_RESPONSE_BYTES, the whole call within
    CGTHUB_PARTNER_RESPONSE_DEADLINE of sending: past either, PartnerError and the connection dropped.

    A head or body past the deadline is a PartnerError, not retried: a partner that dribbles its
    answer would dribble the next one too, and retrying would hold the task `attempts` deadlines."""
    settings = get_settings()
    cap, seconds = settings.partner_max_response_bytes, settings.partner_response_deadline
    late = f"{partner}: the answer to {call} took over {seconds:g} s; stopped reading"
    with CallDeadline(seconds) as deadline:
        try:
            response = send()
            with response:
                body = _bounded_body(response, f"{partner}: the answer to {call}", cap, deadline)
        except Exception as exc:
            if deadline.expired:  # the watchdog shut the socket: whatever broke, the deadline did it
                raise PartnerError(late) from exc
            raise
        if deadline.expired:  # a head or body cut by the watchdog can end like a short, complete one
            raise PartnerError(late)
    return response, body


def _bounded_body(response: requests.Response, answer: str, cap: int, deadline: CallDeadline) -> bytes:
    """The body up to `cap` bytes; `timeout` bounds each read only, the deadline's watchdog the whole."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise PartnerError(f"{answer} declares {int(declared):,} bytes, over {cap:,}")
    chunks, size = [], 0
    while not deadline.expired and (chunk := _read1(response)):
        size += len(chunk)
        if size > cap:
            raise PartnerError(f"{answer} passed {cap:,} bytes; stopped reading")
        chunks.append(chunk)
    return b"".join(chunks)


def _read1(response: requests.Response) -> bytes:
    """What one read of the socket brought (decompressed), with urllib3's errors as requests names
    them when it reads a body itself (so a connection cut mid-answer is retried as before)."""
    try:
        return bytes(response.raw.read1(64 * 1024, decode_content=True))
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
