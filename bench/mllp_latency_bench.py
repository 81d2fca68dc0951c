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
listener's; the standard library's loop, as before); the listener runs on an event loop in this
process, the one `cgthub hl7 listen` runs on (CGTHUB_LISTENER_EVENT_LOOP, uvloop by default), and so
does the floor server; `--loop asyncio|uvloop` picks it for a comparison.
Targets: p99 ACK < 25 ms at 1,000 msg/s offered from 64 senders; closed loop with 64 senders at
>= 80% of the file drop.
Run: .venv/bin/python -m bench.mllp_latency_bench [--senders 8 64 256] [--rate 1000] [--seconds 4] [--loop asyncio]
With --trace, each open-loop run of the listener also prints where its event loops stalled, and
what ran meanwhile: garbage collections, group commits (and the part in SQLite's COMMIT), WAL
checkpoints, heap trims, on both the listener's side and the senders'. The instruments are the
bench's own (gc.callbacks, a loop-lag probe, wrappers set on this process's objects).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from bench.hl7_bench import file_drop, fresh_database, messages
from bench.mllp_floor_bench import FloorServer
from cgthub import runtime
from cgthub.hl7 import listener as listener_module
from cgthub.hl7.event_loop import KINDS, new_listener_loop
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.settings import get_settings
from cgthub.wal_checkpoint import Watched

START_DELAY = 0.3  # seconds between the senders' connecting and the first scheduled send
WINDOW: float | None = None  # the listener's batch_window, when not its default (--batch-window)
LOOP: str | None = None  # the event loop of the listener and the floor server (--loop); None: the setting's
PROBE_STEP = 0.001  # seconds the loop-lag probe sleeps (--trace)
NOTED = 0.002  # a stall or an instrumented step at least this long is kept (--trace)
SLOW = 0.025  # an ACK at least this late puts its message in a reported stall (--trace)


@dataclass
class Mark:
    """A stretch of time one instrument saw (--trace): when it began (time.monotonic()) and how long."""

    at: float
    seconds: float
    kind: str  # the side and the instrument, e.g. "listener: gc generation 2"
    detail: str = ""


class Trace:
    """Bench-only instruments of one process, for the time of one run (--trace): collections timed by
    gc.callbacks, and the stalls of an event loop, seen by a probe that sleeps a millisecond at a time."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.marks: list[Mark] = []
        self._collecting: dict[int, float] = {}
        self._undo: list[Callable[[], None]] = []

    def note(self, began: float, kind: str, detail: str = "", *, always: bool = False) -> None:
        seconds = time.monotonic() - began
        if always or seconds >= NOTED:
            self.marks.append(Mark(began, seconds, f"{self.side}: {kind}", detail))

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        thread = threading.get_ident()
        if phase == "start":
            self._collecting[thread] = time.monotonic()
        elif (began := self._collecting.pop(thread, None)) is not None:
            where = threading.current_thread().name
            freed = f"on {where}, {info['collected']} freed"
            self.note(began, f"gc generation {info['generation']}", freed, always=True)

    def start(self) -> None:
        gc.callbacks.append(self._collection)
        self._undo.append(lambda: gc.callbacks.remove(self._collection))

    def stop(self) -> None:
        while self._undo:
            self._undo.pop()()

    async def probe(self) -> None:
        """Note each time this event loop ran something else for longer than `NOTED` at a stretch."""
        while True:
            began, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(PROBE_STEP)
            if time.monotonic() - began - PROBE_STEP >= NOTED:  # the CPU its thread had meanwhile, beside
                self.note(began, "event loop stalled", f"{time.thread_time() - cpu:.4f} s CPU")

    def listener(self, listener: MllpListener) -> None:
        """Time the listener's group commits (and SQLite's COMMIT in them), the process's WAL
        checkpoints and heap trims, by wrappers set on these objects for this run."""
        committing: list[tuple[float, int]] = []  # when COMMIT began and ended, the log's backfill then
        commit_and_answer = listener._commit_and_answer
        database = (listener.database_url or "").split("///", 1)[-1]

        def timed_commit(batch: list[Any]) -> None:
            began, cpu = time.monotonic(), time.thread_time()
            committing.clear()
            commit_and_answer(batch)
            cpu = time.thread_time() - cpu
            sql = ""
            if len(committing) == 2:  # SQLite's COMMIT, the WAL's fsync in it, noted on its own as well
                (start, before), (end, after) = committing
                sql = f", COMMIT {end - start:.4f} s"
                copied = f"{after - before} frames copied meanwhile" if after > before else ""
                self.marks.append(Mark(start, end - start, f"{self.side}: COMMIT", copied))
            self.note(began, "group commit", f"of {len(batch)}, {cpu:.4f} s CPU{sql}", always=True)

        def commit_began(_conn: Any) -> None:
            committing[:] = [(time.monotonic(), _backfilled(database))]

        def commit_ended(_session: Any) -> None:
            committing.append((time.monotonic(), _backfilled(database)))

        listener._commit_and_answer = timed_commit  # type: ignore[method-assign]
        event.listen(Engine, "commit", commit_began)
        event.listen(Session, "after_commit", commit_ended)
        self._undo.append(lambda: event.remove(Engine, "commit", commit_began))
        self._undo.append(lambda: event.remove(Session, "after_commit", commit_ended))

        checkpoint = Watched.checkpoint

        def timed_checkpoint(watched: Watched) -> int:
            began = time.monotonic()
            copied = checkpoint(watched)
            if copied:
                frames = os.stat(watched.path + "-wal").st_size // 4096  # about: a frame is a page and 24 bytes
                self.note(began, "WAL checkpoint", f"{copied} pages, the log {frames} frames long", always=True)
            return copied

        Watched.checkpoint = timed_checkpoint  # type: ignore[method-assign,assignment]
        self._undo.append(lambda: setattr(Watched, "checkpoint", checkpoint))
        trim = listener_module._TRIM
        if trim is not None:

            def timed_trim(pad: int) -> int:
                began = time.monotonic()
                try:
                    return trim(pad)
                finally:
                    self.note(began, "malloc_trim", always=True)

            listener_module._TRIM = timed_trim
            self._undo.append(lambda: setattr(listener_module, "_TRIM", trim))


def _backfilled(database: str) -> int:
    """The frames of the write-ahead log copied back into the database file so far, as its shared
    index says (WalCkptInfo.nBackfill, after the index header's two 48-byte copies); -1 without one.
    A COMMIT that raises it while no checkpoint of the thread's runs has checkpointed itself."""
    try:
        with open(database + "-shm", "rb") as shm:
            return int.from_bytes(os.pread(shm.fileno(), 4, 96), sys.byteorder)
    except OSError:
        return -1


@dataclass
class Run:
    """What one run of the senders saw: each message's latency in seconds, and the span of the run."""

    latencies: list[float]
    seconds: float
    acked: int
    group: float | None = None  # messages per group commit (the listener's)
    start: float = 0.0  # time.monotonic() of the first scheduled send
    sent: list[float] = field(default_factory=list)  # each latency's scheduled send (--trace)
    marks: list[Mark] = field(default_factory=list)  # what the instruments saw, both sides (--trace)

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
) -> tuple[list[float], list[float], int, float]:
    """One hospital interface: connect, then for each message send it (on its schedule when
    `interval` is given), wait for its ACK, note the latency. Latencies, their scheduled sends,
    AA count, last ACK time."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder, latencies, sent, acked = FrameDecoder(), [], [], 0
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
            sent.append(sent_at)
    finally:
        writer.close()
        await writer.wait_closed()
    return latencies, sent, acked, last


async def _senders(port: int, parts: list[list[bytes]], rate: float | None, trace: Trace | None) -> Run:
    loop = asyncio.get_running_loop()
    probe = asyncio.ensure_future(trace.probe()) if trace is not None else None
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
    if probe is not None:
        probe.cancel()
    latencies = [latency for lat, _sent, _acked, _last in outcomes for latency in lat]
    acked = sum(a for _lat, _sent, a, _last in outcomes)
    run = Run(latencies, max(last for *_rest, last in outcomes) - start, acked, start=start)
    if trace is not None:
        run.sent = [at for _lat, sent, _acked, _last in outcomes for at in sent]
    return run


def hospital(port: int, parts: list[list[bytes]], rate: float | None, traced: bool = False) -> Run:
    """The senders, in the hospital's own process: one event loop holding every connection."""
    runtime.tune_gc()
    trace = Trace("senders") if traced else None
    if trace is not None:
        trace.start()
    try:
        run = asyncio.run(_senders(port, parts, rate, trace))
    finally:
        if trace is not None:
            trace.stop()
    if trace is not None:
        run.marks = trace.marks
    return run


class _Served:
    """A server on an event loop of its own thread in this process, for the length of a run."""

    def __init__(
        self, start: Callable[[], Coroutine[Any, Any, int]], stop: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        self.loop = new_listener_loop(LOOP)
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self._stop = stop

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _listener(url: str, senders: int) -> tuple[_Served, MllpListener]:
    room = max(128, senders * 2)  # every sender connects from 127.0.0.1: the per-address cap raised with the rest
    listener = MllpListener(
        "127.0.0.1", 0, database_url=url, apply=True, max_connections=room, max_connections_per_address=room
    )
    if WINDOW is not None:
        listener.batch_window = WINDOW

    async def start() -> int:
        return (await listener.start())[1]

    return _Served(start, listener.stop), listener


def _floor() -> _Served:
    server = FloorServer(0)
    return _Served(server.start, server.stop)


def measure(
    pool: ProcessPoolExecutor, server: str, feed: list[bytes], senders: int, rate: float | None, traced: bool = False
) -> Run:
    """One run of `senders` senders over `feed` against a fresh listener (or the floor server)."""
    if server == "listener":
        served, listener = _listener(fresh_database(len(feed) // 2 + 1), senders)
    else:
        served, listener = _floor(), None
    trace = Trace(server) if traced else None
    probe = None
    if trace is not None:
        trace.start()
        if listener is not None:
            trace.listener(listener)
        probe = asyncio.run_coroutine_threadsafe(trace.probe(), served.loop)
    try:
        parts = [feed[i::senders] for i in range(senders)]
        run = pool.submit(hospital, served.port, parts, rate, traced).result()
    finally:
        if probe is not None:
            probe.cancel()
        served.close()
        if trace is not None:
            trace.stop()
    if trace is not None:
        run.marks += trace.marks
    if run.acked != len(feed):
        raise SystemExit(f"{server}: {run.acked} of {len(feed)} messages acknowledged AA")
    if listener is not None:
        run.group = listener.stats.messages / max(listener.stats.batches, 1)
    return run


def stalls(run: Run) -> list[str]:
    """The run's slow ACKs grouped into stalls, each with what the instruments saw meanwhile, and
    then each instrument's count, total and longest over the whole run (--trace)."""
    windows: list[list[float]] = []  # begin, end, slow ACKs, worst latency
    for sent, latency in sorted(zip(run.sent, run.latencies, strict=True)):
        if latency < SLOW:
            continue
        if windows and sent <= windows[-1][1]:
            window = windows[-1]
            window[1], window[2], window[3] = max(window[1], sent + latency), window[2] + 1, max(window[3], latency)
        else:
            windows.append([sent, sent + latency, 1, latency])
    lines = [
        f"    {len(windows)} stalls (ACKs >= {SLOW * 1e3:.0f} ms, overlapping); the worst five, from the first send:"
    ]
    marks = sorted(run.marks, key=lambda mark: mark.at)
    for begin, end, count, worst in sorted(sorted(windows, key=lambda w: -w[3])[:5]):
        span = f"{begin - run.start:+.3f} .. {end - run.start:+.3f} s"
        lines.append(f"    stall {span}: {count:.0f} ACKs, worst {worst * 1e3:.1f} ms")
        for mark in marks:
            if mark.at < end and mark.at + mark.seconds > begin - 0.05 and mark.seconds >= NOTED:
                at = f"{mark.at - run.start:+.4f} s {mark.seconds * 1e3:7.1f} ms"
                lines.append(f"      {at}  {mark.kind} {mark.detail}")
    kinds: dict[str, list[float]] = {}
    for mark in marks:
        kinds.setdefault(mark.kind, []).append(mark.seconds)
    checkpoints = [mark for mark in marks if mark.kind.endswith("WAL checkpoint")]
    commits: dict[str, list[float]] = {}
    for mark in marks:
        if mark.kind.endswith("COMMIT"):
            if any(c.at < mark.at + mark.seconds and mark.at < c.at + c.seconds for c in checkpoints):
                kind = "during a checkpoint of the thread's"
            else:
                kind = "that checkpointed themselves" if mark.detail else "others"
            commits.setdefault(kind, []).append(mark.seconds)
    for kind, seconds in sorted(commits.items()):
        figures = f"median {statistics.median(seconds) * 1e3:5.1f} ms, longest {max(seconds) * 1e3:6.1f} ms"
        lines.append(f"    COMMITs {kind}: {len(seconds)}, {figures}")
    lines.append("    over the run (steps under 2 ms not kept, but collections, checkpoints and trims all):")
    for kind, seconds in sorted(kinds.items()):
        figures = f"{len(seconds):5d} x, {sum(seconds) * 1e3:8.1f} ms in all, longest {max(seconds) * 1e3:6.1f} ms"
        lines.append(f"      {kind:42} {figures}")
    return lines


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
    parser.add_argument("--trace", action="store_true", help="show what ran during the open loop's stalls")
    parser.add_argument(
        "--loop", choices=KINDS, help="the listener's event loop (default: CGTHUB_LISTENER_EVENT_LOOP's, uvloop)"
    )
    args = parser.parse_args()
    global WINDOW, LOOP
    WINDOW, LOOP = args.batch_window, args.loop
    runtime.tune_gc()
    open_feed = messages(int(args.rate * args.seconds))
    closed_feed = messages(args.messages)
    results: dict[tuple[str, str, int], Run] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(statistics.mean, [1.0]).result()  # the hospital process started and its imports done
        for senders in args.senders:
            for server in ("listener", "floor") if args.floor else ("listener",):
                results[(server, "open", senders)] = measure(pool, server, open_feed, senders, args.rate, args.trace)
                results[(server, "closed", senders)] = measure(pool, server, closed_feed, senders, None)
    drop_seconds, _cpu = file_drop(closed_feed, fresh_database(len(closed_feed) // 2 + 1))
    drop_rate = len(closed_feed) / drop_seconds
    print(
        f"MLLP senders each waiting for its ACK; listener --apply on SQLite (archive, map, ledger, projection)"
        f", on {args.loop or get_settings().listener_event_loop}"
        f"\n  open loop: {args.rate:,.0f} msg/s offered in all for {args.seconds:g} s, latency from the scheduled"
        f" send;\n  closed loop: {args.messages:,} messages flat out. Floor: no ingest, one durable commit a round."
    )
    for senders in args.senders:
        print(f"{senders} senders")
        for mode in ("open", "closed"):
            listener, floor = results[("listener", mode, senders)], results.get(("floor", mode, senders))
            share = f"   {listener.rate / drop_rate:5.0%} of file drop" if mode == "closed" else ""
            print(_line(f"{mode} loop, listener", listener, share))
            if mode == "open" and args.trace:
                print("\n".join(stalls(listener)))
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
