"""What 8 MLLP senders that each wait for their ACK can reach on this machine with no ingest at all:
the ceiling the listener's figure sits under.

The same hospital process as `bench.hl7_bench` (one event loop, 8 connections, a message, its ACK,
the next) talks to a bare asyncio server built on the listener's own frame decoder, in three modes:

* `echo`: each frame is answered at once. Loopback round trips and the two event loops, nothing else.
* `durable commit`: each round's frames are inserted into a WAL-mode SQLite file with
  synchronous=FULL, as the hub's archive is, in one transaction, and answered after its COMMIT.
  What ACK-after-durable-commit costs when the commit holds only the raw bytes.
* `durable commit, 180 KB`: the same, with as many bytes written per commit as the hub's full
  ingest of 8 messages writes to the WAL (about 44 pages of 4 KB).

With 8 senders a round holds at most 8 messages, so the rate is 8 over the round time: 10,000 msg/s
needs rounds of 0.8 ms, turn-around and fsync included.
Run: .venv/bin/python -m bench.mllp_floor_bench [--messages 8000] [--senders 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor

from bench.hl7_bench import _hospital, durable_sqlite, messages
from cgthub.hl7.mllp import FrameDecoder, frame

ACK = frame(b"MSH|^~\\&|CGTHUB|HUB|EPIC|US-BOS-01|20260303112000||ACK^O01|A1|P|2.5.1\rMSA|AA|1\r")
FULL_INGEST_WAL_BYTES = 44 * 4096  # WAL frames per 8-message commit of the full ingest, measured


class FloorServer:
    """An MLLP server that does nothing but answer: at once, or after one durable commit a round."""

    def __init__(self, commit_bytes: int | None) -> None:
        self.commit_bytes = commit_bytes  # None: echo; 0: the raw frames only; n: pad each commit to n bytes
        self.rounds = 0
        self.connections = 0
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._database: sqlite3.Connection | None = None
        self._committer: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        if self.commit_bytes is not None:
            self._database = durable_sqlite("floor.db")
            self._database.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, payload BLOB)")
            self._committer = asyncio.create_task(self._commit_loop())
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._database is not None:
            self._database.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        self.connections += 1
        while data := await reader.read(65536):
            for message in decoder.feed(data):
                if not isinstance(message, bytes):
                    continue  # the bench sends only whole frames
                if self.commit_bytes is not None:
                    done = asyncio.get_running_loop().create_future()
                    await self._queue.put((message, done))
                    await done
                writer.write(ACK)
        self.connections -= 1
        writer.close()

    async def _commit_loop(self) -> None:
        """The listener's group commit: what queued up during the last commit, then up to 2 ms more
        for the other open connections' next messages."""
        assert self._database is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + 0.002
            while len(batch) < self.connections:
                try:
                    async with asyncio.timeout_at(deadline):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            rows = [(payload,) for payload, _done in batch]
            padding = (self.commit_bytes or 0) - sum(len(p) for p, _ in batch)
            if padding > 0:
                rows.append((os.urandom(padding),))
            self._database.execute("BEGIN IMMEDIATE")
            self._database.executemany("INSERT INTO raw (payload) VALUES (?)", rows)
            self._database.execute("COMMIT")
            self.rounds += 1
            for _payload, done in batch:
                done.set_result(None)


def run(feed: list[bytes], senders: int, commit_bytes: int | None) -> tuple[float, float]:
    """Messages a second, and messages per round."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = FloorServer(commit_bytes)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    parts = [feed[i::senders] for i in range(senders)]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as hospital:
        hospital.submit(_hospital, port, [[] for _ in parts]).result()  # started and warm
        acked, elapsed = hospital.submit(_hospital, port, parts).result()
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    assert acked == len(feed), f"{acked} of {len(feed)} acknowledged"
    return len(feed) / elapsed, len(feed) / max(server.rounds, 1) if commit_bytes is not None else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each mode, the fastest printed (this VM's speed swings)"
    )
    args = parser.parse_args()
    feed = messages(args.messages)
    print(f"MLLP with {args.senders} senders waiting for each ACK, no ingest work ({args.messages:,} messages):")
    for label, commit_bytes in (
        ("echo (loopback and event loops)", None),
        ("durable commit of the raw frames", 0),
        ("durable commit, 180 KB a round", FULL_INGEST_WAL_BYTES),
    ):
        rate, per_round = max(run(feed, args.senders, commit_bytes) for _ in range(max(1, args.repeat)))
        if commit_bytes is None:
            print(f"  {label:34} {rate:>9,.0f} msg/s")
            continue
        round_ms = per_round / rate * 1e3
        print(f"  {label:34} {rate:>9,.0f} msg/s   round {round_ms:5.2f} ms, {per_round:.1f} messages each")
    print(f"  (10,000 msg/s with {args.senders} waiting senders needs rounds of {args.senders / 10:.2f} ms)")


if __name__ == "__main__":
    main()
