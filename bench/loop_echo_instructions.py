"""What the event loop itself costs an MLLP message, in instructions: asyncio's loop against uvloop's.

The listener's closed-loop count (`bench.mllp_loop_instructions`) holds the loop's own work inside
1.3 million instructions a message, where one group commit more or less moves it further than the
loop does. Here the listener's work is taken away: a protocol that answers each read by writing it
back (no decoding, no commit), on the loop `--loop` names, with the same 64 senders in a process of
their own sending the same framed messages and waiting for each answer. What callgrind counts on
this process's main thread inside `functools.reduce` is then the loop's poll, the transport's read
and write, and the one callback a read: the part of a message uvloop can make cheaper.
Run: .venv/bin/python -m bench.loop_echo_instructions [--messages 1280] [--senders 64] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench import callgrind
from cgthub.hl7.event_loop import KINDS, loop_name, new_listener_loop

ROOT = Path(__file__).resolve().parent.parent


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _closed_loop(count: int, senders: int, loop_kind: str) -> None:
    """The counted workload (run under valgrind): a warm-up round, then `count` messages flat out."""
    from bench.hl7_bench import messages
    from bench.mllp_loop_instructions import hospital_rounds

    warm = 2 * senders
    feed = messages(count + warm)
    loop = new_listener_loop(loop_kind)
    server = loop.run_until_complete(loop.create_server(_Echo, "127.0.0.1", 0, backlog=senders * 2))
    port = server.sockets[0].getsockname()[1]
    answered = hospital_rounds(loop, port, feed, warm, senders, lambda run: len(run.latencies))
    server.close()
    loop.run_until_complete(server.wait_closed())
    if answered != count:
        raise SystemExit(f"{answered} of {count} messages answered")
    print(f"event loop: {loop_name(loop)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1280)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--loop", choices=KINDS, nargs="+", default=list(KINDS))
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)  # the counted process
    args = parser.parse_args()
    if args.workload:
        _closed_loop(args.messages, args.senders, args.loop[0])
        return
    for kind in args.loop:
        total = callgrind.instructions(
            [
                "--toggle-collect=functools_reduce",
                sys.executable,
                *("-m", "bench.loop_echo_instructions", "--workload"),
                *("--messages", str(args.messages), "--senders", str(args.senders), "--loop", kind),
            ],
            ROOT,
        )
        print(
            f"echo on {kind}, closed loop of {args.senders} senders: {total:,} instructions for "
            f"{args.messages:,} messages, {total // args.messages:,} a message"
        )


if __name__ == "__main__":
    main()
