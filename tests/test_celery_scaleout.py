"""Scale-out without Docker: the hub's DAGs on Airflow's CeleryExecutor, two workers, PostgreSQL and Redis.

Airflow runs as compose runs it, each component its own process (cgthub.devtools.airflow_cluster):
an API server, a scheduler, a DAG processor and two Celery workers, each worker under a host name of
its own, sharing one configuration and JWT secret; Airflow's metadata and Celery's results in a
PostgreSQL database made for this test, the broker a Redis database and queue of its own. The
partners are the sandboxes on loopback and the hospital sends HL7 over MLLP to the hub's listener,
as in `make demo`.

The story is a slice of `make demo`'s: eight orders (the exception cases among them) with their
whole story so far, recorded by the partners at once, as `make up`'s feeder delivers a slice; then
each DAG runs once in `make demo`'s order, triggered through Airflow's REST API and run by the
scheduler on the workers. The reference is the same slice run the way `make demo` runs it: the same
DAGs with `dag.test()` in this process, on SQLite. Both must print the same order table, and the
task instances must show that both workers ran tasks.

Under CI=true the test fails when PostgreSQL or Redis is down; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cgthub import airflow_env, demo, store
from cgthub.devtools import scratch_db
from cgthub.devtools.airflow_cluster import AirflowCluster, ClusterConfig, environment, own_host_names_possible
from cgthub.settings import var_dir
from cgthub.tables import utcnow

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG_ADMIN_URL = os.environ.get("CGTHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = ("127.0.0.1", 6379)
# The demo's patients in the slice: the HL7 resend (2), the temperature excursion (3), the OOS batch
# released under exception (5), the COI mismatch (7), a cancellation (11), the missed CMO receipt
# (13), the vein-to-vein overrun (18), the CRM that says cancelled (22).
SLICE = (2, 3, 5, 7, 11, 13, 18, 22)
# `make demo`'s order of DAG runs after partners spoke; the last two judge at the story's `now`.
RUNS = [*(f"cgthub_ingest_{p}" for p in demo.INGEST_DAGS), "cgthub_hl7_inbox", "cgthub_outbound"]
JUDGED = ["cgthub_monitoring", "cgthub_reconciliation"]


def _required(problem: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required under CI=true: {problem}")
    pytest.skip(problem)


@pytest.fixture
def services() -> None:
    """PostgreSQL, Redis and separate host names for the workers, or a skip (a failure under CI)."""
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # the server is down or refuses us
        _required(f"PostgreSQL at 127.0.0.1:5432: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                _required("Redis at 127.0.0.1:6379 does not answer PING")
    except OSError as exc:
        _required(f"Redis at 127.0.0.1:6379: {exc}")
    if problem := own_host_names_possible():
        _required(f"a host name per worker: {problem}")


@pytest.fixture
def metadata_url(services: None) -> Iterator[str]:
    """A PostgreSQL database of this test's own for Airflow's metadata (and, in a schema, the hub's data)."""
    with scratch_db.pg_database(PG_ADMIN_URL, prefix="cgthub_celery") as url:
        yield url


@pytest.fixture
def hub_url(metadata_url: str) -> Iterator[str]:
    """The cluster's hub: its data in a schema of its own in the test's database."""
    with scratch_db.pg_schema(metadata_url, prefix="hub") as url:
        yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _use_hub(monkeypatch: pytest.MonkeyPatch, url: str, var: Path) -> None:
    var.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("CGTHUB_DATABASE_URL", url)
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(var))
    monkeypatch.setenv("CGTHUB_LEDGER_CHECKPOINTS", str(var / "ledger-checkpoints.jsonl"))


def _slice(now: datetime) -> tuple[list[Any], list[Any]]:
    """The slice's patients and what their partners have said by `now` (and the courier's orphan shipment)."""
    from cgthub import demo_scenario

    people, lives = demo_scenario.stories(now)
    chosen = [(person, life) for person, life in zip(people, lives, strict=True) if person.n in SLICE]
    said = [e for _person, life in chosen for e in life if e.at <= now] + [demo_scenario.orphan_shipment(now)]
    return [person for person, _life in chosen], sorted(said, key=lambda e: e.at)


def _partners_speak(now: datetime, people: list[Any], emissions: list[Any], partners: Any) -> None:
    """What `make demo` has the partners do: record, send HL7, export CSV; and the CRM extract it keeps."""
    import json

    from cgthub import demo_scenario

    demo.deliver(emissions, partners)
    extract = var_dir() / "snapshots" / "crm.json"
    extract.parent.mkdir(parents=True, exist_ok=True)
    extract.write_text(json.dumps(demo_scenario.crm_extract(people, now), indent=1))


def _table(now: datetime) -> list[str]:
    """`make demo`'s order table without its first column, the hub order ids (random per hub)."""
    lines = demo.render_table(now).splitlines()
    return [re.sub(r"^ORD-\w+ +", "", line) for line in lines]


def _forget_queue(config: ClusterConfig) -> None:
    """Remove what the broker keeps under this test's queue name (other tests may share the Redis database)."""
    import redis

    broker = redis.Redis.from_url(config.broker_url)
    try:
        keys = list(broker.scan_iter(match=f"*{config.queue}*"))
        if keys:
            broker.delete(*keys)
    finally:
        broker.close()


class _Reference:
    """The slice as `make demo` runs it: dag.test() in this process, hub data on SQLite."""

    def __init__(self, now: datetime, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.tmp, self.monkeypatch = now, tmp, monkeypatch

    def run(self) -> list[str]:
        _use_hub(self.monkeypatch, f"sqlite:///{self.tmp / 'reference.db'}", self.tmp / "reference-var")
        store.upgrade()
        airflow_env.migrate_metadata_db()
        people, emissions = _slice(self.now)
        hub = demo.Hub()
        partners = hub.start()
        try:
            _partners_speak(self.now, people, emissions, partners)
            runner = demo.Runner()
            for dag_id in RUNS:
                runner.run(dag_id)
            for dag_id in JUDGED:
                runner.run(dag_id, {"now": self.now.isoformat()})
        finally:
            hub.stop()
        return _table(self.now)


class _Driver:
    """Triggers DAG runs through the cluster's REST API and waits for each to end."""

    def __init__(self, cluster: AirflowCluster) -> None:
        self.cluster = cluster
        self.client = cluster.api()

    def wait_ready(self, dag_ids: list[str], timeout: float) -> None:
        """The API answers, every DAG is parsed and unpaused, and both workers are ready."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            self.cluster.check_alive()
            try:
                answer = self.client.get("/api/v2/dags", params={"dag_id_pattern": "cgthub_", "limit": 100})
                listed = {d["dag_id"]: d["is_paused"] for d in answer.json()["dags"]} if answer.is_success else {}
            except httpx.TransportError:
                listed = {}
            if all(listed.get(dag_id) is False for dag_id in dag_ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAGs not ready in {timeout:.0f} s: {listed}\n{self.cluster.tail('dag-processor')}")
            time.sleep(0.5)
        for worker in self.cluster.config.workers:
            self.cluster.wait_for_log(worker, " ready.", max(1.0, deadline - time.monotonic()))

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 120) -> None:
        answer = self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        assert answer.status_code == 200, answer.text
        run_id = answer.json()["dag_run_id"]
        deadline = time.monotonic() + timeout
        while (state := self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]) not in (
            "success",
            "failed",
        ):
            self.cluster.check_alive()
            assert time.monotonic() < deadline, f"{dag_id} still {state} after {timeout:.0f} s"
            time.sleep(0.3)
        assert state == "success", f"{dag_id} {state}:\n{self._failed_logs(dag_id, run_id)}"

    def _failed_logs(self, dag_id: str, run_id: str) -> str:
        found = self.cluster.config.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        return "\n".join(p.read_text()[-3000:] for p in sorted(found.rglob("*.log"))) if found.exists() else ""


def test_dags_on_two_celery_workers_give_make_demos_order_table(metadata_url, hub_url, tmp_path, monkeypatch):
    from cgthub.partners import sandbox_world

    started = time.monotonic()
    world = sandbox_world()
    for name in [*world.connection_env(world.FIXED_PORTS), world.LISTENER_ENV, "CGTHUB_CONNECTORS"]:
        monkeypatch.delenv(name, raising=False)  # the hubs below set them; undone after the test
    now = utcnow().replace(minute=0, second=0, microsecond=0)  # as `make demo` places its story

    # The cluster's hub: data in a schema of the test's database (hub_url), its partners in this process.
    airflow_db = create_engine(metadata_url)
    _use_hub(monkeypatch, hub_url, tmp_path / "cluster-var")
    store.upgrade()
    cluster_env = dict(os.environ)
    hub = demo.Hub()
    partners = hub.start()
    cluster_env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")})
    cluster_env[world.LISTENER_ENV] = os.environ.get(world.LISTENER_ENV, "")
    queue = f"cgthub_{uuid.uuid4().hex[:10]}"
    config = ClusterConfig(
        home=tmp_path / "airflow",
        metadata_url=metadata_url,
        broker_url=f"redis://{REDIS[0]}:{REDIS[1]}/{int(queue[-2:], 16) % 15 + 1}",
        queue=queue,
        api_port=_free_port(),
    )
    extra = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # the test's client, on loopback only
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the runs this test triggers
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # the DAG files do not change here
    }
    cluster = AirflowCluster(config, environment(config, cluster_env, extra))
    boot_errors: list[BaseException] = []

    def boot() -> None:
        try:
            cluster.migrate()
            cluster.start()
        except BaseException as exc:  # handed to the test's thread below
            boot_errors.append(exc)

    booting = threading.Thread(target=boot, daemon=True)
    try:
        booting.start()  # Airflow's metadata and components come up while the reference runs
        expected = _Reference(now, tmp_path, monkeypatch).run()
        reference_done = time.monotonic() - started

        _use_hub(monkeypatch, hub_url, tmp_path / "cluster-var")
        people, emissions = _slice(now)
        _partners_speak(now, people, emissions, partners)
        booting.join(timeout=120)
        if boot_errors:
            raise boot_errors[0]
        driver = _Driver(cluster)
        driver.wait_ready([*RUNS, *JUDGED], timeout=120)
        cluster_up = time.monotonic() - started
        for dag_id in RUNS:
            driver.run(dag_id)
        for dag_id in JUDGED:
            driver.run(dag_id, {"now": now.isoformat()})
        shown = _table(now)
        with airflow_db.connect() as conn:
            ran_on = dict(
                conn.execute(
                    text("select hostname, count(*) from task_instance where state = 'success' group by hostname")
                ).all()
            )
    finally:
        booting.join(timeout=180)  # a component started after stop() would outlive the test
        cluster.stop()
        hub.stop()
        airflow_db.dispose()
        _forget_queue(config)
    print(f"reference {reference_done:.0f} s, cluster up {cluster_up:.0f} s, total {time.monotonic() - started:.0f} s")

    assert len([line for line in shown if re.match(r"CRM-\d{5} ", line)]) == len(SLICE)
    assert shown == expected
    assert set(ran_on) == set(config.workers), ran_on  # tasks ran on both workers, and nowhere else
    noisy = [name for name in cluster.processes if "Traceback" in cluster.tail(name, lines=100_000)]
    assert not noisy, {name: cluster.tail(name) for name in noisy}  # started and ran without a traceback
