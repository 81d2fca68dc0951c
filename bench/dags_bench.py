"""How fast the DAGs parse and run: per-file parse time, and dag.test() time per DAG on the demo story.

Parse: the DagBag's own per-file figure, first load (pays the hub's light imports) and the median
of `--repeat` reloads. Run: the demo's 25 patients in three waves, every DAG run with dag.test()
(on a temporary var dir and Airflow home, the partners' sandboxes on loopback as in `make demo`),
seconds per DAG run and partner messages per second.
Run: .venv/bin/python -m bench.dags_bench [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cgthub-dags-bench-"))
    os.environ["CGTHUB_VAR_DIR"] = str(tmp / "var")
    os.environ.pop("CGTHUB_DATABASE_URL", None)
    os.environ.pop("CGTHUB_CONNECTORS", None)
    from cgthub import airflow_env

    airflow_env.configure(home=tmp / "airflow")
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    print(f"import airflow.sdk + DagBag machinery: {time.perf_counter() - started:.2f} s (paid once per process)")
    loads: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeat + 1):
        bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
        for stat in bag.dagbag_stats:
            loads[Path(stat.file).name].append(stat.duration.total_seconds() * 1000)
    print(f"\n{'DAG file':<30} {'first ms':>9} {'median ms':>10}")
    for name, figures in sorted(loads.items()):
        print(f"{name:<30} {figures[0]:>9.1f} {statistics.median(figures[1:]):>10.1f}")

    from cgthub import demo, demo_scenario, store
    from cgthub.tables import utcnow

    store.upgrade()
    airflow_env.migrate_metadata_db()
    runner = demo.Runner()
    hub = demo.Hub()
    partners = hub.start()
    now = utcnow().replace(minute=0, second=0, microsecond=0)
    _people, emissions = demo_scenario.world(now)
    per_dag: dict[str, list[float]] = defaultdict(list)
    previous = None
    wall = time.perf_counter()
    for cut in (now - timedelta(days=30), now - timedelta(days=12), now):
        demo.deliver([e for e in emissions if (previous is None or e.at > previous) and e.at <= cut], partners)
        previous = cut
        for dag_id in sorted(runner.dags):
            began = time.perf_counter()
            runner.run(dag_id, {"now": cut.isoformat()} if dag_id.endswith(("monitoring", "reconciliation")) else None)
            per_dag[dag_id].append(time.perf_counter() - began)
    wall = time.perf_counter() - wall
    hub.stop()
    print(f"\n{'DAG (dag.test)':<28} {'runs':>4} {'mean s':>7} {'max s':>6}")
    for dag_id, figures in sorted(per_dag.items()):
        print(f"{dag_id:<28} {len(figures):>4} {statistics.mean(figures):>7.2f} {max(figures):>6.2f}")
    print(
        f"\n{len(emissions)} partner messages through {runner.runs} DAG runs in {wall:.1f} s "
        f"({len(emissions) / wall:.0f} messages/s end to end, dominated by per-run overhead)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
