"""`make bench`: run every benchmark in bench/ one after the other, each with its own defaults.

Each module is runnable alone (`python -m bench.<name> --help` lists its options). They run in
separate processes so one's memory and garbage-collector settings never colour another's figures.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.endswith("_bench"))
    only = set(sys.argv[1:])
    failed = []
    for name in names:
        if only and name not in only:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
