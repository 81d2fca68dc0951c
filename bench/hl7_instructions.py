"""Instructions per HL7 message on the full ingest path, counted by valgrind (callgrind): a figure
that does not move with this VM's speed, which swings two to three times from minute to minute.

For comparing commits: each revision is checked out in a temporary worktree, a database
with the orders is prepared there without valgrind, and then the same messages go through
archive, parse, map, ledger and projection twice under callgrind: after imports and a warm-up
batch, once no more and once `--messages`; the difference over the count is the cost of one
message. Python's instructions, not seconds: fsync and lock waits are not in it, and a change that trades CPU for
I/O needs the clock benchmarks too. Slow (about two minutes per revision and batch size here).
Run: .venv/bin/python -m bench.hl7_instructions [--rev REV ...] [--messages 1000] [--batch 500 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SELF = Path(__file__).resolve()  # run as a script in each tree: older revisions lack this file
ROOT = SELF.parent.parent
WORK_TREE = "work tree"  # the revision label of the checkout this script runs in
WARM = 10  # messages through the pipeline before counting: statements compiled, mappings loaded


def prepare(path: Path, count: int) -> None:
    """A database with the orders the warm-up and `count` messages refer to, in one file."""
    import sqlite3

    from bench.hl7_bench import fresh_database
    from cgthub.store import dispose_engines

    url = fresh_database((WARM + count) // 2 + 1)
    dispose_engines()
    database = url.split("///", 1)[1]
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(database, path)


def workload(prepared: Path, count: int, batch: int) -> None:
    """The measured run: a copy of the prepared database, the warm-up batch (it compiles the
    mappings and statements, which the run without messages pays too), then `count` messages."""
    from bench.hl7_bench import messages
    from cgthub import runtime
    from cgthub.hl7 import inbound
    from cgthub.store import session_scope

    runtime.tune_gc()
    copy = Path(tempfile.mkdtemp()) / "ingest.db"
    shutil.copy(prepared, copy)
    url = f"sqlite:///{copy}"
    feed = messages(WARM + count)
    with session_scope(url) as session:
        inbound.apply(session, [inbound.read(m) for m in feed[:WARM]], "mllp")
    feed = feed[WARM:]
    for start in range(0, len(feed), batch):
        with session_scope(url) as session:
            inbound.apply(session, [inbound.read(m) for m in feed[start : start + batch]], "mllp")


def _counted(tree: Path, prepared: Path, count: int, batch: int) -> int:
    from bench import callgrind  # here, not at the top: this file also runs in older trees without it

    argv = [sys.executable, str(SELF), "--workload", str(prepared), str(count), str(batch)]
    return callgrind.instructions(argv, tree)


def per_message(rev: str, count: int, batches: list[int]) -> dict[int, float]:
    scratch = Path(tempfile.mkdtemp(prefix="hl7-instructions-"))
    tree = scratch / "tree"
    if rev == WORK_TREE:
        tree = ROOT
    else:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    try:
        prepared = scratch / "prepared.db"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(
            [sys.executable, str(SELF), "--prepare", str(prepared), str(count)],
            cwd=tree,
            env=env,
            check=True,
        )
        return {
            size: (_counted(tree, prepared, count, size) - _counted(tree, prepared, 0, size)) / count
            for size in batches
        }
    finally:
        if tree != ROOT:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", help="a commit to measure (repeatable; default: the work tree)")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, nargs="+", default=[500, 8], help="messages per transaction")
    parser.add_argument("--prepare", nargs=2, metavar=("PATH", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", nargs=3, metavar=("PATH", "COUNT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare[0]), int(args.prepare[1]))
        return
    if args.workload:
        workload(Path(args.workload[0]), int(args.workload[1]), int(args.workload[2]))
        return
    revs = args.rev or [WORK_TREE]
    print(f"HL7 full ingest on SQLite, instructions per message (callgrind, {args.messages:,} messages):")
    print(f"  {'revision':<16}" + "".join(f"{f'batch {size}':>16}" for size in args.batch))
    first: dict[int, float] | None = None
    for rev in revs:
        counts = per_message(rev, args.messages, args.batch)
        cells = "".join(f"{counts[size]:>16,.0f}" for size in args.batch)
        if first is None:
            first = counts
        else:
            cells += "   (" + ", ".join(f"{counts[size] / first[size]:.3f}x" for size in args.batch) + f" of {revs[0]})"
        print(f"  {rev[:16]:<16}{cells}", flush=True)


if __name__ == "__main__":
    main()
