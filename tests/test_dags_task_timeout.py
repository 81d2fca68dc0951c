"""The backstop under the partners' deadline: a hub DAG task stuck anywhere is failed by Airflow at its
execution_timeout (cgthub.dag_defaults) and pages operators through the DAGs' failure notifier, as any
failure does. Run for real with dag.test(), as tests/test_dags_run.py runs the DAGs."""

from __future__ import annotations

import time

import pytest

from cgthub import airflow_env
from tests.test_dags_run import webhook  # noqa: F401 - the alert webhook's sink, a fixture

pytestmark = pytest.mark.slow


def test_a_stuck_task_is_failed_at_its_execution_timeout_and_pages(db_url, monkeypatch, webhook):  # noqa: F811
    monkeypatch.setenv("CGTHUB_CONNECTORS", "")
    monkeypatch.setenv("CGTHUB_TASK_EXECUTION_TIMEOUT", "2")  # read when the DAG files are parsed
    airflow_env.migrate_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    import connectors.courier.webhook

    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
    stuck = []

    def hangs(*args: object, **kwargs: object) -> None:  # a held lock, a partner, a bug: it never returns
        stuck.append(time.monotonic())
        time.sleep(120)

    monkeypatch.setattr(connectors.courier.webhook, "apply_held", hangs)
    started = time.monotonic()
    dag_run = airflow_env.run_dag_test(bag.dags["cgthub_courier_held"])
    took = time.monotonic() - started

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert stuck and states["apply_held"] == "failed" and dag_run.state == "failed", states
    assert took < 60, took  # failed at its 2 s, not after the two minutes it would have hung
    assert any("cgthub task cgthub_courier_held.apply_held failed" in m.get("message", "") for m in webhook), webhook
