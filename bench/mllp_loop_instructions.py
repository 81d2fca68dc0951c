"""The MLLP listener's own thread in a closed loop, in instructions a message (issue 21, point 5).

64 senders in a process of their own (not counted), each sending its next message as soon as its
ACK is back, against a listener with `--apply` on SQLite whose event loop runs inside one
`functools.reduce` call on this process's main thread; callgrind collects only there
(`--toggle-collect`). Everything the listener's thread does for a message is in the figure: the
frame read, the MSH read, the group commit (archive, map, ledger, projection, COMMIT), the ACK built,
framed and written, and the event loop's own bookkeeping (timers, futures, task switches), which
`bench.mllp_group_instructions` leaves out. fsync and lock waits are not (they are not instructions),
nor the background checkpointer's thread. The database is made without valgrind, and a warm-up round
of two messages a sender runs before counting starts; the counted run's 64 connections are accepted
inside it (a few thousand instructions each).

Under valgrind the listener runs tens of times slower than the senders, so each group commit holds
every sender's message: the count is what a message costs at 64 to a commit, whatever the VM's load,
for before/after comparisons of a change to the listener.
The listener's loop is the one `cgthub hl7 listen` runs on (CGTHUB_LISTENER_EVENT_LOOP, uvloop by
default; its C code runs on the counted thread and is counted), or `--loop asyncio|uvloop`.
Run: .venv/bin/python -m bench.mllp_loop_instructions [--messages 1280] [--senders 64] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import callgrind
from bench.mllp_group_instructions import _copy, prepare
from cgthub.hl7.event_loop import KINDS, loop_name, new_listener_loop
from cgthub.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def _closed_loop(database: Path, count: int, senders: int, loop_kind: str | None) -> None:
    """The counted workload (run under valgrind): a warm-up round, then `count` messages flat out."""
    from bench.hl7_bench import messages
    from cgthub import runtime
    from cgthub.hl7.listener import MllpListener

    warm = 2 * senders
    feed = messages(count + warm)
    room = max(128, senders * 2)
    listener = MllpListener(
        "127.0.0.1",
        0,
        database_url=_copy(database),
        apply=True,
        max_connections=room,
        max_connections_per_address=room,
    )
    loop = new_listener_loop(loop_kind)
    port = loop.run_until_complete(listener.start())[1]
    acked = hospital_rounds(
        loop, port, feed, warm, senders, lambda run: int(run.acked), settle=runtime.tune_gc, what="acknowledged AA"
    )
    batches = listener.stats.batches
    loop.run_until_complete(listener.stop())
    if acked != count:
        raise SystemExit(f"{acked} of {count} messages acknowledged AA")
    print(f"groups: {batches}, event loop: {loop_name(loop)}", file=sys.stderr)


def hospital_rounds(
    loop: asyncio.AbstractEventLoop,
    port: int,
    feed: list[bytes],
    warm: int,
    senders: int,
    answered: Callable[[Any], int],
    *,
    settle: Callable[[], object] = lambda: None,
    what: str = "answered",
) -> int:
    """The hospital's senders (`bench.mllp_latency_bench.hospital`, a process of their own, closed loop)
    against `port`: a warm-up round of `feed[:warm]`, then the rest inside one `functools.reduce` call
    (what callgrind counts); `answered(run)` says how many of a round were answered."""
    from bench.mllp_latency_bench import hospital

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(statistics.mean, [1.0]).result()  # the senders' process started, its imports done

        def run(part: list[bytes]) -> int:
            done = pool.submit(hospital, port, [part[i::senders] for i in range(senders)], None)
            return answered(loop.run_until_complete(asyncio.wrap_future(done, loop=loop)))

        if run(feed[:warm]) != warm:
            raise SystemExit(f"the warm-up round was not {what}")
        settle()
        return functools.reduce(lambda _a, _b: run(feed[warm:]), [0], 0)


def counted(count: int, senders: int, database: Path, loop_kind: str | None = None) -> int:
    return callgrind.instructions(
        [
            "--toggle-collect=functools_reduce",
            sys.executable,
            "-m",
            "bench.mllp_loop_instructions",
            "--workload",
            str(database),
            "--messages",
            str(count),
            "--senders",
            str(senders),
            *(["--loop", loop_kind] if loop_kind else []),
        ],
        ROOT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1280)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument(
        "--loop", choices=KINDS, help="the listener's event loop (default: CGTHUB_LISTENER_EVENT_LOOP's, uvloop)"
    )
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)  # the counted process
    args = parser.parse_args()
    if args.workload is not None:
        _closed_loop(args.workload, args.messages, args.senders, args.loop)
        return
    database = Path(tempfile.mkdtemp()) / "mllp-loop.db"
    prepare(args.messages + 2 * args.senders, database)
    total = counted(args.messages, args.senders, database, args.loop)
    loop = args.loop or get_settings().listener_event_loop
    print(
        f"listener thread on {loop}, closed loop of {args.senders} senders: {total:,} instructions for "
        f"{args.messages:,} messages, {total // args.messages:,} a message"
    )


if __name__ == "__main__":
    main()
