"""Test setup: every database test runs on SQLite and on PostgreSQL.

PostgreSQL (127.0.0.1:5432, database `test`) gets a schema of its own per test run, so parallel
runs never meet. When the server is down the PostgreSQL half is skipped, except under CI=true,
where it fails: CI must prove both backends.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Before anything imports airflow or reads settings: keep state in a temporary place, one per test
# process. pytest-xdist's workers start with the controller's environment, so the controller's
# places (every variable naming them: the var directory, AIRFLOW_HOME, Airflow's database URL) are
# dropped here, or three workers would share one Airflow metadata DB (two `airflow db migrate` at
# once on it; one worker's DAG runs and asset events seen by another's) and one var directory.
_TMP = Path(tempfile.mkdtemp(prefix=f"cgthub-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"))
_CONTROLLERS = os.environ.get("CGTHUB_TEST_TMP")
if _CONTROLLERS and os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in [name for name, value in os.environ.items() if _CONTROLLERS in value]:
        del os.environ[_name]
os.environ["CGTHUB_TEST_TMP"] = str(_TMP)
os.environ.setdefault("CGTHUB_VAR_DIR", str(_TMP / "var"))
# Tests write a drop folder's files whole and read them at once; tests/test_drop_folders.py sets the
# minimum age (cgthub.drop_folder) where it is what is tested.
os.environ.setdefault("CGTHUB_DROP_MIN_AGE_SECONDS", "0")
os.environ.setdefault("AIRFLOW_HOME", str(_TMP / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
# One Fernet key for this test process and every Airflow process it starts: without it each writes
# its own into (or keeps in memory beside) airflow.cfg, and a trigger one encrypted cannot be read by
# another (cryptography.fernet.InvalidToken when a DAG is synced).
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Airflow: the repo's dags/ and plugins/, its metadata DB inside the temporary AIRFLOW_HOME.
from cgthub import airflow_env  # noqa: E402

airflow_env.configure()

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402


class _RereadingMonkeyPatch(pytest.MonkeyPatch):
    """pytest's monkeypatch, after whose every change to the environment (and its undoing) the hub
    reads its settings again, as a new process would: get_settings() is read once per process."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        _reread_settings()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        _reread_settings()

    def undo(self) -> None:
        super().undo()
        _reread_settings()


def _reread_settings() -> None:
    from cgthub import settings

    settings.get_settings.cache_clear()


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    patch = _RereadingMonkeyPatch()
    yield patch
    patch.undo()


PG_ADMIN_URL = os.environ.get("CGTHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # the server is down or refuses us
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    problem = _pg_available()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required under CI=true: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    from cgthub.devtools.scratch_db import pg_schema

    with pg_schema(PG_ADMIN_URL, prefix="cgt") as url:  # one schema a test process; db_url empties it
        yield url


def _fresh_sqlite_url() -> str:
    return f"sqlite:///{_TMP / ('db-' + uuid.uuid4().hex[:8] + '.db')}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated, empty database on each backend; CGTHUB_DATABASE_URL points at it."""
    from cgthub import settings, store

    if request.param == "sqlite":
        url = _fresh_sqlite_url()
        store.upgrade(url)
    else:
        url = request.getfixturevalue("pg_schema_url")
        store.upgrade(url)
        _truncate(url)
    monkeypatch.setenv("CGTHUB_DATABASE_URL", url)
    # A fresh database gets a fresh checkpoint file: the last test's heads are not this database's.
    monkeypatch.setenv("CGTHUB_LEDGER_CHECKPOINTS", str(_TMP / f"checkpoints-{uuid.uuid4().hex[:8]}.jsonl"))
    settings.get_settings.cache_clear()
    yield url
    settings.get_settings.cache_clear()


def _truncate(url: str) -> None:
    from cgthub.store import get_engine
    from cgthub.tables import Base

    with get_engine(url).begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def session(db_url: str):
    from cgthub.store import session_scope

    with session_scope(db_url) as s:
        yield s


# Under `make test` (-n 3 --dist loadfile) xdist hands out whole files, largest first by test count,
# so a file of one long test (the Celery scale-out, `make up`'s start) started last and ran alone
# while the other worker idled. Here the files whose every test is marked slow go first (they cannot
# be split across workers), and among them those of one test (one long story on an Airflow of its own:
# the scale-out, `make up`); then the rest, largest first, as xdist would. The workers order their
# collection (below); the scheduler keeps that order (pytest_xdist_make_scheduler).
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # a single process runs in collection order, as before
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def weight(tests: list[pytest.Item]) -> tuple[bool, bool, int]:
        return (not all(item.get_closest_marker("slow") for item in tests), len(tests) > 1, -len(tests))

    items[:] = [item for tests in sorted(by_file.values(), key=weight) for item in tests]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlowFirst(LoadFileScheduling):
        def schedule(self) -> None:
            self.config.option.loadscopereorder = False  # the workers' order: slow files first
            super().schedule()

        def _assign_work_unit(self, node: object) -> None:
            super()._assign_work_unit(node)
            # A worker starts a test once it knows the next (or is told to stop): with a one-test
            # file as all its work it would wait for more, which comes only when a test completes.
            while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
                super()._assign_work_unit(node)

    return SlowFirst(config, log)
