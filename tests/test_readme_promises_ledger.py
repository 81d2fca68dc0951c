"""README, Chain of identity and custody: "`cgthub ledger checkpoint` (and the monitoring DAG, every
15 minutes) appends each chain head that moved ... a head that contradicts an earlier checkpoint is
not recorded and opens a critical `ledger_tampered` alert." The alert is the monitoring DAG's (run
here with `dag.test()`, its real tasks); `cgthub ledger checkpoint` refuses and exits 1 naming the
order (tests/test_ledger_anchor.py). On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cgthub import ledger
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.tables import Alert, Order
from tests.factories import happy_path
from tests.test_dags_run import dags, hub, run  # noqa: F401  (fixtures)
from tests.test_ledger_anchor import TARGET_COI, truncate_tail

pytestmark = pytest.mark.slow


def _tampered(url: str) -> list[tuple[str | None, str, str]]:
    with session_scope(url, readonly=True) as session:
        rows = session.scalars(select(Alert).where(Alert.kind == "ledger_tampered")).all()
        return [(a.order_id, a.severity, a.status) for a in rows]


def test_the_monitoring_dag_refuses_a_cut_back_chain_and_opens_a_critical_alert(dags, hub):  # noqa: F811
    with session_scope(hub) as session:
        ledger.append_many(session, happy_path(1) + happy_path(2))
        target = session.scalar(select(Order.id).where(Order.coi_id == TARGET_COI))
    dag_run, states = run(dags["cgthub_monitoring"])
    assert dag_run.state == "success" and states["checkpoint_ledger"] == "success"
    recorded = get_settings().ledger_checkpoint_path.read_text()
    assert target in recorded and _tampered(hub) == []

    with session_scope(hub) as session:  # someone with write access to the database cuts a chain back
        truncate_tail(session, target, hub)
    run(dags["cgthub_monitoring"])
    assert _tampered(hub) == [(target, "critical", "open")]
    assert get_settings().ledger_checkpoint_path.read_text() == recorded  # the shorter head was not recorded
    run(dags["cgthub_monitoring"])
    assert len(_tampered(hub)) == 1  # one alert however often the DAG looks
