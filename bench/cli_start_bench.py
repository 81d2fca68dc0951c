"""How long a `cgthub` command takes to start: operators run it all day, the tests run it hundreds of times.

Median wall time over --runs of `cgthub --help`, `cgthub orders --help` and one database read
(`cgthub orders list` on a fresh SQLite database), each a new `python -m cgthub.cli` process as the
tests start it, and the import time of `cgthub.cli` (`-X importtime`'s cumulative figure). With
--base DIR the same figures for another tree (e.g. `git archive <rev> cgthub connectors | tar -x -C
DIR`), run on PYTHONPATH=DIR from a neutral directory, interleaved run by run with this tree so both
meet the same load. Both trees are byte-compiled first, as `make bytecode` leaves a checkout.
Clock figures on a shared machine swing with its load: the load average is printed before and after.
--instructions also counts each command's instructions once under callgrind (bench.callgrind), the
figure that does not move with the load (a minute or two under valgrind).
Run: .venv/bin/python -m bench.cli_start_bench [--runs 15] [--base /tmp/cli_base] [--instructions]
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import callgrind

ROOT = Path(__file__).resolve().parent.parent
CASES: dict[str, tuple[str, ...]] = {
    "cgthub --help": ("--help",),
    "cgthub orders --help": ("orders", "--help"),
    "cgthub orders list (fresh SQLite)": ("orders", "list"),
}
IMPORT = "import cgthub.cli"


def _environment(tree: Path | None, database: Path) -> dict[str, str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": f"sqlite:///{database}", "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def _wall(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cgthub.cli", *args], env=env, cwd=cwd, capture_output=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cgthub {' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-400:]}")
    return took


def _import_seconds(env: dict[str, str], cwd: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORT], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    (line,) = [line for line in done.stderr.splitlines() if re.search(r"\|\s*cgthub\.cli$", line)]
    return int(line.split("|")[1]) / 1e6


def _where(tree: Path | None, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import cgthub.cli; print(cgthub.cli.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _load() -> str:
    return " ".join(f"{figure:.2f}" for figure in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--base", type=Path, help="another tree to compare with (its cgthub/ on PYTHONPATH)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind too")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"this tree": None}
    if args.base:
        trees["base"] = args.base.resolve()
    for tree in trees.values():
        compileall.compile_dir(str((tree or ROOT) / "cgthub"), quiet=1, workers=0)
    with tempfile.TemporaryDirectory(prefix="cli-start-") as scratch:
        cwd = Path(scratch)
        database = cwd / "hub.db"
        subprocess.run(
            [sys.executable, "-m", "cgthub.cli", "db", "upgrade"],
            env=_environment(None, database),
            cwd=cwd,
            check=True,
            capture_output=True,
        )
        envs = {label: _environment(tree, database) for label, tree in trees.items()}
        for label, tree in trees.items():
            print(f"{label}: {_where(tree, envs[label], cwd)}")
        print(f"load average before: {_load()}")
        walls: dict[tuple[str, str], list[float]] = {(label, case): [] for label in trees for case in CASES}
        imports: dict[str, list[float]] = {label: [] for label in trees}
        for _ in range(args.runs):
            for label in trees:
                for case, argv in CASES.items():
                    walls[label, case].append(_wall(argv, envs[label], cwd))
                imports[label].append(_import_seconds(envs[label], cwd))
        print(f"load average after:  {_load()}")
        counts = _instructions(trees, database) if args.instructions else {}
    labels = list(trees)
    print(f"median of {args.runs} runs, seconds" + "".join(f"  {label:>10}" for label in labels))
    rows = [(case, [statistics.median(walls[label, case]) for label in labels]) for case in CASES]
    rows.append((f"`{IMPORT}` (importtime)", [statistics.median(imports[label]) for label in labels]))
    for name, figures in rows:
        change = f"  {figures[0] / figures[1] - 1:+.0%}" if len(figures) == 2 else ""
        print(f"  {name:<36}" + "".join(f"  {figure:>10.3f}" for figure in figures) + change)
    if counts:
        print("instructions (callgrind, one run)" + "".join(f"  {label:>14}" for label in labels))
        for case in CASES:
            figures = [counts[label, case] for label in labels]
            change = f"  {figures[0] / figures[1] - 1:+.0%}" if len(figures) == 2 else ""
            print(f"  {case:<36}" + "".join(f"  {figure:>14,}" for figure in figures) + change)


def _instructions(trees: dict[str, Path | None], database: Path) -> dict[tuple[str, str], int]:
    """Each case's instructions under callgrind, run from the tree's own directory on its PYTHONPATH."""
    os.environ.update(CGTHUB_DATABASE_URL=f"sqlite:///{database}", COLUMNS="200")
    return {
        (label, case): callgrind.instructions([sys.executable, "-m", "cgthub.cli", *argv], tree or ROOT)
        for label, tree in trees.items()
        for case, argv in CASES.items()
    }


if __name__ == "__main__":
    main()
