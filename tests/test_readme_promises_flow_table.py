"""README, "How data flows" and "Chain of identity and custody": rows and figures read against the
code and the DAGs Airflow loads.

- the quarantine row names every stage an entry can have, and no other;
- the sync row: one ingest DAG per registered partner the hub pulls (the hospital, which sends, has
  the HL7 inbox DAG instead), the courier's held-webhooks DAG every 5 minutes;
- the ledger checkpoint: the monitoring DAG runs every 15 minutes (and when ledger events land).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cgthub import airflow_env, partners, quarantine

README = Path(__file__).resolve().parents[1] / "README.md"


def _row(room: str) -> str:
    (row,) = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(f"| {room} |")]
    return row


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    loaded = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
    assert not loaded.import_errors
    return loaded


def test_the_quarantine_row_names_every_stage() -> None:
    listed = _row("quarantine").split("|")[3]
    named = re.search(r"stage (.+?) or (\w+), with", listed)
    assert named, listed
    stages = [s.strip() for s in named.group(1).split(",")] + [named.group(2)]
    assert sorted(stages) == sorted(stage.value for stage in quarantine.Stage)


def test_one_ingest_dag_per_pulled_partner_and_the_hospital_has_the_inbox_dag(bag) -> None:
    assert "one ingest DAG per registered partner the hub pulls" in _row("sync (Airflow)")
    ingest = {dag_id.removeprefix("cgthub_ingest_") for dag_id in bag.dags if dag_id.startswith("cgthub_ingest_")}
    assert ingest == set(partners.pulled()) and len(ingest) >= 4
    registered = set(partners.registry())
    assert registered - ingest == {"hl7"} and "cgthub_hl7_inbox" in bag.dags


def _cron(dag) -> str:
    timetable = dag.timetable
    timetable = getattr(timetable, "timetable", timetable)  # asset-or-time: its time part
    return timetable.expression


def test_the_courier_held_dag_runs_every_5_minutes(bag) -> None:
    assert "the courier's held-webhooks DAG (every 5 minutes)" in _row("sync (Airflow)")
    assert _cron(bag.dags["cgthub_courier_held"]) == "*/5 * * * *"


def test_the_monitoring_dag_checkpoints_every_15_minutes(bag) -> None:
    assert "monitoring DAG, every 15 minutes" in " ".join(README.read_text(encoding="utf-8").split())
    monitoring = bag.dags["cgthub_monitoring"]
    assert _cron(monitoring) == "*/15 * * * *"
    assert "checkpoint" in " ".join(monitoring.task_ids)


def test_the_plugin_puts_the_four_console_pages_under_browse() -> None:
    """The plugin row: "puts Orders, Quarantine, Partner health and Mappings in force in Airflow's
    navigation (Browse)", as Airflow's plugins manager loads it."""
    from airflow import plugins_manager

    external_views, _react = plugins_manager._get_ui_plugins()
    console = [v for v in external_views if v["href"].startswith("/cgthub/console/")]
    assert "Orders, Quarantine, Partner health and Mappings in force" in _row("plugin")
    assert [v["name"] for v in console] == ["Orders", "Quarantine", "Partner health", "Mappings in force"]
    assert {(v["destination"], v["category"]) for v in console} == {("nav", "browse")}
