"""Instructions per record of a CRM page read again with the same content (every event a duplicate
the ledger must compare with the version it holds, `cgthub.conflicts`), counted by callgrind inside
the ingest call only, as `bench.ingest_instructions` counts; `--no-compare` counts the same run with
the content comparison switched off, so the difference is what the comparison costs a duplicate.

The pages are ingested once uncounted; the counted read is the same records with another
`modifiedAt` (a CRM re-read after a change the mapping does not read), so the archive takes each
page as new and the ledger finds every event it maps already held.
Run: .venv/bin/python -m bench.resend_instructions [--pages 2]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from pathlib import Path

import orjson

from bench import callgrind

ROOT = Path(__file__).resolve().parent.parent


def _reread(pages: list[bytes]) -> list[bytes]:
    out = []
    for raw in pages:
        page = orjson.loads(raw)
        for record in page["items"]:
            record["modifiedAt"] = "2026-03-03T10:00:00"
        out.append(orjson.dumps(page))
    return out


def _workload(count: int, database: Path, compare: bool) -> None:
    from bench.partner_page_bench import ingest_into, pages
    from cgthub import conflicts, runtime

    if not compare:
        conflicts.differing_fields = lambda _prior, _event: []  # type: ignore[assignment]
    batch = pages(count, 200)
    url = f"sqlite:///{database}"
    assert ingest_into(url, batch) == count * 200 * 2
    again = _reread(batch)
    runtime.tune_gc()
    appended = functools.reduce(lambda _a, _b: ingest_into(url, again), [0], 0)
    assert appended == 0, appended


def counted(count: int, compare: bool) -> int:
    from bench.ingest_instructions import settled_copy
    from bench.partner_page_bench import fresh_database
    from cgthub.store import dispose_engines

    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    made = fresh_database().split("///", 1)[1]
    dispose_engines()
    database = Path(tempfile.mkdtemp()) / "resend.db"
    settled_copy(made, database)
    return callgrind.instructions(
        [
            "--toggle-collect=functools_reduce",
            sys.executable,
            "-m",
            "bench.resend_instructions",
            "--workload",
            str(count),
            str(database),
            "compare" if compare else "no-compare",
        ],
        ROOT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2, help="CRM pages of 200 records")
    parser.add_argument("--workload", nargs=3, metavar=("COUNT", "DATABASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        _workload(int(args.workload[0]), Path(args.workload[1]), args.workload[2] == "compare")
        return
    records = args.pages * 200
    print("Instructions per record of a re-read CRM page (2 events a record, both duplicates):")
    for compare in (False, True):
        per = counted(args.pages, compare) / records
        label = "content compared" if compare else "comparison off  "
        print(f"  {label} ({args.pages} x 200 records) {per:12,.0f} per record")


if __name__ == "__main__":
    main()
