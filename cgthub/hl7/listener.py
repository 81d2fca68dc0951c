"""The MLLP listener: many connections, one group commit, ACK only after the commit.

Frames from every connection go to one queue. A committer takes everything that queued up while
the previous batch was being committed (up to `batch_max`; optionally waiting `batch_window` for
more while other connections are open), archives and (unless archive-only) maps and applies it in ONE
transaction, and only then answers each message: AA once it is
durably committed, AE when it is archived but quarantined, AR when it cannot be read or is not a
type the hub handles. A resend of a message whose ACK was lost is recognised (sending facility +
MSH-10) and acknowledged again without being applied twice. Shutdown stops accepting, lets the
committer finish what is queued, and answers it.

The transaction runs on the event loop's own thread. Senders that wait for their ACKs have nothing
to send meanwhile, so a worker thread would overlap nothing, and handing the batch to one and the
result back cost about a quarter of a millisecond per group commit (`bench/hl7_bench.py`, 8 senders).
Frames that do arrive meanwhile wait in the socket buffers and join the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from cgthub.hl7 import inbound
from cgthub.hl7.ack import build_ack
from cgthub.hl7.mllp import FrameDecoder, Oversized, Truncated, frame
from cgthub.store import session_scope

log = logging.getLogger(__name__)


@dataclass
class ListenerStats:
    connections: int = 0
    messages: int = 0
    batches: int = 0
    rejected_frames: int = 0
    idle_closed: int = 0


class MllpListener:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        database_url: str | None = None,
        apply: bool = True,
        max_message_bytes: int = 1024 * 1024,
        idle_timeout: float = 300.0,
        batch_window: float = 0.002,
        batch_max: int = 500,
    ) -> None:
        self.host, self.port = host, port
        self.database_url = database_url
        self.apply = apply
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.batch_window, self.batch_max = batch_window, batch_max
        self.stats = ListenerStats()
        self._queue: asyncio.Queue[tuple[inbound.Received, asyncio.Future[bytes]] | None] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._committer: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._committer = asyncio.create_task(self._commit_loop())
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listener on %s:%s (%s)", self.host, self.port, "apply" if self.apply else "archive only")
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
        if self._committer is not None:
            await self._committer
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # connections -------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        decoder = FrameDecoder(self.max_message_bytes)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):  # no task per read, as wait_for makes
                        data = await reader.read(65536)
                except TimeoutError:
                    self.stats.idle_closed += 1
                    break
                if not data:
                    break
                pending: list[asyncio.Future[bytes]] = []
                for message in decoder.feed(data):
                    if isinstance(message, Truncated) and message.payload.strip():
                        self.stats.rejected_frames += 1
                        reason = f"frame cut short by a new start block after {message.size} bytes; resend it"
                        pending.append(self._submit(self._unreadable(message.payload, reason)))
                    elif isinstance(message, Oversized | Truncated):
                        # Too large to keep (the limit protects the hub) or empty: answered, not archived.
                        self.stats.rejected_frames += 1
                        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                        reason = (
                            f"message of {message.size} bytes exceeds the limit of {message.limit} bytes"
                            if isinstance(message, Oversized)
                            else "empty frame cut short by a new start block"
                        )
                        done.set_result(build_ack(None, "AR", reason))
                        pending.append(done)
                    else:
                        pending.append(self._submit(inbound.read(message)))
                for future in pending:
                    writer.write(frame(await future))
                await writer.drain()
            leftover = decoder.unfinished()
            if leftover is not None and leftover.payload.strip():
                # The sender went away mid-frame: nothing can be answered, but what came is kept.
                self.stats.rejected_frames += 1
                reason = f"the connection ended {leftover.size} bytes into a frame that never closed"
                await self._submit(self._unreadable(leftover.payload, reason))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    @staticmethod
    def _unreadable(payload: bytes, reason: str) -> inbound.Received:
        """A broken frame, to be archived and quarantined with `reason` like any unreadable message."""
        return inbound.Received(payload, inbound.UNPARSEABLE, None, reason)

    def _submit(self, message: inbound.Received) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((message, future))
        return future

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
            # then wait up to `batch_window` for the other open connections' next messages. Senders
            # that wait for each ACK would otherwise fall into alternating batches of 1 and n-1.
            deadline = loop.time() + self.batch_window
            while len(batch) < self.batch_max:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline or len(batch) >= len(self._connections):
                        break
                    try:
                        async with asyncio.timeout_at(deadline):
                            item = await self._queue.get()
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            messages = [m for m, _f in batch]
            try:
                acks = self._commit(messages)
            except Exception as exc:  # the transaction failed: nothing is committed, so nothing is ACKed AA
                log.exception("MLLP batch of %d failed to commit", len(batch))
                acks = [
                    build_ack(m.payload, "AE", f"not stored, please resend: {type(exc).__name__}") for m in messages
                ]
            for (_m, future), ack in zip(batch, acks, strict=True):
                if not future.done():
                    future.set_result(ack)
            self.stats.messages += len(batch)
            self.stats.batches += 1

    def _commit(self, messages: list[inbound.Received]) -> list[bytes]:
        with session_scope(self.database_url) as session:
            if self.apply:
                return inbound.apply(session, messages, "mllp")
            return inbound.archive_only(session, messages, "mllp")
