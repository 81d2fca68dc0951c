"""Airflow scaled out on this machine: CeleryExecutor on PostgreSQL and Redis, each component a process.

docker-compose runs the same shape in containers; this starts it without Docker so that a test
can prove the hub's DAGs run when their tasks are spread over several workers: `airflow db
migrate`, then an API server (the UI, the public API and the Execution API that every task runner
talks to), a scheduler, a DAG processor and N Celery workers. All share one configuration and one
JWT secret (a worker signing with another secret is refused: "Signature verification failed").

Each worker runs in its own UTS namespace under its own host name (`unshare --uts`, root only), as
it would on its own machine: the host name a task instance records in Airflow's metadata then
says which worker ran it. Workers serve no logs (they would all want port 8793); each component's
output goes to a file under AIRFLOW_HOME/logs/cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cgthub import airflow_env

WORKER_NAMES = ("cgthub-worker-a", "cgthub-worker-b")

# Gives the process a host name of its own, then becomes the command that follows (run under unshare --uts).
_AS_HOST = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"


def own_host_names_possible() -> str | None:
    """None when a process can get a host name of its own here; else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True, check=False)  # noqa: S607
    return None if probe.returncode == 0 else f"unshare --uts: {probe.stderr.strip() or probe.returncode}"


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster keeps its state and how its parts find each other."""

    home: Path  # AIRFLOW_HOME: airflow.cfg-free, logs under it
    metadata_url: str  # SQLAlchemy URL of Airflow's metadata database (PostgreSQL)
    broker_url: str  # redis://host:port/db
    queue: str  # the Celery queue tasks go to and workers serve (distinct per cluster)
    api_port: int
    workers: tuple[str, ...] = WORKER_NAMES
    concurrency: int = 2  # task slots per worker
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(64))  # >= 64 bytes: JWT's HS512

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def environment(
    config: ClusterConfig, base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every component's environment: `base` without its Airflow settings, the hub's Airflow defaults
    for `home`, and the Celery, database and API settings the components must agree on."""
    env = {k: v for k, v in base.items() if not (k.startswith("AIRFLOW__") or k == "AIRFLOW_HOME")}
    env.update(airflow_env.defaults(config.home))
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": config.metadata_url,
            # Airflow's async engine would take asyncpg for postgresql; psycopg 3 (installed) does both.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": config.metadata_url.replace("+psycopg:", "+psycopg_async:"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": config.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + config.metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(config.concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": config.queue,
            "AIRFLOW__API_AUTH__JWT_SECRET": config.jwt_secret,
            "AIRFLOW__API__SECRET_KEY": config.jwt_secret,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(config.api_port),
            "AIRFLOW__API__BASE_URL": config.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.api_url}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Each worker imports what every task process needs once, before its pool forks.
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": '{"imports": ["cgthub.devtools.celery_preload"]}',
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Start-up speed: the scheduler looks every second, the DAG processor for new files every 5 s.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    env.update(extra or {})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class AirflowCluster:
    """The components as child processes of this one; `stop()` ends them (a `with` block does)."""

    def __init__(self, config: ClusterConfig, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.logs = config.home / "logs" / "cluster"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def __enter__(self) -> AirflowCluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def migrate(self) -> None:
        """Create Airflow's metadata tables (`airflow db migrate`)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "db-migrate.log").open("wb") as out:
            done = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"], env=self.env, stdout=out, stderr=out, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{self.tail('db-migrate')}")

    def start(self) -> None:
        """The API server, the scheduler, the DAG processor and every worker (not waiting for them)."""
        airflow = [sys.executable, "-m", "airflow"]
        self._spawn("api-server", [*airflow, "api-server", "--port", str(self.config.api_port), "--workers", "1"])
        self._spawn("scheduler", [*airflow, "scheduler"])
        self._spawn("dag-processor", [*airflow, "dag-processor"])
        for name in self.config.workers:
            worker = [
                *airflow,
                "celery",
                "worker",
                "--queues",
                self.config.queue,
                "--concurrency",
                str(self.config.concurrency),
                "--celery-hostname",
                f"{name}@%h",
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ]
            self._spawn(name, ["unshare", "--uts", sys.executable, "-c", _AS_HOST, name, *worker])

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("wb")
        self._files.append(out)
        self.processes[name] = subprocess.Popen(  # noqa: S603 - our interpreter, fixed commands
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check_alive(self) -> None:
        """Raise, with its last lines, when a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_for_log(self, name: str, marker: str, timeout: float) -> None:
        """Until `marker` appears in a component's output (e.g. a worker's "ready.")."""
        deadline = time.monotonic() + timeout
        path = self.logs / f"{name}.log"
        while marker not in (path.read_text(errors="replace") if path.exists() else ""):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not log {marker!r} in {timeout:.0f} s:\n{self.tail(name)}")
            time.sleep(0.5)

    def api(self) -> Any:
        """An HTTP client on the API server (the cluster's auth manager must let it in)."""
        import httpx

        return httpx.Client(base_url=self.config.api_url, timeout=30)

    def stop(self) -> None:
        """Ask every component to stop, then kill what is left of it and its children after 20 s.

        SIGTERM goes to each component alone, not to its process group: a Celery worker's warm shutdown
        ends its pool children itself, and children terminated beside it make its result handler read a
        closed pipe (billiard's "EOFError: Ran out of input" traceback in the worker's log).
        """
        import signal

        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)  # what a component left behind (pool children)
            process.wait()
        for out in self._files:
            out.close()
        self._files.clear()


def _signal_group(pid: int, signum: int) -> None:
    """Signal a component's process group (it and the children it started), if any is left."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
