"""Airflow's configuration for this repo, written once: the demo, `make up`, the tests and the CLI use it.

Airflow reads its configuration from the environment when it is first imported, so `configure()`
must run before anything imports airflow. It points AIRFLOW_HOME at var/airflow, the DAG and plugin
folders at the repo's `dags/` and `plugins/`, turns the example DAGs off and keeps the metadata in
an SQLite file (the embedded default; docker-compose sets PostgreSQL instead). Values already set
in the environment win, so a deployment overrides any of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cgthub.settings import PROJECT_ROOT, var_dir

DAGS_FOLDER = PROJECT_ROOT / "dags"
PLUGINS_FOLDER = PROJECT_ROOT / "plugins"


def defaults(home: Path) -> dict[str, str]:
    """The settings the hub needs from Airflow, for an AIRFLOW_HOME."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # DAG files are cheap to parse on purpose; a slow one is a bug, not a reason to wait.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # The hub's own modules (cgthub, connectors) import from the repo root in every Airflow process.
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }


def configure(home: Path | None = None) -> dict[str, str]:
    """Set Airflow's environment for this process (and its children); existing values win."""
    if "airflow" in sys.modules and "AIRFLOW_HOME" not in os.environ:
        raise RuntimeError("airflow was imported before cgthub.airflow_env.configure(): its settings are already read")
    home = Path(os.environ.get("AIRFLOW_HOME") or home or var_dir() / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    for name, value in defaults(home).items():
        os.environ.setdefault(name, value)
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    return {name: os.environ[name] for name in defaults(home)}


def migrate_metadata_db() -> None:
    """Create or upgrade Airflow's own metadata database (`airflow db migrate`, a few seconds)."""
    configure()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        env=os.environ.copy(),
    )


def run_dag_test(dag: Any, conf: dict[str, Any] | None = None, *, retries: bool = False) -> Any:
    """Run one DagRun of `dag` in this process with `dag.test()`; the DagRun.

    `dag.test()` sleeps through each retry's backoff in real time, so by default a task fails on
    its first error here (the demo and the tests want the error, not a minutes-long wait).

    Airflow 3.3.2's `dag.test()` cannot run a DAG that declares Deadline Alerts: it hands the run a
    DAG re-serialized in memory, whose deadlines are still definitions, not the ids the run's
    success path looks up (AttributeError 'dict' object has no attribute 'hex'). The deadline is
    the scheduler's business anyway (a test run is not late), so it is left out of the in-process
    copy; the DAG stored from the DAG file keeps it.
    """
    import copy

    runnable = copy.copy(dag)
    runnable.deadline = None
    saved = {task.task_id: task.retries for task in dag.tasks}
    if not retries:
        for task in dag.tasks:
            task.retries = 0
    try:
        return runnable.test(run_conf=conf or {})
    finally:
        for task in dag.tasks:
            task.retries = saved[task.task_id]
