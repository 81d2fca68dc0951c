"""The slots DAG reads the CMO's published capacity into the hub, run for real (dag.test(),
in-process) against the CMO sandbox over HTTP, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import select

from cgthub import airflow_env
from cgthub.scheduling_tables import ManufacturingSlot
from cgthub.store import session_scope
from connectors.cmo import sandbox as cmo_sandbox
from connectors.common import breaker
from connectors.common.sandbox import SandboxServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slots_dag():
    airflow_env.migrate_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER / "slots_sync.py"))
    assert bag.import_errors == {}
    return bag.dags["cgthub_slots_sync"]


def test_the_slots_dag_stores_the_cmos_capacity_and_its_booked_count(db_url, monkeypatch, slots_dag):
    breaker._breakers.clear()
    app = cmo_sandbox.create_app(standing_plan=False)
    day = datetime.now(UTC).date() + timedelta(days=10)
    with SandboxServer(app) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        body = [{"cmo": "CMO-NJ", "therapy": "CART-19", "date": day.isoformat(), "capacity": 3}]
        assert requests.post(f"{cmo.base_url}/sandbox/capacity", json=body, timeout=5).status_code == 200
        app.sandbox_state.booked[("CMO-NJ", "CART-19", day)] = 1  # one place the CMO gave someone else

        dag_run = airflow_env.run_dag_test(slots_dag)

    assert dag_run.state == "success"
    assert slots_dag.timetable.expression == "7,37 * * * *"  # every 30 minutes
    with session_scope(db_url, readonly=True) as session:
        stored = session.scalars(
            select(ManufacturingSlot).where(ManufacturingSlot.cmo == "CMO-NJ", ManufacturingSlot.day == day)
        ).all()
        days = session.scalars(select(ManufacturingSlot.day).distinct()).all()
    nj = {row.therapy: (row.capacity, row.booked, row.available) for row in stored}
    assert nj["CART-19"] == (3, 1, 2) and nj["CART-BCMA"] == (0, 0, 0)
    assert len(days) == 90 + 30 + 1  # the horizon and the shipping days that trail it, from today
