"""MLLP as hospitals use it: each interface is one connection that waits for each ACK.

For 8, 64 and 256 concurrent senders this prints the ACK latency (p50, p99, max) and the sustained
throughput of the listener with `--apply` on SQLite, in two ways:

* open loop: together the senders offer a fixed rate (`--rate`, 1,000 msg/s by default), each on
  its own schedule (sender i sends its k-th message at start + i/rate + k*senders/rate). Latency is
  measured from the scheduled send time, not from when the message could go: a sender still
  waiting for its previous ACK sends late, and that wait counts (no coordinated omission).
* closed loop: each sender sends its next message as soon as its ACK is back (flat out).

Beside them, in the same run: the same senders against the floor server of `bench.mllp_floor_bench`
(one durable SQLite commit a round of raw frames, no ingest), and the file-drop ingest of the same
messages (`bench.hl7_bench`'s), whose msg/s the closed loop is held to.

The senders run in a process of their own on one event loop (the hospital's core and GIL, not the
listener's); the listener runs on an event loop in this process, as `cgthub hl7 listen` does.
Targets: p99 ACK < 25 ms at 1,000 msg/s offered from 64 senders; closed loop with 64 senders at
>= 80% of the file drop.
Run: .venv/bin/python -m bench.mllp_latency_bench [--senders 8 64 256] [--rate 1000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.hl7_bench import file_drop, fresh_database, messages
from bench.mllp_floor_bench import FloorServer
from cgthub import runtime
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import FrameDecoder, frame

START_DELAY = 0.3  # seconds between the senders' connecting and the first scheduled send
WINDOW: float | None = None  # the listener's batch_window, when not its default (--batch-window)


@dataclass
class Run:
    """What one run of the senders saw: each message's latency in seconds, and the span of the run."""

    latencies: list[float]
    seconds: float
    acked: int
    group: float | None = None  # messages per group commit (the listener's)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def _await_ack(reader: asyncio.StreamReader, decoder: FrameDecoder) -> bool:
    """The next ACK on this connection; whether it says AA."""
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        answers = [a for a in decoder.feed(data) if isinstance(a, bytes)]
        if answers:
            return b"MSA|AA|" in answers[0]


async def _sender(
    port: int, part: list[bytes], begin: Awaitable[float], interval: float | None, offset: float
) -> tuple[list[float], int, float]:
    """One hospital interface: connect, then for each message send it (on its schedule when
    `interval` is given), wait for its ACK, note the latency. Latencies, AA count, last ACK time."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder, latencies, acked = FrameDecoder(), [], 0
    start = await begin
    last = start
    try:
        for k, message in enumerate(part):
            if interval is None:
                sent_at = loop.time()
            else:
                sent_at = start + offset + k * interval  # the schedule, however late the send
                delay = sent_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            writer.write(frame(message))
            acked += await _await_ack(reader, decoder)
            last = loop.time()
            latencies.append(last - sent_at)
    finally:
        writer.close()
        await writer.wait_closed()
    return latencies, acked, last


async def _senders(port: int, parts: list[list[bytes]], rate: float | None) -> Run:
    loop = asyncio.get_running_loop()
    begin: asyncio.Future[float] = loop.create_future()
    count = len(parts)
    interval = count / rate if rate else None
    tasks = [
        asyncio.ensure_future(_sender(port, part, begin, interval, i / rate if rate else 0.0))
        for i, part in enumerate(parts)
    ]
    await asyncio.sleep(START_DELAY)  # every connection open before the clock starts
    start = loop.time()
    begin.set_result(start)
    outcomes = await asyncio.gather(*tasks)
    latencies = [latency for lat, _acked, _last in outcomes for latency in lat]
    acked = sum(a for _lat, a, _last in outcomes)
    return Run(latencies, max(last for _lat, _a, last in outcomes) - start, acked)


def hospital(port: int, parts: list[list[bytes]], rate: float | None) -> Run:
    """The senders, in the hospital's own process: one event loop holding every connection."""
    runtime.tune_gc()
    return asyncio.run(_senders(port, parts, rate))


class _Served:
    """A server on an event loop of its own thread in this process, for the length of a run."""

    def __init__(
        self, start: Callable[[], Coroutine[Any, Any, int]], stop: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self._stop = stop

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _listener(url: str, senders: int) -> tuple[_Served, MllpListener]:
    listener = MllpListener("127.0.0.1", 0, database_url=url, apply=True, max_connections=max(128, senders * 2))
    if WINDOW is not None:
        listener.batch_window = WINDOW

    async def start() -> int:
        return (await listener.start())[1]

    return _Served(start, listener.stop), listener


def _floor() -> _Served:
    server = FloorServer(0)
    return _Served(server.start, server.stop)


def measure(pool: ProcessPoolExecutor, server: str, feed: list[bytes], senders: int, rate: float | None) -> Run:
    """One run of `senders` senders over `feed` against a fresh listener (or the floor server)."""
    if server == "listener":
        served, listener = _listener(fresh_database(len(feed) // 2 + 1), senders)
    else:
        served, listener = _floor(), None
    try:
        run = pool.submit(hospital, served.port, [feed[i::senders] for i in range(senders)], rate).result()
    finally:
        served.close()
    if run.acked != len(feed):
        raise SystemExit(f"{server}: {run.acked} of {len(feed)} messages acknowledged AA")
    if listener is not None:
        run.group = listener.stats.messages / max(listener.stats.batches, 1)
    return run


def _line(label: str, run: Run, extra: str = "") -> str:
    p50, p99 = run.percentile(0.50) * 1e3, run.percentile(0.99) * 1e3
    worst = max(run.latencies) * 1e3
    per_commit = f"   {run.group:5.1f}/commit" if run.group is not None else ""
    figures = f"p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  max {worst:7.1f} ms"
    return f"  {label:28}{run.rate:>8,.0f} msg/s   {figures}{per_commit}{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s the senders offer together (open loop)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of an open-loop run")
    parser.add_argument("--messages", type=int, default=6000, help="messages of a closed-loop run and the file drop")
    parser.add_argument("--batch-window", type=float, help="the listener's batch_window in seconds (default: its own)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True, help="run the floor server too")
    args = parser.parse_args()
    global WINDOW
    WINDOW = args.batch_window
    runtime.tune_gc()
    open_feed = messages(int(args.rate * args.seconds))
    closed_feed = messages(args.messages)
    results: dict[tuple[str, str, int], Run] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(statistics.mean, [1.0]).result()  # the hospital process started and its imports done
        for senders in args.senders:
            for server in ("listener", "floor") if args.floor else ("listener",):
                results[(server, "open", senders)] = measure(pool, server, open_feed, senders, args.rate)
                results[(server, "closed", senders)] = measure(pool, server, closed_feed, senders, None)
    drop_seconds, _cpu = file_drop(closed_feed, fresh_database(len(closed_feed) // 2 + 1))
    drop_rate = len(closed_feed) / drop_seconds
    print(
        f"MLLP senders each waiting for its ACK; listener --apply on SQLite (archive, map, ledger, projection)"
        f"\n  open loop: {args.rate:,.0f} msg/s offered in all for {args.seconds:g} s, latency from the scheduled"
        f" send;\n  closed loop: {args.messages:,} messages flat out. Floor: no ingest, one durable commit a round."
    )
    for senders in args.senders:
        print(f"{senders} senders")
        for mode in ("open", "closed"):
            listener, floor = results[("listener", mode, senders)], results.get(("floor", mode, senders))
            share = f"   {listener.rate / drop_rate:5.0%} of file drop" if mode == "closed" else ""
            print(_line(f"{mode} loop, listener", listener, share))
            if floor is not None:
                print(_line(f"{mode} loop, floor", floor))
    print(f"file drop (batches of 1,000)  {drop_rate:>8,.0f} msg/s   ({len(closed_feed):,} messages)")
    target = results.get(("listener", "open", 64))
    closed = results.get(("listener", "closed", 64))
    if target is not None and closed is not None:
        print(
            f"targets: p99 at {args.rate:,.0f} msg/s from 64 senders {target.percentile(0.99) * 1e3:.1f} ms (< 25 ms);"
            f" closed loop, 64 senders {closed.rate / drop_rate:.0%} of file drop (>= 80%)"
        )


if __name__ == "__main__":
    main()
