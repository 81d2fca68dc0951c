"""`make up`: the hub for real on one machine: Airflow standalone, the MLLP listener, the sandboxes.

Airflow (`airflow standalone`: API server + UI on http://localhost:8080, scheduler, DAG processor,
triggerer, LocalExecutor, SQLite metadata under var/airflow) runs the DAGs of `dags/` on their
schedules, unpaused. The partners are the sandboxes of `connectors/` when installed (each on
loopback) and the demo's synthetic partners otherwise: a feeder delivers the demo story's next
slice into the partners' drop folders and the HL7 archive every `--tick` seconds, so data flows on
schedule. Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from cgthub.settings import PROJECT_ROOT


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    print(f"starting {name}: {' '.join(argv)}")
    return subprocess.Popen(argv, env=env, cwd=PROJECT_ROOT)  # noqa: S603 - our interpreter, fixed modules


def _optional_services(env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """The MLLP listener and the partner sandboxes, for those whose packages are installed."""
    started = []
    if importlib.util.find_spec("cgthub.hl7") is not None:
        listener = [sys.executable, "-m", "cgthub.services", "mllp-listener", "--port", "2575"]
        started.append(_start("MLLP listener on 127.0.0.1:2575 (archive-only)", listener, env))
    else:
        print("MLLP listener: cgthub.hl7 is not installed; HL7 arrives through the demo feeder's archive")
    for partner in ("crm", "erp", "courier", "cmo", "hospital"):
        module = f"connectors.{partner}.sandbox"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            port = 8701 + ("crm", "erp", "courier", "cmo", "hospital").index(partner)
            argv = [sys.executable, "-m", "cgthub.services", "sandbox", partner, "--port", str(port)]
            started.append(_start(f"{partner} sandbox on 127.0.0.1:{port}", argv, env))
        else:
            print(f"{partner} sandbox: {module} is not installed; the demo feeder stands in")
    return started


def _feed(tick: float, stop: threading.Event) -> None:
    """Deliver the demo story in slices: each tick, the next `span` of partner traffic."""
    from cgthub import demo, demo_scenario
    from cgthub.tables import utcnow

    now = utcnow().replace(minute=0, second=0, microsecond=0)
    _people, emissions = demo_scenario.world(now)
    start = min(e.at for e in emissions)
    span = (now - start) / 40
    cut, wave = start, 0
    while not stop.is_set() and cut < now:
        cut, wave = cut + span, wave + 1
        batch = [e for e in emissions if cut - span < e.at <= cut]
        if batch:
            demo.deliver(batch, wave)
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
    children += _optional_services(env)
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
