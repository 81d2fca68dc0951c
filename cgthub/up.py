"""`make up`: the hub for real on one machine: Airflow standalone, the MLLP listener, the sandboxes.

Airflow (`airflow standalone`: API server + UI on http://localhost:8080, scheduler, DAG processor,
triggerer, LocalExecutor, SQLite metadata under var/airflow) runs the DAGs of `dags/` on their
schedules, unpaused. The partners are the sandboxes of `connectors/`, each its own process on a
fixed loopback port (8701-8705; `AIRFLOW_CONN_*` point the connectors at them unless already set),
and the MLLP listener takes the hospital's HL7 on :2575. A feeder has the partners record the demo
story in their sandboxes (and the hospital send its HL7), one slice every `--tick` seconds, so data
flows on schedule. The story is `make demo`'s, placed against the real clock the monitoring DAGs
judge by: each slice brings the next order's whole story so far (oldest enrolment first), so every
order the hub shows stands where `make demo` shows it and raises the same alerts; what the story
says happens later is delivered when the clock reaches it. Ctrl-C stops everything this command
started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgthub.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from cgthub.demo_scenario import Emission

LISTENER_PORT = 2575
TICK_SECONDS = 30.0  # the feeder's default: one slice of the demo story every 30 s
AIRFLOW_HOME = PROJECT_ROOT / "var" / "airflow"  # unless AIRFLOW_HOME is set
API_PORT, API_HOST = "8080", "127.0.0.1"  # Airflow's UI and API server, unless AIRFLOW__API__PORT/HOST are set
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # Airflow's name for it, in AIRFLOW_HOME
HUB_DAGS = ["--treat-dag-id-as-regex", "-y", "^cgthub_"]
# `airflow db migrate`, `airflow dags reserialize` and `airflow dags pause <HUB_DAGS>` in one process:
# each `airflow` command alone imports Airflow and builds its CLI again (half the CPU of three commands).
_PREPARE_AIRFLOW = """
import sys
from airflow.__main__ import main
hub_dags = sys.argv[1:]
for command in (["db", "migrate"], ["dags", "reserialize"], ["dags", "pause", *hub_dags]):
    sys.argv = ["airflow", *command]
    main()
"""


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A child in a process group of its own, so that stopping it stops what it started (standalone's
    scheduler, API server, DAG processor and triggerer)."""
    print(f"starting {name}: {' '.join(argv)}")
    return subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT, start_new_session=True)  # noqa: S603 - our interpreter


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass  # the group has gone


def _services(env: dict[str, str], listener_port: int, ports: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """The MLLP listener and the partner sandboxes, each its own process on its port."""
    listener = [sys.executable, "-m", "cgthub.services", "mllp-listener", "--port", str(listener_port)]
    started = [_start(f"MLLP listener on 127.0.0.1:{listener_port} (archive-only)", listener, env)]
    for partner, port in ports.items():
        argv = [sys.executable, "-m", "cgthub.services", "sandbox", partner, "--port", str(port)]
        started.append(_start(f"{partner} sandbox on 127.0.0.1:{port}", argv, env))
    return started


@dataclass
class FeedPlan:
    """The demo story against the real clock: the past in slices of whole orders, then the future as it comes."""

    now: datetime
    slices: list[list[Emission]]  # each: the next orders' whole story up to `now`
    upcoming: list[Emission]  # what the story says happens after `now`, oldest first


def feed_plan(now: datetime, orders_per_slice: int = 1) -> FeedPlan:
    """Slice `make demo`'s story as of `now` by order, oldest enrolment first.

    A slice of time would show each order half told while monitoring judges it against now (an
    order enrolled six weeks ago whose story stops at enrolment is six weeks late); a slice of
    whole orders shows each as far as it has come. The courier's orphan shipment, no order's, comes last."""
    from cgthub import demo_scenario

    people, lives = demo_scenario.stories(now)
    by_enrolment = sorted(zip(people, lives, strict=True), key=lambda pair: (pair[0].enrolled_at, pair[0].n))
    slices: list[list[Emission]] = []
    for first in range(0, len(by_enrolment), orders_per_slice):
        group = by_enrolment[first : first + orders_per_slice]
        slices.append(sorted((e for _p, life in group for e in life if e.at <= now), key=lambda e: e.at))
    slices[-1] = sorted([*slices[-1], demo_scenario.orphan_shipment(now)], key=lambda e: e.at)
    upcoming = sorted((e for life in lives for e in life if e.at > now), key=lambda e: e.at)
    return FeedPlan(now, slices, upcoming)


def _deliver_when_up(batch: list[Emission], partners: Any, stop: threading.Event) -> None:
    """Deliver a batch, again while the sandboxes or the listener are still starting (records are keyed:
    the sandboxes and the hub take a repeat as the duplicate it is)."""
    import httpx

    from cgthub import demo

    for attempt in range(30):
        try:
            demo.deliver(batch, partners)
            return
        except (OSError, httpx.TransportError):
            if attempt == 29:
                raise
            stop.wait(2)


def _feed(tick: float, stop: threading.Event) -> None:
    """Each tick the partners record the next slice of the plan; then the story's future, as it falls due."""
    from cgthub.partners import sandbox_world
    from cgthub.tables import utcnow

    partners = sandbox_world().SandboxPartners.from_connections()
    plan = feed_plan(utcnow().replace(second=0, microsecond=0))
    for wave, batch in enumerate(plan.slices, start=1):
        if stop.is_set():
            return
        _deliver_when_up(batch, partners, stop)
        print(f"feeder: slice {wave}/{len(plan.slices)}: {len(batch)} partner messages")
        stop.wait(tick)
    upcoming = plan.upcoming
    while upcoming and not stop.is_set():
        now = utcnow()
        due = [e for e in upcoming if e.at <= now]
        if due:
            upcoming = upcoming[len(due) :]
            _deliver_when_up(due, partners, stop)
            print(f"feeder: {len(due)} partner messages due by {now:%Y-%m-%d %H:%M}Z")
        stop.wait(tick)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _answering(url: str, airflow: subprocess.Popen[bytes]) -> bool:
    """Wait until the API server answers `url` (True), or Airflow has exited (False)."""
    import httpx

    while airflow.poll() is None:
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet, or still loading its app
        time.sleep(1)
    return False


def _sandbox_ports(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, int]:
    """Each sandbox's port: its fixed one (8701-8705) unless `--sandbox-port PARTNER=PORT` says otherwise."""
    from cgthub import partners

    ports = {name: box.port for name, box in partners.sandboxes().items()}
    for pair in given:
        name, _, port = pair.partition("=")
        if name not in ports or not port.isdigit():
            parser.error(f"--sandbox-port {pair}: expected PARTNER=PORT, PARTNER one of {', '.join(ports)}")
        ports[name] = int(port)
    return ports


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, int]]:
    """The command line, and each sandbox's port."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tick", type=float, default=TICK_SECONDS, help="seconds between slices of demo traffic")
    parser.add_argument("--no-feed", action="store_true", help="no synthetic traffic (real partners only)")
    parser.add_argument("--listener-port", type=int, default=LISTENER_PORT, help="the MLLP listener's port")
    parser.add_argument(
        "--sandbox-port",
        action="append",
        default=[],
        metavar="PARTNER=PORT",
        help="a sandbox on another port than its fixed one (repeatable)",
    )
    args = parser.parse_args(argv)
    return args, _sandbox_ports(parser, args.sandbox_port)


def _airflow_home(environ: Mapping[str, str]) -> Path:
    """AIRFLOW_HOME as Airflow reads it (`~` and variables expanded), var/airflow unless set."""
    given = environ.get("AIRFLOW_HOME")
    return Path(os.path.expandvars(os.path.expanduser(given))) if given else AIRFLOW_HOME


def api_url(environ: Mapping[str, str]) -> str:
    """Where Airflow's API server and UI answer under this environment."""
    host = environ.get("AIRFLOW__API__HOST", API_HOST)
    loopback_or_any = ("127.0.0.1", "::1", "0.0.0.0", "::")  # noqa: S104 - compared, not bound
    return f"http://{'localhost' if host in loopback_or_any else host}:{environ.get('AIRFLOW__API__PORT', API_PORT)}"


def airflow_environment(environ: Mapping[str, str], listener_port: int, ports: dict[str, int]) -> dict[str, str]:
    """The environment `make up` starts Airflow standalone, the listener and the sandboxes with: `environ`
    plus the hub's Airflow settings (`airflow_env.defaults`: LocalExecutor, SQLite metadata in AIRFLOW_HOME,
    var/airflow unless set) and `make up`'s own. A value already in `environ` wins."""
    from cgthub import airflow_env
    from cgthub.partners import sandbox_world

    env = dict(environ)
    for name, value in airflow_env.defaults(_airflow_home(env)).items():
        env.setdefault(name, value)
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    # The LocalExecutor starts `parallelism` worker processes (Airflow's default: 32); the hub's tasks
    # mostly wait on partners and the database, so two per core keeps the machine responsive.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(min(8, 2 * (os.cpu_count() or 1))))
    env.setdefault("AIRFLOW__API__PORT", API_PORT)
    # This machine only (set AIRFLOW__API__HOST=0.0.0.0 to open it): the simple auth manager is for
    # development, and Airflow warns at start when it listens on every interface.
    env.setdefault("AIRFLOW__API__HOST", API_HOST)
    # Task processes talk to the API server's Execution API: same port, whatever it is.
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"{api_url(env)}/execution/")
    # While the scheduler, DAG processor, triggerer and the first tasks start together on a small
    # machine, the API server can take longer than Airflow's 5 s to answer a task; one that gives up
    # fails with a traceback and is retried later.
    env.setdefault("AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT", "30")
    world = sandbox_world()
    for name, uri in world.connection_env(ports).items():  # a partner's real address, when set, wins
        env.setdefault(name, uri)
    env.setdefault(world.LISTENER_ENV, f"127.0.0.1:{listener_port}")
    return env


def login_file(environ: Mapping[str, str]) -> Path:
    """The file Airflow's simple auth manager keeps the generated passwords in under this environment
    (its own rule: the configured file, else AIRFLOW_HOME's `simple_auth_manager_passwords.json.generated`)."""
    configured = environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    path = Path(configured) if configured else _airflow_home(environ) / PASSWORDS_FILE
    return PROJECT_ROOT / path  # a relative one is relative to Airflow's working folder (`_start`'s)


def main(argv: list[str] | None = None) -> int:
    args, ports = parse_args(argv)

    from cgthub import airflow_env, store

    airflow_env.configure(home=_airflow_home(os.environ))  # its folder made; airflow not imported yet
    os.environ.update(airflow_environment(os.environ, args.listener_port, ports))  # the feeder's too
    api = api_url(os.environ)
    store.upgrade()
    env = os.environ.copy()
    # `airflow standalone` starts its components as `airflow ...` commands: this venv's bin comes first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The hub's DAGs stay paused until the API server answers: a task started before it finds no
    # Execution API to report to and fails with a traceback (a DAG a test or the demo created stays paused).
    # Airflow's metadata migrated, the DAGs stored (created paused) and the hub's paused, in one process.
    created_paused = {**env, "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}
    prepare = [sys.executable, "-W", "ignore", "-c", _PREPARE_AIRFLOW, *HUB_DAGS]
    subprocess.run(prepare, env=created_paused, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops what this command started, as Ctrl-C does
    children = [_start("Airflow standalone", [sys.executable, "-m", "airflow", "standalone"], env)]
    stop = threading.Event()
    try:
        children += _services(env, args.listener_port, ports)
        if not args.no_feed:
            threading.Thread(target=_feed, args=(args.tick, stop), daemon=True).start()
        if _answering(f"{api}/api/v2/monitor/health", children[0]):
            unpause = [sys.executable, "-m", "airflow", "dags", "unpause", *HUB_DAGS]
            subprocess.run(unpause, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
            print("the hub's DAGs are unpaused: they run on their schedules")
        print(f"Airflow UI: {api} (login: {login_file(env)})")
        print(f"Console: {api}/cgthub/console/orders; hub API: {api}/cgthub/api/docs")
        print("API keys: .venv/bin/cgthub api keys create --help")
        while all(child.poll() is None for child in children):
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop.set()
        for child in children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timedelta(seconds=20).total_seconds()
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(child, signal.SIGKILL)  # what is left of its group after 20 s
    return 0


if __name__ == "__main__":
    sys.exit(main())
