"""Instructions per record of the 20-field JSON mapping's `map()`, counted by valgrind (callgrind):
the figure for comparing changes to the fast path, which does not move with this VM's speed (the
records/s of bench/mapping_bench.py swing two to three times between sessions).

The same process runs twice under callgrind (twice more with `--reference`): the mapping compiled,
the records made and a warm-up batch mapped, then once no more records and once `--records`; the
difference over the count is the cost of one `map()` call and of freeing its events.
About a minute a run here (Python's start and imports under valgrind are most of it).
Run: .venv/bin/python -m bench.mapping_instructions [--records 2000] [--reference]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import callgrind

ROOT = Path(__file__).resolve().parent.parent
WARM = 200


def workload(count: int, fast_path: str) -> None:
    os.environ["CGTHUB_MAPPING_FASTPATH"] = fast_path
    from bench.mapping_bench import JSON_MAPPING, NOW, json_record
    from cgthub import runtime
    from cgthub.mapping import registry

    runtime.tune_gc()
    mapping = registry.compile_file(JSON_MAPPING)
    payloads = [json_record(n) for n in range(WARM + 5_000)]
    for payload in payloads[:WARM] + payloads[WARM : WARM + count]:
        mapping.map(payload, raw_id=1, checksum="", received_at=NOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="at most 5,000")
    parser.add_argument("--reference", action="store_true", help="also the reference path (two more runs)")
    parser.add_argument("--workload", nargs=2, metavar=("COUNT", "FASTPATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        workload(int(args.workload[0]), args.workload[1])
        return
    count = min(args.records, 5_000)
    print(f"20-field JSON mapping, instructions per map() (callgrind, {count:,} records):")
    paths = [("fast path (generated Python)", "1")] + ([("reference path", "0")] if args.reference else [])
    for label, fast_path in paths:
        argv = [sys.executable, "-m", "bench.mapping_instructions", "--workload"]
        counts = [callgrind.instructions([*argv, str(n), fast_path], ROOT) for n in (0, count)]
        print(f"  {label:<28} {(counts[1] - counts[0]) / count:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
