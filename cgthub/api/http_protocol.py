"""uvicorn's HTTP protocol with deadlines on each request's head and body (slowloris).

uvicorn bounds only idle keep-alive time, and every byte received cancels that timer: a client that
sends one header byte every few seconds (or never sends a byte) holds its connection and a file
descriptor for as long as it likes, and a few thousand such clients exhaust the process. ASGI
middleware cannot help: it runs once the head has been parsed, and an app waiting in `receive()` for
a body has no clock. `GuardedHttpProtocol` is uvicorn's own protocol (httptools when installed, h11
otherwise, as uvicorn's `auto` picks) with two timers more: a request's head must be complete within
CGTHUB_API_HEADER_TIMEOUT seconds (10 by default) of the connection opening or of its first bytes
after a previous answer, and its body (Content-Length or chunked) within CGTHUB_API_BODY_TIMEOUT
seconds (30 by default) of the head's end. A late head, or a late body the app has not begun to
answer, is answered 408; either way the connection is closed, and uvicorn then hands an app waiting
in `receive()` an `http.disconnect`. An answer's unsent bytes must shrink within CGTHUB_API_WRITE_TIMEOUT
seconds (30 by default), or the connection is aborted and they are dropped: a client that asks and never
reads held the connection, the app's task waiting to write and the answer in memory forever (asyncio's
close() waits for them to be sent); a slow reader that reads is kept. A body may hold at most
CGTHUB_API_MAX_BODY_BYTES (Starlette would read any size into memory): a Content-Length past it is
answered 413 at the head's end, before any of the body is handed on, and a chunked body growing past it
is cut off there (413 unless the app has begun answering); either way the connection is closed and the
app never sees the excess bytes. A request refused so while pipelined behind another (httptools parses
a whole packet at once) is answered 413 after the answers owed before it, and none of it reaches the app.
Pass it as `uvicorn.Config(http=GuardedHttpProtocol)`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Iterable
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cgthub.settings import get_settings
from cgthub.warning_per_address import WarningPerAddress

log = logging.getLogger(__name__)


def _refusal(status: str, text: str) -> bytes:
    """A plain-text answer written straight to the socket, closing the connection (no app runs for it)."""
    body = f"{text}\n".encode("ascii")
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def request_timeout_answer(seconds: float, part: Literal["head", "body"] = "head") -> bytes:
    return _refusal("408 Request Timeout", f"request {part} not complete within {seconds:g} s")


def too_large_answer(limit: int) -> bytes:
    return _refusal("413 Content Too Large", f"request body larger than {limit} bytes")


def _declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a head declares, or None (chunked, none, or malformed: the parser refuses that)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _RequestGuard(asyncio.Protocol):
    """The timers both parsers share: the head's, armed when a connection opens, and the body's, armed
    when a head ends; each subclass says when a head begins and ends and when a body ends. First in
    each subclass's bases, so `super()` here is uvicorn's protocol."""

    head_timeout: float | None = None  # seconds; None: CGTHUB_API_HEADER_TIMEOUT
    body_timeout: float | None = None  # seconds; None: CGTHUB_API_BODY_TIMEOUT
    max_body_bytes: int | None = None  # None: CGTHUB_API_MAX_BODY_BYTES
    write_timeout: float | None = None  # seconds; None: CGTHUB_API_WRITE_TIMEOUT
    _warn = WarningPerAddress("closed API connections from %s: no complete request head within %g s", logger=log)
    _warn_body = WarningPerAddress("closed API connections from %s: no complete request body within %g s", logger=log)
    _warn_size = WarningPerAddress("closed API connections from %s: request body larger than %d bytes", logger=log)
    _warn_write = WarningPerAddress("closed API connections from %s: an answer not read for %g s", logger=log)

    # set by uvicorn's protocol this is mixed into
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    cycle: Any  # the request being answered: uvicorn's RequestResponseCycle (h11's or httptools')

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_bytes = 0  # of the request being read
    _refused = False  # a body was too large: the connection is closing, nothing more is parsed
    _refusal_owed = False  # its 413 waits for the answers to the requests pipelined before it
    _write_timer: asyncio.TimerHandle | None = None
    _unsent = 0  # bytes of answers waiting to be sent when the write timer was armed

    def _configured(self, own: float | None, setting: str) -> float:
        """A limit set on the class (tests, a service's own choice), else the hub's Settings value."""
        return own if own is not None else getattr(get_settings(), setting)

    @property
    def _head_seconds(self) -> float:
        return self._configured(self.head_timeout, "api_header_timeout")

    @property
    def _body_seconds(self) -> float:
        return self._configured(self.body_timeout, "api_body_timeout")

    @property
    def _body_limit(self) -> int:
        return int(self._configured(self.max_body_bytes, "api_max_body_bytes"))

    @property
    def _write_seconds(self) -> float:
        return self._configured(self.write_timeout, "api_write_timeout")

    @property
    def _peer(self) -> str:
        return self.client[0] if self.client else ""

    def _head_too_large(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """At a head's end, before the app is started: True (and refused) if its Content-Length is past the cap."""
        self._body_bytes = 0
        declared = _declared_length(headers)
        if declared is None or declared <= self._body_limit:
            return False
        if self._head_waits_behind_an_answer():
            self._owe_refusal()
        else:
            self._refuse_too_large(answer=True)
        return True

    def _body_too_large(self, data: bytes) -> bool:
        """For each piece of a body, before the app sees it: True (and refused) once the body passes the cap."""
        self._body_bytes += len(data)
        if self._body_bytes <= self._body_limit:
            return False
        if self._unqueue_refused_request():
            self._owe_refusal()
        else:
            self._refuse_too_large(answer=self.cycle is None or not self.cycle.response_started)
        return True

    def _head_waits_behind_an_answer(self) -> bool:
        """True if a head just ended behind an earlier request still being answered (pipelined)."""
        return False

    def _unqueue_refused_request(self) -> bool:
        """True (and its app never started) if the request whose body passed the cap waits, queued, behind
        an earlier one's answer."""
        return False

    def _owe_refusal(self) -> None:
        """A refused request pipelined behind an earlier one: nothing more is read or parsed, the earlier
        answers are written whole, and the 413 follows them (`_pay_owed_refusal`)."""
        self._refused = True
        self._refusal_owed = True
        self._disarm_body_deadline()
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def _pay_owed_refusal(self) -> None:
        """After the last answer owed before it: the pipelined request's 413, and the connection closed."""
        self._refusal_owed = False
        self._refuse_too_large(answer=True)

    def _refuse_too_large(self, answer: bool) -> None:
        self._refused = True
        self._disarm_body_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's answer is not written after ours
        if self.transport.is_closing():
            return
        limit = self._body_limit
        if answer:
            self.transport.write(too_large_answer(limit))
        self._close()
        self._warn_size(self._peer, limit)

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self._head_seconds, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body_deadline(self) -> None:
        """From a head's end; a body arriving byte by byte does not move it."""
        if self.transport.get_protocol() is not self:  # upgraded to a websocket: no HTTP body follows
            return
        if self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self._body_seconds, self._body_overdue)

    def _disarm_body_deadline(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._disarm_body_deadline()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)  # uvicorn's: an app waiting in receive() gets http.disconnect

    def _answering(self) -> bool:
        """True while this connection owes an answer to a request whose head did arrive."""
        return self.cycle is not None and not self.cycle.response_complete

    def _waiting_behind_an_answer(self) -> bool:
        """True while the request whose body is timed waits, unread, behind an earlier one's answer."""
        return False

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._answering():  # a pipelined head behind a slow answer: its time counts from the answer
            self._arm_head_deadline()
            return
        seconds = self._head_seconds
        self.transport.write(request_timeout_answer(seconds))
        self._close()
        self._warn(self._peer, seconds)

    def _body_overdue(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self._waiting_behind_an_answer():  # uvicorn stopped reading it: its time counts from then
            self._arm_body_deadline()
            return
        seconds = self._body_seconds
        if self.cycle is None or not self.cycle.response_started:  # else an answer is half-written
            self.transport.write(request_timeout_answer(seconds, "body"))
        self._close()
        self._warn_body(self._peer, seconds)

    def _close(self) -> None:
        """Close once what is written is sent; a client that does not read it is cut off (`_watch_writes`)."""
        self.transport.close()
        self._watch_writes()

    def _watch_writes(self) -> None:
        """From now, the bytes of answers waiting to be sent must shrink within the write deadline, or the
        connection is aborted: a client that asks and never reads its answer would otherwise hold the
        connection, the app's task waiting to write and the buffered bytes forever (asyncio's close()
        waits for them to be sent). Armed when writing pauses or resumes and when an answer ends."""
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent:
            self._unsent = unsent
            self._write_timer = self.loop.call_later(self._write_seconds, self._write_overdue)

    def _write_overdue(self) -> None:
        self._write_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0:
            return
        if unsent < self._unsent:  # the client reads, however slowly: its time counts from now
            self._watch_writes()
            return
        self.transport.abort()  # the unsent bytes are dropped; uvicorn hands a waiting app a disconnect
        self._warn_write(self._peer, self._write_seconds)

    def pause_writing(self) -> None:  # the transport's buffer passed its high-water mark
        super().pause_writing()
        self._watch_writes()

    def resume_writing(self) -> None:  # and fell back below its low-water mark
        super().resume_writing()
        self._watch_writes()

    def on_response_complete(self) -> None:  # its last bytes may still wait to be sent
        super().on_response_complete()  # type: ignore[misc]
        self._watch_writes()


class _CappedConnection(h11.Connection):
    """h11's connection, whose events pass the protocol's body cap before uvicorn sees them: a refused
    head or piece of body is reported as NEED_DATA, so uvicorn starts no app and hands it nothing."""

    def __init__(self, protocol: GuardedH11, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._protocol = protocol

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self._protocol._refused:
            return h11.NEED_DATA
        event = super().next_event()
        if isinstance(event, h11.Request) and self._protocol._head_too_large(event.headers):
            return h11.NEED_DATA
        if isinstance(event, h11.Data) and self._protocol._body_too_large(event.data):
            return h11.NEED_DATA
        return event


class GuardedH11(_RequestGuard, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _CappedConnection(self, self.conn._max_incomplete_event_size)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # closing: the rest of a refused body is dropped unread
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # bytes of a head not complete yet
            self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def handle_events(self) -> None:  # after bytes arrive, and after an answer (a pipelined request)
        super().handle_events()
        if self.conn.their_state is h11.SEND_BODY:  # a head has ended, its body has not
            self._arm_body_deadline()
        else:
            self._disarm_body_deadline()


GuardedHttpProtocol: type[asyncio.Protocol] = GuardedH11

if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(_RequestGuard, HttpToolsProtocol):
        def data_received(self, data: bytes) -> None:
            if self._refused:  # closing: the rest of a refused body is dropped unread
                return
            if not self._answering():  # bytes after an answer (or before any): a head under way
                self._arm_head_deadline()
            super().data_received(data)

        def on_message_begin(self) -> None:  # a pipelined head begins behind one being answered
            super().on_message_begin()
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            if self._refused or self._head_too_large(self.headers):  # no app is started for it
                return
            super().on_headers_complete()
            if not (self.parser.should_upgrade() and self._should_upgrade()):  # a websocket's handshake
                self._arm_body_deadline()

        def on_body(self, body: bytes) -> None:
            if self._refused:
                return
            upgrading = self.parser.should_upgrade() and self._should_upgrade()
            if not upgrading and self._body_too_large(body):
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm_body_deadline()
            if self._refused:
                return
            super().on_message_complete()

        def on_response_complete(self) -> None:
            queued = bool(self.pipeline)
            super().on_response_complete()
            if queued and self._body_timer is not None:  # the queued request's body is read from now
                self._disarm_body_deadline()
                self._arm_body_deadline()
            if self._refusal_owed and not queued:  # the answers before a refused request are all written
                self._pay_owed_refusal()

        def _waiting_behind_an_answer(self) -> bool:
            return bool(self.pipeline)

        # httptools parses a whole packet at once: a request pipelined in it is refused while an earlier
        # one is answered (h11 parses it only after that answer).
        def _head_waits_behind_an_answer(self) -> bool:
            return self._answering() or bool(self.pipeline)  # self.cycle is the earlier request's here

        def _unqueue_refused_request(self) -> bool:
            if self.pipeline and self.pipeline[0][0] is self.cycle:  # the newest queued is the refused one
                self.pipeline.popleft()
                return True
            return False

    GuardedHttpProtocol = GuardedHttpTools
