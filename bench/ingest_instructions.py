"""Instructions per record of the two ingest paths issue 21 measures against a yardstick, counted
by valgrind's callgrind inside the measured call only: HL7 file drop (`ingest_paths`, batches of
1,000) and CRM pages of 200 records (`pipeline.ingest_batch`, one transaction a page).

Setup runs uncounted: the database with the enrolled orders is made without valgrind, and the
imports and a warm-up batch that compiles mappings and statements run before counting starts.
The ingest runs inside one `functools.reduce` call, and callgrind collects only while that C
function is on the stack (`--toggle-collect`). A figure that does not swing with this VM's load,
for before/after comparisons of one change; fsync and lock waits are not in it.
Run: .venv/bin/python -m bench.ingest_instructions [--messages 400] [--pages 2]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from pathlib import Path

from bench import callgrind

ROOT = Path(__file__).resolve().parent.parent


def prepare(path: str, count: int, database: Path) -> None:
    """The database a workload starts from, made without valgrind (it enrols orders, runs migrations)."""
    from bench import hl7_bench, partner_page_bench
    from cgthub.store import dispose_engines

    url = hl7_bench.fresh_database((count + 20) // 2 + 1) if path == "hl7" else partner_page_bench.fresh_database()
    dispose_engines()
    settled_copy(url.split("///", 1)[1], database)


def settled_copy(made: str, database: Path) -> None:
    """Copy a SQLite database file with its write-ahead log folded in first: the file alone lacks
    what is still in the log (the newest migrations among it)."""
    import sqlite3

    with sqlite3.connect(made) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(made, database)


def _copy(database: Path) -> str:
    copy = Path(tempfile.mkdtemp()) / database.name
    shutil.copy(database, copy)
    return f"sqlite:///{copy}"


def _hl7(count: int, database: Path) -> None:
    from bench.hl7_bench import messages
    from cgthub import runtime
    from cgthub.hl7.files import ingest_paths

    feed = messages(count + 20)
    url = _copy(database)
    folder = Path(tempfile.mkdtemp())
    (folder / "warm.hl7").write_bytes(b"".join(feed[:20]))
    ingest_paths([folder / "warm.hl7"], database_url=url, batch=1000)
    (folder / "feed.hl7").write_bytes(b"".join(feed[20:]))
    runtime.tune_gc()
    report = functools.reduce(
        lambda _a, _b: ingest_paths([folder / "feed.hl7"], database_url=url, batch=1000), [0], None
    )
    assert report is not None and report.accepted == count, report


def _pages(count: int, database: Path) -> None:
    from bench.partner_page_bench import ingest_into, pages
    from cgthub import runtime

    batch = pages(count + 1, 200)
    url = _copy(database)
    ingest_into(url, batch[:1])  # warm: compiled mapping, statements
    runtime.tune_gc()
    appended = functools.reduce(lambda _a, _b: ingest_into(url, batch[1:]), [0], 0)
    assert appended == count * 200 * 2, appended


def counted(path: str, count: int) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    database = Path(tempfile.mkdtemp()) / f"{path}.db"
    prepare(path, count, database)
    return callgrind.instructions(
        [
            "--toggle-collect=functools_reduce",
            sys.executable,
            "-m",
            "bench.ingest_instructions",
            "--workload",
            path,
            str(count),
            str(database),
        ],
        ROOT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400, help="HL7 messages in the file drop")
    parser.add_argument("--pages", type=int, default=2, help="CRM pages of 200 records")
    parser.add_argument("--only", choices=["hl7", "pages"], help="count one path only")
    parser.add_argument("--workload", nargs=3, metavar=("PATH", "COUNT", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        path, count, database = args.workload[0], int(args.workload[1]), Path(args.workload[2])
        (_hl7 if path == "hl7" else _pages)(count, database)
        return
    print("Instructions per record, callgrind, inside the ingest call only:")
    if args.only in (None, "hl7"):
        per = counted("hl7", args.messages) / args.messages
        print(f"  HL7 file drop ({args.messages:,} messages, batches of 1,000)  {per:12,.0f} per message")
    if args.only in (None, "pages"):
        records = args.pages * 200
        per = counted("pages", args.pages) / records
        print(f"  CRM pages ({args.pages} x 200 records, a page a transaction) {per:12,.0f} per record")


if __name__ == "__main__":
    main()
