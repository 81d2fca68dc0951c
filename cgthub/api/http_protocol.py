"""uvicorn's HTTP protocol with a deadline on each request's head (slowloris).

uvicorn bounds only idle keep-alive time, and every byte received cancels that timer: a client that
sends one header byte every few seconds (or never sends a byte) holds its connection and a file
descriptor for as long as it likes, and a few thousand such clients exhaust the process. ASGI
middleware cannot help: it runs once the head has been parsed. `HeadDeadlineProtocol` is uvicorn's
own protocol (httptools when installed, h11 otherwise, as uvicorn's `auto` picks) with one timer
more: a request's head must be complete within CGTHUB_API_HEADER_TIMEOUT seconds (10 by default)
of the connection opening or of its first bytes after a previous answer, or the client is answered
408 and the connection closed. Bodies and answers are not timed here: a request whose head
arrived is the application's. Pass it as `uvicorn.Config(http=HeadDeadlineProtocol)`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cgthub.hl7.connection_limits import WarningPerAddress
from cgthub.settings import get_settings

log = logging.getLogger(__name__)


def request_timeout_answer(seconds: float) -> bytes:
    body = f"request head not complete within {seconds:g} s\n".encode("ascii")
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _HeadDeadline(asyncio.Protocol):
    """The timer both parsers share, armed when a connection opens; each subclass says when a head
    begins and ends. First in each subclass's bases, so `super()` here is uvicorn's protocol."""

    head_timeout: float | None = None  # seconds; None: CGTHUB_API_HEADER_TIMEOUT
    _warn = WarningPerAddress("closed API connections from %s: no complete request head within %g s", logger=log)

    # set by uvicorn's protocol this is mixed into
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    _head_timer: asyncio.TimerHandle | None = None

    @property
    def _head_seconds(self) -> float:
        return self.head_timeout if self.head_timeout is not None else get_settings().api_header_timeout

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self._head_seconds, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        """True while this connection owes an answer to a request whose head did arrive."""
        raise NotImplementedError

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._answering():  # a pipelined head behind a slow answer: its time counts from the answer
            self._arm_head_deadline()
            return
        seconds = self._head_seconds
        self.transport.write(request_timeout_answer(seconds))
        self.transport.close()
        self._warn(self.client[0] if self.client else "", seconds)


class HeadDeadlineH11(_HeadDeadline, H11Protocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # bytes of a head not complete yet
            self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


HeadDeadlineProtocol: type[asyncio.Protocol] = HeadDeadlineH11

if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadDeadlineHttpTools(_HeadDeadline, HttpToolsProtocol):
        def data_received(self, data: bytes) -> None:
            if not self._answering():  # bytes after an answer (or before any): a head under way
                self._arm_head_deadline()
            super().data_received(data)

        def on_message_begin(self) -> None:  # a pipelined head begins behind one being answered
            super().on_message_begin()
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()

        def _answering(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

    HeadDeadlineProtocol = HeadDeadlineHttpTools
