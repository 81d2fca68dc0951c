"""README, `make up`: what `python -m cgthub.up` gives the processes it starts, read from the function
that builds their environment (`cgthub.up.airflow_environment`, the one `main` starts Airflow
standalone, the listener and the sandboxes with), its command line (`parse_args`) and the login file
it prints (`login_file`). tests/test_up_quiet_start.py runs the command itself and checks the same in
what it started: the Airflow processes' environment in /proc and the printed login path.

- LocalExecutor; Airflow's metadata (SQLite) under `var/airflow`, or `$AIRFLOW_HOME` when set;
- the UI and API on :8080 (AIRFLOW__API__PORT moves it, and the Execution API with it);
- a small LocalExecutor pool: at most 8 parallel tasks, not Airflow's 32;
- the connectors pointed at the sandboxes' ports 8701-8705 unless AIRFLOW_CONN_* are set;
- the feeder's `--tick` is 30 s unless given;
- the login file: `var/airflow/simple_auth_manager_passwords.json.generated`, `$AIRFLOW_HOME/…` if set,
  or the file Airflow is told to use.
"""

from __future__ import annotations

from pathlib import Path

from cgthub import partners, up
from cgthub.settings import PROJECT_ROOT

DEFAULT_PORTS = {name: box.port for name, box in partners.sandboxes().items()}


def _environment(**given: str) -> dict[str, str]:
    return up.airflow_environment({"PATH": "/usr/bin", **given}, up.LISTENER_PORT, DEFAULT_PORTS)


def test_make_up_runs_airflow_with_the_local_executor_metadata_under_var_airflow_and_the_ui_on_8080():
    env = _environment()
    home = PROJECT_ROOT / "var" / "airflow"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow.db'}"
    assert env["AIRFLOW__API__PORT"] == "8080"
    assert up.api_url(env) == "http://localhost:8080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8080/execution/"
    assert 1 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 8  # Airflow's own default is 32 worker processes
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"  # unpaused on their schedules
    conns = {name: uri for name, uri in env.items() if name.startswith("AIRFLOW_CONN_")}
    assert conns and all(any(f":{port}" in uri for port in range(8701, 8706)) for uri in conns.values()), conns
    assert env["CGTHUB_MLLP_LISTENER"] == "127.0.0.1:2575"
    assert up.login_file(env) == home / "simple_auth_manager_passwords.json.generated"


def test_what_is_set_wins_and_the_login_file_follows_airflow_home(tmp_path: Path):
    home = tmp_path / "elsewhere"
    env = _environment(AIRFLOW_HOME=str(home), AIRFLOW__API__PORT="9191", AIRFLOW_CONN_CRM_API="http://crm.example:443")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow.db'}"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:9191/execution/"
    assert env["AIRFLOW_CONN_CRM_API"] == "http://crm.example:443"
    assert up.login_file(env) == home / "simple_auth_manager_passwords.json.generated"

    told = tmp_path / "passwords.json"
    assert up.login_file({**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(told)}) == told
    assert up.login_file({"AIRFLOW_HOME": "var/other"}) == PROJECT_ROOT / "var" / "other" / up.PASSWORDS_FILE


def test_the_feeder_ticks_every_30_s_unless_told():
    args, ports = up.parse_args([])
    assert args.tick == 30.0 and not args.no_feed and args.listener_port == 2575
    assert sorted(ports.values()) == list(range(8701, 8706))
    assert up.parse_args(["--tick", "5"])[0].tick == 5.0
