"""Celery worker preload: the imports every hub task process would repeat, done once per worker.

Airflow's Celery worker forks a process per task; that process imports Airflow's task runner, loads
the plugins (the hub's brings its API and console) and parses the task's DAG file with everything it
imports, then the task imports the hub modules it calls. Done in every child that costs seconds per
task; done here, in the worker before its pool forks, the children inherit it. Airflow's provider
preloads a few modules the same way (`on_celery_import_modules`). A worker takes it with
`AIRFLOW__CELERY__EXTRA_CELERY_CONFIG='{"imports": ["cgthub.devtools.celery_preload"]}'`.

Nothing here opens a connection or a file that the forked children would then share.
"""

from __future__ import annotations

import importlib

# What the hub's tasks import when they run (the DAG files import them inside their tasks).
TASK_MODULES = (
    "cgthub.partner_sync",
    "cgthub.outbound",
    "cgthub.deadlines",
    "cgthub.ops_config",
    "cgthub.reconciliation",
    "cgthub.partner_views",
    "cgthub.ledger_anchor",
    "cgthub.audit_trail",
    "cgthub.notifier",
    "cgthub.alert_delivery",
)


def preload() -> list[str]:
    """Import the task runner, the plugins, the DAG files' imports, the tasks' modules and every partner's
    connector modules; the modules imported."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time import task_runner  # noqa: F401 - the child's entry point
    from airflow.sdk.plugins_manager import integrate_macros_plugins

    from cgthub import airflow_env, partners

    integrate_macros_plugins()  # loads the plugins once; the children's call finds them loaded
    DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
    for name in TASK_MODULES:
        importlib.import_module(name)
    names = list(TASK_MODULES)
    for partner in partners.registry().values():
        refs = [pull.fetch for pull in partner.pulls] + ([partner.push.deliver] if partner.push else [])
        refs += [partner.snapshot] if partner.snapshot else []
        names += [partners.origin(partners.resolve(ref)) for ref in refs]
    return names


preload()
