"""`make up`: the hub for real on one machine: Airflow standalone, the MLLP listener, the sandboxes.

Airflow (`airflow standalone`: API server + UI on http://localhost:8080, scheduler, DAG processor,
triggerer, LocalExecutor, SQLite metadata under var/airflow) runs the DAGs of `dags/` on their
schedules, unpaused. The partners are the sandboxes of `connectors/`, each its own process on a
fixed loopback port (8701-8705; `AIRFLOW_CONN_*` point the connectors at them unless already set),
and the MLLP listener takes the hospital's HL7 on :2575. A feeder has the partners record the demo
story's next slice in their sandboxes (and the hospital send its HL7) every `--tick` seconds, so
data flows on schedule. Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from cgthub.settings import PROJECT_ROOT

LISTENER_PORT = 2575


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    print(f"starting {name}: {' '.join(argv)}")
    return subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT)  # noqa: S603 - our interpreter, fixed modules


def _services(env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """The MLLP listener and the partner sandboxes, each its own process on its fixed port."""
    from connectors.sandboxes import FIXED_PORTS

    listener = [sys.executable, "-m", "cgthub.services", "mllp-listener", "--port", str(LISTENER_PORT)]
    started = [_start(f"MLLP listener on 127.0.0.1:{LISTENER_PORT} (archive-only)", listener, env)]
    for partner, port in FIXED_PORTS.items():
        argv = [sys.executable, "-m", "cgthub.services", "sandbox", partner, "--port", str(port)]
        started.append(_start(f"{partner} sandbox on 127.0.0.1:{port}", argv, env))
    return started


def _feed(tick: float, stop: threading.Event) -> None:
    """The demo story in slices: each tick, the partners record the next `span` of it in their sandboxes.

    A slice that finds a sandbox or the listener not up yet is delivered again (records are keyed:
    the sandboxes and the hub take a repeat as the duplicate it is)."""
    import httpx

    from cgthub import demo, demo_scenario
    from cgthub.tables import utcnow
    from connectors.sandboxes import SandboxPartners

    partners = SandboxPartners.from_connections()
    now = utcnow().replace(minute=0, second=0, microsecond=0)
    _people, emissions = demo_scenario.world(now)
    start = min(e.at for e in emissions)
    span = (now - start) / 40
    cut, wave = start, 0
    while not stop.is_set() and cut < now:
        cut, wave = cut + span, wave + 1
        batch = [e for e in emissions if cut - span < e.at <= cut]
        if batch:
            for attempt in range(30):  # the sandboxes and the listener may still be starting
                try:
                    demo.deliver(batch, partners)
                    break
                except (OSError, httpx.TransportError):
                    if attempt == 29:
                        raise
                    stop.wait(2)
            print(f"feeder: slice {wave}/40 up to {cut:%Y-%m-%d}: {len(batch)} partner messages")
        stop.wait(tick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tick", type=float, default=30.0, help="seconds between slices of demo traffic")
    parser.add_argument("--no-feed", action="store_true", help="no synthetic traffic (real partners only)")
    args = parser.parse_args(argv)

    from cgthub import airflow_env, store

    airflow_env.configure(home=PROJECT_ROOT / "var" / "airflow")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    port = os.environ.setdefault("AIRFLOW__API__PORT", "8080")
    # Task processes talk to the API server's Execution API: same port, whatever it is.
    os.environ.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://localhost:{port}/execution/")
    from connectors.sandboxes import FIXED_PORTS, LISTENER_ENV, connection_env

    for name, uri in connection_env(FIXED_PORTS).items():  # a partner's real address, when set, wins
        os.environ.setdefault(name, uri)
    os.environ.setdefault(LISTENER_ENV, f"127.0.0.1:{LISTENER_PORT}")
    store.upgrade()
    airflow_env.migrate_metadata_db()
    env = os.environ.copy()
    # `airflow standalone` starts its components as `airflow ...` commands: this venv's bin comes first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The hub's DAGs run on their schedules from the start (a DAG a test or the demo created stays paused).
    airflow = [sys.executable, "-m", "airflow", "dags"]
    subprocess.run([*airflow, "reserialize"], env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    unpause = [*airflow, "unpause", "--treat-dag-id-as-regex", "-y", "^cgthub_"]
    subprocess.run(unpause, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    children = [_start("Airflow standalone", [sys.executable, "-m", "airflow", "standalone"], env)]
    children += _services(env)
    stop = threading.Event()
    if not args.no_feed:
        threading.Thread(target=_feed, args=(args.tick, stop), daemon=True).start()
    print(f"Airflow UI: http://localhost:{port} (login: var/airflow/simple_auth_manager_passwords.json.generated)")
    print(f"Orders view: http://localhost:{port}/cgthub/ui/orders; hub API: http://localhost:{port}/cgthub/api/docs")
    print("API keys: .venv/bin/cgthub api keys create --help")
    try:
        while all(child.poll() is None for child in children):
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop.set()
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + timedelta(seconds=20).total_seconds()
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
