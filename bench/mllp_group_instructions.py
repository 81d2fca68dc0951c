"""The listener's per-group fixed cost, in instructions (issue 21, point 5): the same messages through
the same apply function in groups of 62 (what 64 closed-loop senders share a commit), as the MLLP
listener runs each group (one session, `inbound.read` each frame, `inbound.apply`, each ACK
framed), and in batches of 1,000 as the file drop runs them (`inbound.apply_answers`, no ACK).

Counted by valgrind's callgrind inside the measured call only (`functools.reduce`, as
`bench.ingest_instructions` does); the database with the enrolled orders is made without valgrind
and a warm-up group compiles mappings and statements first. The difference per message, times 62,
is what a group costs that a batch of 1,000 amortizes or never pays. fsync and lock waits are not in
it (`--phases` times those: the commit, on the clock; `--pages` counts what each commit writes to the
write-ahead log, by table and index).
`--profile` prints cProfile's view of the groups instead (where the instructions go, by function).
Run: .venv/bin/python -m bench.mllp_group_instructions [--messages 992] [--group 62] [--profile] [--phases] [--pages]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import callgrind
from bench.ingest_instructions import settled_copy

ROOT = Path(__file__).resolve().parent.parent
WARM = 62


def prepare(count: int, database: Path) -> None:
    """The database the workload starts from, made without valgrind (it enrols orders, runs migrations)."""
    from bench import hl7_bench
    from cgthub.store import dispose_engines

    url = hl7_bench.fresh_database((count + WARM) // 2 + 1)
    dispose_engines()
    settled_copy(url.split("///", 1)[1], database)


def _copy(database: Path) -> str:
    copy = Path(tempfile.mkdtemp()) / database.name
    shutil.copy(database, copy)
    return f"sqlite:///{copy}"


def groups(url: str, feed: list[bytes], size: int) -> int:
    """As the listener's committer: a session per group, each frame read, applied, each ACK framed."""
    from cgthub.hl7 import inbound
    from cgthub.hl7.mllp import frame
    from cgthub.store import session_scope

    sent = 0
    for at in range(0, len(feed), size):
        with session_scope(url) as session:
            acks = inbound.apply(session, [inbound.read(m) for m in feed[at : at + size]], "mllp")
        sent += sum(len(frame(ack)) for ack in acks)
    return sent


def batches(url: str, feed: list[bytes], size: int) -> int:
    """As the file drop: a session per batch, outcomes counted, no ACK."""
    from cgthub.hl7 import inbound
    from cgthub.store import session_scope

    accepted = 0
    for at in range(0, len(feed), size):
        with session_scope(url) as session:
            answers = inbound.apply_answers(session, [inbound.read(m) for m in feed[at : at + size]], "file")
        accepted += sum(a.code == "AA" for a in answers)
    return accepted


def acks(received: list[Any]) -> int:
    """The listener's own per-message work beside the apply: each ACK built from the header read on
    arrival (`Received.header`), as `inbound.Answer.ack` builds it, and framed."""
    from cgthub.hl7.ack import answer
    from cgthub.hl7.mllp import frame

    return sum(len(frame(answer(r.payload, None, header=r.header))) for r in received)


def _workload(how: str, count: int, size: int, database: Path) -> Callable[[], object]:
    from bench.hl7_bench import messages
    from cgthub import runtime

    feed = messages(count + WARM)
    if how == "acks":
        from cgthub.hl7 import inbound

        received = [inbound.read(m) for m in feed]
        acks(received[:WARM])
        return lambda: acks(received[WARM:])
    url = _copy(database)
    groups(url, feed[:WARM], WARM)  # warm: compiled mappings and statements, the engine made
    runtime.tune_gc()
    run = groups if how == "groups" else batches
    return lambda: run(url, feed[WARM:], size)


def counted(how: str, count: int, size: int, database: Path) -> int:
    return callgrind.instructions(
        [
            "--toggle-collect=functools_reduce",
            sys.executable,
            "-m",
            "bench.mllp_group_instructions",
            "--workload",
            how,
            str(count),
            str(size),
            str(database),
        ],
        ROOT,
    )


def profile(count: int, size: int, database: Path) -> None:
    work = _workload("groups", count, size, database)
    profiler = cProfile.Profile()
    profiler.runcall(work)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(40)


def phases(count: int, size: int, database: Path) -> None:
    """Clock time of a group's phases: apply (archive, map, ledger, projection), then the commit."""
    from bench.hl7_bench import messages
    from cgthub.hl7 import inbound
    from cgthub.store import session_scope

    feed = messages(count + WARM)
    url = _copy(database)
    groups(url, feed[:WARM], WARM)
    opened = applied = committed = 0.0
    for at in range(WARM, len(feed), size):
        t0 = time.perf_counter()
        scope = session_scope(url)
        session = scope.__enter__()
        session.connection()
        t1 = time.perf_counter()
        inbound.apply(session, [inbound.read(m) for m in feed[at : at + size]], "mllp")
        t2 = time.perf_counter()
        scope.__exit__(None, None, None)
        t3 = time.perf_counter()
        opened, applied, committed = opened + t1 - t0, applied + t2 - t1, committed + t3 - t2
    n = -(-count // size)
    print(f"{n} groups of {size}, per group: begin {opened / n * 1e3:.2f} ms, ", end="")
    print(f"apply {applied / n * 1e3:.2f} ms, commit {committed / n * 1e3:.2f} ms")


def _wal_pages(path: str) -> set[int]:
    """The pages a SQLite write-ahead log holds frames of (its header's page size, each frame's page number)."""
    data = Path(path + "-wal").read_bytes()
    size = int.from_bytes(data[8:12], "big")
    return {int.from_bytes(data[at : at + 4], "big") for at in range(32, len(data) - size - 23, size + 24)}


def pages(count: int, size: int, batch: int, database: Path) -> None:
    """The pages each commit writes to the WAL, by table and index: groups of `size` against batches of
    `batch`. The process's background checkpointer is stopped and the log checkpointed after each
    commit, so each commit's frames are read alone."""
    import collections
    import sqlite3

    from bench.hl7_bench import messages
    from cgthub.hl7 import inbound
    from cgthub.store import session_scope
    from cgthub.wal_checkpoint import checkpointer

    feed = messages(count + WARM)
    print(f"Pages written to the WAL a commit ({count:,} messages, 4 KiB pages):")
    for each in (size, batch):
        url = _copy(database)
        path = url.split("///", 1)[1]
        groups(url, feed[:WARM], WARM)
        checkpointer.forget(path)
        side = sqlite3.connect(path)
        side.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        owners: collections.Counter[str] = collections.Counter()
        commits = 0
        for at in range(WARM, len(feed), each):
            with session_scope(url) as session:
                inbound.apply(session, [inbound.read(m) for m in feed[at : at + each]], "mllp")
            named = dict(side.execute("SELECT pageno, name FROM dbstat").fetchall())
            owners.update(named.get(page, "?") for page in _wal_pages(path))
            side.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            commits += 1
        side.close()
        total = sum(owners.values())
        print(f"  commits of {each:,}: {total / commits:,.0f} pages a commit, {total / count:.2f} a message; most:")
        print("    " + ", ".join(f"{name} {n / commits:,.1f}" for name, n in owners.most_common(6)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=992, help="messages in each workload (16 groups of 62)")
    parser.add_argument("--group", type=int, default=62, help="messages a group commit of the listener holds")
    parser.add_argument("--batch", type=int, default=1000, help="messages a file-drop batch holds")
    parser.add_argument("--profile", action="store_true", help="cProfile the groups instead of counting")
    parser.add_argument("--phases", action="store_true", help="time a group's begin, apply and commit instead")
    parser.add_argument("--pages", action="store_true", help="count the pages a commit writes to the WAL instead")
    parser.add_argument("--only", choices=["acks", "groups"], help="count the ACKs only, or the ACKs and the groups")
    parser.add_argument("--workload", nargs=4, metavar=("HOW", "COUNT", "SIZE", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        how, count, size, database = args.workload[0], int(args.workload[1]), int(args.workload[2]), args.workload[3]
        work = _workload(how, count, size, Path(database))
        functools.reduce(lambda _a, _b: work(), [0], None)
        return
    database = Path(tempfile.mkdtemp()) / "group.db"
    prepare(args.messages, database)
    if args.profile:
        return profile(args.messages, args.group, database)
    if args.phases:
        return phases(args.messages, args.group, database)
    if args.pages:
        return pages(args.messages, args.group, args.batch, database)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    print(f"Instructions per message, callgrind, inside the measured call only ({args.messages:,} messages):")
    if args.only in (None, "acks"):
        built = counted("acks", args.messages, args.group, database) / args.messages
        print(f"  its ACK built from the header read on arrival, framed      {built:12,.0f}")
    if args.only == "acks":
        return
    grouped = counted("groups", args.messages, args.group, database) / args.messages
    print(f"  listener groups of {args.group} (read, apply, ACK framed)   {grouped:12,.0f}")
    if args.only == "groups":
        return
    batched = counted("batches", args.messages, args.batch, database) / args.messages
    print(f"  file-drop batches of {args.batch:,} (read, apply)          {batched:12,.0f}")
    extra = grouped - batched
    print(f"  the group's extra: {extra:,.0f} a message, {extra * args.group:,.0f} a group of {args.group}")


if __name__ == "__main__":
    main()
