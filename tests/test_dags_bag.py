"""Every DAG file imports cleanly and lightly, and carries the policy the hub relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgthub import airflow_env

DAG_FILES = sorted(p.name for p in airflow_env.DAGS_FOLDER.glob("*.py"))
INGEST = [
    "cgthub_ingest_crm",
    "cgthub_ingest_erp",
    "cgthub_ingest_courier",
    "cgthub_ingest_cmo",
    "cgthub_ingest_cmo_batch",
]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))


def test_every_dag_file_imports_without_errors(bag):
    """(How fast they parse is not timed here: a loaded CI machine is too slow to hold a bound. That they
    import nothing heavy is `test_dag_files_import_nothing_heavy_at_module_level`.)"""
    assert bag.import_errors == {}
    stats = {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats}
    assert sorted(stats) == DAG_FILES


def test_the_expected_dags_exist(bag):
    assert sorted(bag.dags) == sorted(
        [
            *INGEST,
            "cgthub_hl7_inbox",
            "cgthub_courier_held",
            "cgthub_outbound",
            "cgthub_reconciliation",
            "cgthub_monitoring",
            "cgthub_slots_sync",
        ]
    )


def test_every_dag_has_tags_retries_with_backoff_and_no_catchup(bag):
    for dag_id, dag in bag.dags.items():
        assert "cgthub" in dag.tags and len(dag.tags) >= 2, dag_id
        assert dag.catchup is False, dag_id
        assert dag.schedule is not None, dag_id
        assert dag.doc_md, dag_id
        for task in dag.tasks:
            assert task.retries >= 3, (dag_id, task.task_id)
            assert task.retry_exponential_backoff, (dag_id, task.task_id)
            assert task.on_failure_callback, (dag_id, task.task_id)


def test_sync_dags_carry_deadline_alerts(bag):
    from airflow.sdk import DeadlineAlert

    for dag_id in [*INGEST, "cgthub_hl7_inbox", "cgthub_courier_held", "cgthub_slots_sync"]:
        deadlines = bag.dags[dag_id].deadline
        assert deadlines and all(isinstance(d, DeadlineAlert) for d in deadlines), dag_id
        assert deadlines[0].callback.path == "cgthub.notifier.sync_deadline_missed"


def test_ingest_dags_announce_assets_and_downstream_dags_listen(bag):
    for dag_id in INGEST:
        announce = bag.dags[dag_id].get_task("announce")
        assert {a.uri for a in announce.outlets} >= {"cgthub://ledger/events"}
    inbox = bag.dags["cgthub_hl7_inbox"].timetable.asset_condition
    assert inbox.uri == "cgthub://hl7/inbox"
    assert [type(w.trigger).__name__ for w in inbox.watchers] == ["HL7InboxTrigger"]
    for dag_id in ("cgthub_outbound", "cgthub_reconciliation", "cgthub_monitoring"):
        assert bag.dags[dag_id].timetable.asset_condition.uri == "cgthub://ledger/events", dag_id


def test_outbound_drains_each_partner_in_its_own_mapped_task(bag):
    drain = bag.dags["cgthub_outbound"].get_task("drain")
    from cgthub import partners

    drained = drain.op_kwargs_expand_input.value["partner"]
    pushers = [p.name for p in partners.registry().values() if p.push is not None]
    assert sorted(drained) == sorted(pushers) and len(drained) == len(set(drained))
    assert {"crm", "erp", "hl7", "cmo"} <= set(drained)


def test_dag_files_import_nothing_heavy_at_module_level():
    """Parsing must not touch the hub's database layer: no cgthub.store, ledger or pipeline at import."""
    import subprocess
    import sys

    HEAVY = ("cgthub.store", "cgthub.ledger", "cgthub.pipeline", "cgthub.archive", "cgthub.projection")

    code = (
        "import sys, runpy;"
        f"[runpy.run_path(p) for p in {[str(airflow_env.DAGS_FOLDER / f) for f in DAG_FILES]!r}];"
        f"heavy=[m for m in {HEAVY!r} if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
