"""The MLLP listener: many connections, one group commit, ACK only after the commit.

Frames from every connection go to one queue. A committer takes everything that queued up while
the previous batch was being committed (up to `batch_max`), waits for the next message of each
connection that sent its last one within `batch_window` of its ACK (or is new) as long as messages
keep coming, up to a window after the last and no longer in all than the last commit took,
archives and (unless archive-only) maps and applies it in ONE transaction, and only then answers
each message: AA once it is durably committed, AE when it is archived but quarantined, AR when it
cannot be read or is not a type the hub handles. Whether a sender answers at once is judged on
the time the listener sat idle between its ACK and its next message: its own commits and other
connections' frames, when it could read nothing, do not count against the sender. While a group
is open the committer sleeps; it is woken when the last connection it waits for has sent (or has
closed), when the group is full, when the window after the last message ends, or at shutdown, not
once for every message that comes meanwhile. A resend of a message whose ACK was lost is
recognised (sending facility + MSH-10) and acknowledged again without being applied twice.
Shutdown stops accepting, lets the committer finish what is queued, and answers it.

What a sender can make the listener hold is bounded: at most `max_connections` connections (more
are closed as they arrive), a frame must end within `frame_timeout` of its start block however
slowly its bytes trickle in, a connection with no frame under way is closed after `idle_timeout`
(bytes outside a frame do not count), and the bytes held for unfinished frames and unanswered
messages across all connections stay under `max_buffered_bytes`: a read that would go over it
closes its connection, unanswered, so the sender resends later. A connection has at most
`max_in_flight` messages awaiting a commit: the rest of what it sent waits, read but unparsed, until
those are answered, so a sender that sends thousands of frames without waiting for ACKs (tiny
frames of a few bytes each, every one answered with about 200) queues no more than that ahead of
another sender's message, and its ACKs back up only that far. Memory freed by a burst of large
frames is handed back to the operating system.

Each connection is an `asyncio.Protocol` (`_Connection`, 6 December): the transport hands its bytes
to `data_received`, which feeds the frame decoder at once, where a task awaiting each read of an
asyncio stream paid a future, a task switch and a timeout's timer for every message. One timer a
connection keeps both deadlines, set again only when a deadline comes sooner than it or when it
goes off early. The committer writes the ACKs of a group it has committed; the connections read on
in one callback after it, once it has waited for its next message, so the sockets are polled
between two commits and senders that pipeline cannot have every commit to themselves.

The transaction runs on the event loop's own thread. Senders that wait for their ACKs have nothing
to send meanwhile, so a worker thread would overlap little, and handing the batch to one and the
result back cost about a quarter of a millisecond per group commit (`bench/hl7_bench.py`, 8 senders).
Frames that do arrive meanwhile wait in the socket buffers and join the next batch. Re-measured on
4 December 2026 (`bench/mllp_latency_bench.py`, a shared machine at a load average of 11-22, so
indicative only): with the commit in a worker thread 64 closed-loop senders shared commits 31-32
to one (19-27 without) at 48-65% of the file drop (25-47%), but 8 senders only 4.1-4.3 (6.0-6.3),
and at a load of 10 (the commit's time counted as busy there too) 64 senders 32 to a commit were
no faster (506-679 msg/s against 526-747 at 21-23 to one); not adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy.orm import configure_mappers

from cgthub import archive, metrics, sites
from cgthub import health as hub_health
from cgthub.errors import Rejection
from cgthub.hl7 import inbound
from cgthub.hl7.ack import answer, build_ack
from cgthub.hl7.connection_limits import PerAddressLimit
from cgthub.hl7.event_loop import running_loop_name
from cgthub.hl7.mllp import FrameDecoder, Oversized, Truncated, frame
from cgthub.settings import SettingError, get_settings
from cgthub.sites import SiteRegistryError
from cgthub.store import session_scope

log = logging.getLogger(__name__)

READ_SIZE = 65536
MEBIBYTE = 1024 * 1024
TRIM_AFTER_FREEING = 8 * MEBIBYTE  # bytes released since the last trim before memory is handed back
WARNING_INTERVAL = 10.0  # seconds between two warnings of one kind: a flood is not logged line by line


# A message awaiting its group commit: what came, the turn its ACK goes to and its place there, and
# when it came (perf_counter).
_Queued = tuple[inbound.Received, "_Turn", int, float]


@dataclass
class ListenerStats:
    connections: int = 0
    messages: int = 0
    batches: int = 0
    rejected_frames: int = 0
    idle_closed: int = 0
    refused_connections: int = 0  # closed on arrival: `max_connections` were open
    frame_deadline_closed: int = 0  # a frame did not end within `frame_timeout`
    buffer_cap_closed: int = 0  # a read would have taken the held bytes over `max_buffered_bytes`
    peak_buffered_bytes: int = 0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which returns freed heap pages to the system (None elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def _warm(apply: bool) -> None:
    """Do before the first sender connects what its first message would otherwise wait for, with
    every message behind it: the mappings in force compiled, the ORM's mappers configured (SQLAlchemy
    does it at the first query), the archive key's cipher set up and the site registry read. A file
    or a key that does not load stops nothing: the first message meets the error, as before."""
    configure_mappers()
    with contextlib.suppress(SettingError):
        archive.seal(b"", b"")
    if apply:
        from cgthub.mapping import registry

        registry.warm("hl7")
        with contextlib.suppress(SiteRegistryError):
            sites.registry()


def _freeze_warm_up() -> None:
    """In a process that froze what its start-up made (`runtime.tune_gc`), freeze what the warm-up
    made as well: otherwise the collector's older generations hold it (about 22,000 objects in a
    fresh process; 137,000 in the bench's, which builds its database first) and each of their
    collections scans it all again on the event loop while every sender waits for its ACK (41 ms of
    CPU a generation-1 collection, 48 ms a full one in the bench's; under 1 ms once frozen). A
    process that did not opt in is left alone."""
    if gc.get_freeze_count():
        gc.collect(1)  # the warm-up's own short-lived cycles are freed, not kept for good
        gc.freeze()


class MllpListener:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        database_url: str | None = None,
        apply: bool = True,
        max_message_bytes: int = MEBIBYTE,
        idle_timeout: float = 300.0,
        frame_timeout: float = 60.0,
        max_connections: int = 128,
        max_buffered_bytes: int = 64 * MEBIBYTE,
        batch_window: float = 0.002,
        batch_max: int = 500,
        max_in_flight: int = 32,
        max_connections_per_address: int | None = None,  # None: CGTHUB_MLLP_MAX_CONNECTIONS_PER_ADDRESS
    ) -> None:
        if max_buffered_bytes < max_message_bytes + READ_SIZE:
            raise ValueError(
                f"the buffer cap ({max_buffered_bytes} bytes) must hold a largest message ({max_message_bytes} bytes) "
                f"and one read ({READ_SIZE} bytes)"
            )
        if max_connections < 1 or max_in_flight < 1 or idle_timeout <= 0 or frame_timeout <= 0:
            raise ValueError("max_connections, max_in_flight, idle_timeout and frame_timeout must be positive")
        self.host, self.port = host, port
        self.database_url = database_url
        self.apply = apply
        self.max_message_bytes = max_message_bytes
        self.idle_timeout, self.frame_timeout = idle_timeout, frame_timeout
        self.max_connections, self.max_buffered_bytes = max_connections, max_buffered_bytes
        self.batch_window, self.batch_max = batch_window, batch_max
        self.max_in_flight = max_in_flight
        self.per_address = PerAddressLimit(
            max_connections_per_address or get_settings().mllp_max_connections_per_address
        )
        self.stats = ListenerStats()
        self.buffered_bytes = 0  # held for unfinished frames and unanswered messages, all connections
        self._freed_since_trim = 0
        self._warn_refused = _Throttled("refused MLLP connections on arrival: %d open, the limit is %d")
        self._warn_buffer_cap = _Throttled("closed MLLP connections unanswered: %d bytes held, the cap is %d")
        self._warn_frame_deadline = _Throttled("closed MLLP connections: a frame did not end within %s s")
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._committer: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._awaited: set[_Pace] = set()  # connections whose next message a group commit waits for
        self._busy = 0.0  # seconds the event loop has spent on the listener's own work, in all
        self._last_commit = 0.0  # seconds the last group commit took
        self._last_arrival = 0.0  # when (loop time) the last message came, on any connection
        self._group_waiting: asyncio.Future[None] | None = None  # the committer's, while a group is open
        self._group_room = 0  # messages the open group can still take
        self._committed: list[_Turn] = []  # turns the last group commit completed, answered after it
        self.event_loop = ""  # the loop it started on: uvloop or asyncio (cgthub.hl7.event_loop)

    async def start(self) -> tuple[str, int]:
        _warm(self.apply)
        _freeze_warm_up()
        self.event_loop = running_loop_name()
        self._committer = asyncio.create_task(self._commit_loop())
        # Room in the kernel's queue for every connection the listener would serve, arriving at once (a
        # restart or failover: all senders reconnect): asyncio's default of 100 dropped the others'
        # handshakes, and each such sender waited a second for its retry before its first message.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port, backlog=max(100, self.max_connections)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        mode = "apply" if self.apply else "archive only"
        log.info("MLLP listener on %s:%s (%s, event loop %s)", self.host, self.port, mode, self.event_loop)
        return self.host, self.port

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop accepting, finish and answer what is queued, then close every connection."""
        if self._server is not None:
            self._server.close()
        await self._queue.put(None)
        self._close_group()
        if self._committer is not None:
            await self._committer
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # connections -------------------------------------------------------------------------------
    async def _connection(self, connection: _Connection) -> None:
        """A connection's life, admitted or refused as it arrives; its bytes are read by `_Connection`'s
        callbacks meanwhile, not by this task (which holds its per-address count and awaits its end)."""
        if len(self._connections) >= self.max_connections:
            self._refuse(connection.transport)
            return
        if not self.per_address.admit(connection.writer()):  # its address has its cap open: closed, logged, counted
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        pace = _Pace(asyncio.get_running_loop().time(), self._busy)
        self._awaited.add(pace)  # a new connection is waited for, as one that answers at once
        try:
            connection.open(pace)
            await connection.ended
        except asyncio.CancelledError:
            pass
        finally:
            connection.end()  # at shutdown: what it still awaits is not answered
            self._awaited.discard(pace)
            self._close_group_if_complete()  # it may have been the last one the open group waited for
            connection.held.set(0)
            self._connections.discard(task)
            connection.transport.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await connection.closed
            self._return_freed_memory()

    def _read_frames(self, decoder: FrameDecoder, data: bytes) -> tuple[_Turn | None, int]:
        """The turn of the frames `data` completes (None if it completes none), at most `max_in_flight`
        of them, and the bytes of those that await a commit."""
        turn = _Turn()
        acks = turn.acks
        waiting = 0
        for message in decoder.feed(data):
            if isinstance(message, Truncated) and message.payload.strip():
                self.stats.rejected_frames += 1
                reason = f"frame cut short by a new start block after {message.size} bytes; resend it"
                self._submit(self._unreadable(message.payload, reason), turn)
                waiting += len(message.payload)
            elif isinstance(message, Oversized | Truncated):
                # Too large to keep (the limit protects the hub) or empty: answered, not archived.
                self.stats.rejected_frames += 1
                if isinstance(message, Oversized):
                    rejection = Rejection.TOO_LARGE  # ERR-3 207, as the README's ACK table says
                    reason = f"message of {message.size} bytes exceeds the limit of {message.limit} bytes"
                else:
                    rejection, reason = Rejection.UNREADABLE, "empty frame cut short by a new start block"
                acks.append(answer(None, rejection, reason))
            else:
                self._submit(inbound.read(message), turn)
                waiting += len(message)
            if len(acks) >= self.max_in_flight:
                break  # the rest stays in the decoder, held and counted, for this connection's next turn
        return (turn if acks else None), waiting

    def _arrived(self, pace: _Pace, now: float) -> None:
        """A message came on this connection: it is no longer waited for, and whether it came
        within a batch window of its last ACK says whether to wait for its next one.

        The time the event loop spent on the listener's own work since that ACK (group commits,
        other connections' frames and ACKs) does not count against the sender: meanwhile nothing
        was read, so a message that came at once is only seen when that work is done."""
        if pace.answered_at is not None:
            busy = self._busy - pace.busy_at
            pace.quick = now - pace.answered_at - busy < self.batch_window
            pace.answered_at = None
        self._awaited.discard(pace)
        self._last_arrival = asyncio.get_running_loop().time()
        self._close_group_if_complete()

    def _answered(self, pace: _Pace, now: float) -> None:
        """This connection's ACKs are written: a sender that answers at once is waited for."""
        pace.answered_at, pace.busy_at = now, self._busy
        if pace.quick:
            self._awaited.add(pace)

    def _close_group_if_complete(self) -> None:
        """Wake the committer when the open group has all it waits for: every awaited connection's
        next message, or as many messages as it can take. Until then a message only joins the queue:
        the committer is not woken (nor its deadline timer set again) once for every message."""
        waiting = self._group_waiting
        if waiting is not None and (not self._awaited or self._queue.qsize() >= self._group_room):
            _wake(waiting)

    def _close_group(self) -> None:
        if self._group_waiting is not None:
            _wake(self._group_waiting)

    def _stop_waiting(self) -> None:
        """A batch window passed without these connections' next messages: wait for them no more
        until one comes back within a window of its ACK."""
        for pace in self._awaited:
            pace.quick = False
        self._awaited.clear()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Close a connection over `max_connections` at once."""
        transport.abort()
        self.stats.refused_connections += 1
        self._warn_refused(len(self._connections), self.max_connections)

    def _account(self, change: int) -> None:
        self.buffered_bytes += change
        if change < 0:
            self._freed_since_trim -= change
        elif self.buffered_bytes > self.stats.peak_buffered_bytes:
            self.stats.peak_buffered_bytes = self.buffered_bytes

    def _return_freed_memory(self) -> None:
        """Hand the heap pages large frames left free back to the system: the allocator keeps them otherwise."""
        if self._freed_since_trim >= TRIM_AFTER_FREEING and _TRIM is not None:
            self._freed_since_trim = 0
            _TRIM(0)

    @staticmethod
    def _unreadable(payload: bytes, reason: str) -> inbound.Received:
        """A broken frame, to be archived and quarantined with `reason` like any unreadable message."""
        return inbound.Received(payload, inbound.UNPARSEABLE, None, reason)

    def _submit(self, message: inbound.Received, turn: _Turn) -> None:
        """Queue `message` for the group commit; its ACK goes to the next place in `turn`."""
        metrics.HL7_RECEIVED.inc()
        index = len(turn.acks)
        turn.acks.append(b"")
        turn.remaining += 1
        # When it came, for its ACK's latency, observed as the ACK is set (not by a done-callback, a
        # task of the loop's of its own for every message).
        self._queue.put_nowait((message, turn, index, time.perf_counter()))

    def health(self) -> tuple[bool, dict[str, object]]:
        """(ready, state) for the listener's HTTP port: ready while it accepts and its database answers."""
        accepting = self._server is not None and self._server.is_serving()
        database = hub_health.database(self.database_url)
        state: dict[str, object] = {
            "status": "ok" if accepting and database["status"] == "ok" else "unavailable",
            "listener": {"status": "ok" if accepting else "stopped", "connections": len(self._connections)},
            "database": database,
            "mode": "apply" if self.apply else "archive only",
            "event_loop": self.event_loop,
            "limits": {
                "max_connections": self.max_connections,
                "max_in_flight": self.max_in_flight,
                "max_connections_per_address": self.per_address.limit,
            },
        }
        return state["status"] == "ok", state

    # group commit ------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            # Group commit: take everything that queued up while the last batch was being committed,
            # then wait for the next message of each connection that sends its next message as soon
            # as its ACK is back (or is new), as long as messages keep coming: up to `batch_window`
            # after the last one, and no longer in all than the last commit took (a sender slower
            # than that joins the next). Senders that wait for each ACK would otherwise fall into
            # alternating batches (1 and n-1, or n/2 and n/2), each paying a commit's fixed cost;
            # senders on a schedule of their own (most hospital interfaces) are not waited for,
            # which would only add the window to every ACK.
            # The committer sleeps while the group is open: `_close_group_if_complete` wakes it when
            # the group has all it waits for, and a timer at the window's end (set again when
            # messages came meanwhile), not once for every message that comes.
            started = loop.time()
            latest = started + max(self.batch_window, self._last_commit)
            while True:
                stopping = self._take_queued(batch)
                if stopping or len(batch) >= self.batch_max or not self._awaited:
                    break
                deadline = min(max(self._last_arrival, started) + self.batch_window, latest)
                if loop.time() >= deadline:
                    self._stop_waiting()
                    break
                await self._open_until(deadline, self.batch_max - len(batch))
            began = loop.time()
            self._commit_and_answer(batch)
            self._last_commit = loop.time() - began
            self._busy += self._last_commit
            self._answer_committed()
            # Nothing of this batch stays referenced while the next is awaited: its frames may be large.
            del first, batch

    def _take_queued(self, batch: list[_Queued]) -> bool:
        """Move what is queued into `batch`, up to `batch_max`; True when the stop sign was among it."""
        queue = self._queue
        while len(batch) < self.batch_max and not queue.empty():
            item = queue.get_nowait()
            if item is None:
                return True
            batch.append(item)
        return False

    async def _open_until(self, deadline: float, room: int) -> None:
        """Wait until the group is complete (`_close_group_if_complete`) or `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[None] = loop.create_future()
        self._group_waiting, self._group_room = waiting, room
        timer = loop.call_at(deadline, _wake, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._group_waiting = None

    def _commit_and_answer(self, batch: list[_Queued]) -> None:
        messages = [m for m, _t, _i, _at in batch]
        try:
            acks = self._commit(messages)
        except Exception as exc:  # the transaction failed: nothing is committed, so nothing is ACKed AA
            log.exception("MLLP batch of %d failed to commit", len(batch))
            acks = [build_ack(m.payload, "AE", f"not stored, please resend: {type(exc).__name__}") for m in messages]
        now = time.perf_counter()
        committed = self._committed
        for (_m, turn, index, arrived), ack in zip(batch, acks, strict=True):
            turn.acks[index] = ack
            turn.remaining -= 1
            if not turn.remaining:
                committed.append(turn)
            metrics.observe_ack(ack, now - arrived)
        self.stats.messages += len(batch)
        self.stats.batches += 1

    def _answer_committed(self) -> None:
        """Write the ACKs of the turns the last group commit completed, once its time is counted as
        busy (`_answered` notes how busy the listener was when a sender got its ACKs). The connections
        go on with what they sent meanwhile in a callback of their own, after the committer has waited
        for the next message: done here, their next frames would be queued before the event loop polled
        the sockets again, and senders that pipeline would have every commit to themselves."""
        turns, self._committed = self._committed, []
        going_on = [connection for turn in turns if (connection := turn.connection) and connection.committed(turn)]
        if going_on:
            asyncio.get_running_loop().call_soon(_go_on, going_on)

    def _commit(self, messages: list[inbound.Received]) -> list[bytes]:
        with session_scope(self.database_url) as session:
            if self.apply:
                return inbound.apply(session, messages, "mllp")
            return inbound.archive_only(session, messages, "mllp")


def _go_on(connections: list[_Connection]) -> None:
    """Let answered connections read on; one that fails at it is closed, the others go on."""
    for connection in connections:
        try:
            connection.pump()
        except Exception:
            log.exception("MLLP connection closed: reading its next frames failed")
            connection.abort()


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


class _Turn:
    """The frames one read let through on one connection (at most `max_in_flight`), answered together
    once every one has its ACK: those awaiting the group commit count in `remaining`."""

    __slots__ = ("acks", "connection", "remaining")

    def __init__(self) -> None:
        self.acks: list[bytes] = []
        self.remaining = 0
        self.connection: _Connection | None = None


class _Connection(asyncio.Protocol):
    """One MLLP connection, read as its bytes come: the transport hands them to `data_received`, which
    feeds the frame decoder at once. Awaiting each read (asyncio's streams) cost a future, a task
    switch and a timeout's timer a message, a sixth of what the listener's thread spent on one.

    What the listener holds a sender to is kept here as its coroutine kept it. One turn at a time: the
    frames a read completes (at most `max_in_flight`) are queued for the group commit, and what
    arrives meanwhile waits unparsed in `backlog` (reading pauses while it holds more than two reads,
    as the stream's buffer did) until their ACKs are written (`committed`). The idle and frame
    deadlines are checked by one timer, set again only when a deadline comes sooner than it or when
    it goes off early (a turn awaited meanwhile, or bytes came). ACKs the socket does not take at once
    are drained before the next turn, closing the connection after `idle_timeout`."""

    def __init__(self, listener: MllpListener) -> None:
        loop = asyncio.get_running_loop()
        self.listener = listener
        self.loop = loop
        self.transport: asyncio.Transport
        self._writer: asyncio.StreamWriter | None = None
        self.decoder = FrameDecoder(listener.max_message_bytes)
        self.held = _Held(listener)
        self.pace: _Pace | None = None  # set when it is admitted
        self.turn: _Turn | None = None  # the frames awaiting their ACKs
        self.backlog: deque[bytes] = deque()  # received while a turn was answered, not yet read
        self.backlog_bytes = 0
        self.more = False  # the last turn was full: more complete frames may wait in the decoder
        self.eof = self.lost = self.finishing = self.reading_paused = self.writing_paused = False
        self.draining_since: float | None = None  # ACKs the socket did not take wait since then
        self.idle_since = loop.time()  # the connection opened or its last frame was answered
        self.frame_began: float | None = None  # when the frame now under way sent its start block
        self.timer: asyncio.TimerHandle | None = None
        self.ended: asyncio.Future[None] = loop.create_future()  # nothing more is read or answered
        self.closed: asyncio.Future[None] = loop.create_future()  # the transport is gone

    # the transport's callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's (in C) does not derive from asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        # Nothing is read before it is admitted: asyncio's loop keeps this pause, uvloop starts reading
        # once this returns, and `data_received` holds that read and pauses again.
        self.transport.pause_reading()
        self.loop.create_task(self.listener._connection(self))

    def data_received(self, data: bytes) -> None:
        if self.finishing or self.ended.done():
            return
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.pace is None:  # not admitted yet: held unread until `open` (uvloop reads on after connection_made)
            self.transport.pause_reading()
            return
        self.pump()
        if self.backlog_bytes > 2 * READ_SIZE and not self.reading_paused and not self.ended.done():
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.pace is not None:  # admitted: before that, `open` reads what came and the end
            self.pump()
        return True  # kept open for writing: the ACKs of what it sent before are still written

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        if self.turn is None:  # a turn awaiting its commit still holds its bytes until answered
            self.end()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.draining_since is not None and not self.ended.done():
            self.draining_since = None
            self._drained()
            self.pump()

    # the listener's side --------------------------------------------------------------------------
    def writer(self) -> asyncio.StreamWriter:
        """The transport as `PerAddressLimit.admit` takes it, kept while the connection lives (a
        stream writer collected unclosed would close it)."""
        self._writer = asyncio.StreamWriter(self.transport, self, None, self.loop)
        return self._writer

    def open(self, pace: _Pace) -> None:
        """Admitted: read what it sends from now on."""
        if self.ended.done():
            return
        self.pace = pace
        self.idle_since = self.loop.time()
        self.transport.resume_reading()
        self.pump()  # what came before (uvloop reads one read ahead of admission), else the deadline armed

    def committed(self, turn: _Turn) -> bool:
        """The group commit answered the turn's last message: write its ACKs. True when it has more
        to read (`pump`): frames a full turn left, bytes that came meanwhile, its end."""
        if self.ended.done():
            return False
        self.turn = None
        if self.finishing:  # the unfinished frame left when it ended is archived: nothing to answer
            self.end()
            return False
        self._answer(turn)
        if self.more or self.backlog or self.eof or self.lost:
            return True
        if self.draining_since is None:
            self._arm()
        return False

    def end(self) -> None:
        """Nothing more is read or answered; the listener's task closes the transport."""
        self.finishing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.ended.done():
            self.ended.set_result(None)

    def abort(self) -> None:
        self.transport.abort()
        self.end()

    # reading ----------------------------------------------------------------------------------------
    def pump(self) -> None:
        """Go on while no turn awaits its ACKs: the frames a full turn left in the decoder, then what
        was received, a read (up to `READ_SIZE`) at a time, then the end of the connection."""
        loop = self.loop
        while self.turn is None and self.draining_since is None and not self.finishing:
            if self.lost:
                self.end()
                return
            if self.more:
                self.more = False
                self._frames(b"", loop.time())
            elif self.backlog:
                data = self.backlog.popleft()
                if len(data) > READ_SIZE:
                    self.backlog.appendleft(data[READ_SIZE:])
                    data = data[:READ_SIZE]
                self.backlog_bytes -= len(data)
                if self.reading_paused and self.backlog_bytes <= READ_SIZE and not self.eof:
                    self.reading_paused = False
                    self.transport.resume_reading()
                if not self._read(data):
                    return
            elif self.eof:
                self._finish()
                return
            else:
                self._arm()
                return
            turn = self.turn
            if turn is not None and not turn.remaining:  # oversized or empty frames only: answered now
                self.turn = None
                self._answer(turn)

    def _read(self, data: bytes) -> bool:
        """One read: False when it would take the bytes held over the cap (the connection is ended
        unanswered: what it sent of an unfinished frame is dropped, it was never acknowledged)."""
        listener = self.listener
        resumed = self.loop.time()
        if listener.buffered_bytes + len(data) > listener.max_buffered_bytes:
            listener.stats.buffer_cap_closed += 1
            listener._warn_buffer_cap(listener.buffered_bytes, listener.max_buffered_bytes)
            self.end()
            return False
        self.held.set(self.held.bytes + len(data))
        self._frames(data, resumed)
        return True

    def _frames(self, data: bytes, resumed: float) -> None:
        """Queue the frames `data` completes (with those left in the decoder) as the next turn."""
        listener, loop = self.listener, self.loop
        turn, waiting = listener._read_frames(self.decoder, data)
        self.held.set(self.decoder.pending + waiting)
        if turn is None:
            if self.decoder.in_frame and self.frame_began is None:
                self.frame_began = loop.time()
            listener._busy += loop.time() - resumed
            return
        assert self.pace is not None
        turn.connection = self
        self.turn = turn
        listener._arrived(self.pace, resumed)
        listener._busy += loop.time() - resumed

    def _answer(self, turn: _Turn) -> None:
        """Write the turn's ACKs; the next turn waits until the socket has taken them."""
        listener, loop = self.listener, self.loop
        acks = turn.acks
        resumed = loop.time()
        if not self.lost:
            self.transport.write(frame(acks[0]) if len(acks) == 1 else b"".join(map(frame, acks)))
        answered = loop.time()
        listener._busy += answered - resumed
        assert self.pace is not None
        listener._answered(self.pace, answered)
        self.more = len(acks) >= listener.max_in_flight
        if self.writing_paused and not self.lost:  # a sender that does not read its ACKs
            self.draining_since = answered
            self._arm()
        else:
            self._drained()

    def _drained(self) -> None:
        """The turn's ACKs are with the socket: what it holds now is its unfinished frame, and its
        deadlines count from now."""
        self.held.set(self.decoder.pending)
        self.idle_since = self.loop.time()
        self.frame_began = self.idle_since if self.decoder.in_frame else None

    def _finish(self) -> None:
        """The connection ended or ran out of time: what came of a frame left open is archived (and
        quarantined) though nothing can be answered; it ends once that is committed."""
        listener = self.listener
        self.finishing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.eof and not self.lost:
            self.transport.pause_reading()
        leftover = self.decoder.unfinished()
        if leftover is None or not leftover.payload.strip():
            self.end()
            return
        listener.stats.rejected_frames += 1
        reason = f"the connection ended {leftover.size} bytes into a frame that never closed"
        self.held.set(len(leftover.payload))
        turn = _Turn()
        turn.connection = self
        self.turn = turn
        listener._submit(listener._unreadable(leftover.payload, reason), turn)

    # deadlines --------------------------------------------------------------------------------------
    def _deadline(self) -> float:
        listener = self.listener
        if self.draining_since is not None:
            return self.draining_since + listener.idle_timeout
        if self.frame_began is not None:
            return self.frame_began + listener.frame_timeout
        return self.idle_since + listener.idle_timeout

    def _arm(self) -> None:
        """Have the timer go off by the deadline now in force; one that goes off sooner is kept."""
        deadline = self._deadline()
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.finishing or self.turn is not None:
            return  # no deadline while a turn awaits its commit: answering it sets the next one
        listener = self.listener
        if self.loop.time() < self._deadline():
            self._arm()
        elif self.draining_since is not None:
            listener.stats.idle_closed += 1
            self.abort()
        elif self.frame_began is None:
            listener.stats.idle_closed += 1
            self._finish()
        else:
            listener.stats.frame_deadline_closed += 1
            listener._warn_frame_deadline(listener.frame_timeout)
            self._finish()


class _Pace:
    """When a connection's last ACK was written (and how long the listener had been busy by then),
    and whether it sent its next message within a batch window of an ACK last time (a sender the
    group commit waits for)."""

    __slots__ = ("answered_at", "busy_at", "quick")

    def __init__(self, now: float, busy: float) -> None:
        self.answered_at: float | None = now
        self.busy_at = busy
        self.quick = True


class _Held:
    """The bytes one connection holds, kept in its listener's total as they change."""

    __slots__ = ("_listener", "bytes")

    def __init__(self, listener: MllpListener) -> None:
        self.bytes = 0
        self._listener = listener

    def set(self, count: int) -> None:
        self._listener._account(count - self.bytes)
        self.bytes = count


class _Throttled:
    """A warning logged at most once per `WARNING_INTERVAL`, saying how often it happened meanwhile."""

    def __init__(self, message: str) -> None:
        self.message = message + " (%d since the last such warning)"
        self.count = 0
        self.next_at = 0.0

    def __call__(self, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next_at:
            log.warning(self.message, *args, self.count)
            self.count, self.next_at = 0, now + WARNING_INTERVAL
