"""A `cgthub` command imports what it runs, nothing more (cgthub.cli.lazy).

Operators run `cgthub ...` all day and the tests start hundreds of them: `cgthub --help` used to
import the whole hub (SQLAlchemy, pydantic, the mapping compiler, hl7apy) because the command's
package imported every sub-command module. Driven as deployed: `python -m cgthub.cli` in a
subprocess, its `sys.modules` read when it exits. bench/cli_start_bench.py has the timings.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cgthub import store
from cgthub.cli import COMMANDS, app
from cgthub.cli.lazy import LazyGroup, Listed

# The command line runs as `python -m cgthub.cli` does; its modules are printed when it exits.
_PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("MODULES " + " ".join(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["cgthub", *sys.argv[1:]]
runpy.run_module("cgthub.cli", run_name="__main__", alter_sys=True)
"""
# What no command that reads the database needs: the API server, the HL7 listener, the SOAP
# client, Airflow, the mapping compiler, release bundles.
_SERVERS_AND_PARSERS = {
    "uvicorn",
    "fastapi",
    "zeep",
    "hl7apy",
    "airflow",
    "cgthub.api",
    "cgthub.cli.api",
    "cgthub.hl7.listener",
    "cgthub.mapping.compiler",
    "cgthub.release",
}


def _run(*argv: str, database: str | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "COLUMNS": "200"}
    if database is not None:
        env["CGTHUB_DATABASE_URL"] = database
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    return done, set(line.split()[1:])


def _fresh_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    store.upgrade(url)
    return url


def test_cgthub_help_lists_every_command_and_imports_no_database_code() -> None:
    done, modules = _run("--help")
    assert done.returncode == 0, done.stderr
    for entry in COMMANDS:
        assert f"\n  {entry.name} " in done.stdout, entry.name
    heavy = {"sqlalchemy", "pydantic", "pydantic_settings", "yaml", *_SERVERS_AND_PARSERS} & modules
    assert not heavy, sorted(heavy)
    hub = {name for name in modules if name.startswith("cgthub")}
    assert hub <= {"cgthub", "cgthub.cli", "cgthub.cli.common", "cgthub.cli.lazy", "cgthub.errors"}, sorted(hub)


def test_orders_help_imports_the_orders_module_and_no_server_or_parser() -> None:
    done, modules = _run("orders", "--help")
    assert done.returncode == 0, done.stderr
    assert "orders [OPTIONS] COMMAND [ARGS]..." in done.stdout
    for command in ("list", "show", "release-hold", "release-under-exception"):
        assert f"\n  {command} " in done.stdout, command
    assert "cgthub.cli.orders" in modules
    assert not (_SERVERS_AND_PARSERS | {"cgthub.cli.decisions", "cgthub.decisions"}) & modules


@pytest.mark.parametrize(
    "command", [("orders",), ("db",), ("ledger",), ("audit",), ("api",), ("hl7", "listen")], ids=" ".join
)
def test_a_group_help_imports_no_database_code(command: tuple[str, ...]) -> None:
    """These modules import the database code in the commands that use it, not for their --help."""
    done, modules = _run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"{' '.join(command)} [OPTIONS]" in done.stdout
    heavy = {"sqlalchemy", "cgthub.store", "cgthub.tables", "cgthub.ledger"} & modules
    assert not heavy, sorted(heavy)


def test_orders_list_on_a_fresh_database_imports_no_server_or_parser(tmp_path: Path) -> None:
    done, modules = _run("orders", "list", database=_fresh_database(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "0 orders" in done.stdout
    assert not (_SERVERS_AND_PARSERS | {"cgthub.cli.decisions"}) & modules


def test_a_signed_command_in_a_group_loads_from_its_own_module(tmp_path: Path) -> None:
    """`orders release-hold` lives with the other decisions: naming it loads that module, and it
    answers as before (an unknown order: named, what to do, exit 1)."""
    done, modules = _run(
        "orders",
        "release-hold",
        "ORD-404",
        "--meaning",
        "approved",
        "--reason",
        "x",
        "--text",
        "y",
        database=_fresh_database(tmp_path),
    )
    assert "cgthub.cli.decisions" in modules
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: no order ORD-404" in done.stderr
    assert "what to do: find it with `cgthub orders list`" in done.stderr


def test_a_database_error_is_still_a_message_and_what_to_do(tmp_path: Path) -> None:
    """main() recognises SQLAlchemy's errors without importing SQLAlchemy itself: a schema missing a
    table the command reads is named, with the fix, and no traceback."""
    url = _fresh_database(tmp_path)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        conn.execute("DROP TABLE alerts")
    done, _ = _run("orders", "list", database=url)
    assert done.returncode == 1
    assert "error: database error: no such table: alerts" in done.stderr
    assert "run `cgthub db upgrade` if the schema is older than this cgthub" in done.stderr
    assert "Traceback" not in done.stderr


def _all_listed(entries: tuple[Listed, ...]) -> list[Listed]:
    return [item for entry in entries for item in (entry, *entry.more)]


@pytest.mark.parametrize("entry", _all_listed(COMMANDS), ids=lambda entry: entry.name)
def test_each_listed_help_is_the_help_of_the_command_it_loads(entry: Listed) -> None:
    """The listing is written beside the commands' own help; this keeps the two the same."""
    import typer.main

    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    loaded = root.load(entry)
    assert loaded.name == entry.name
    assert loaded.help == entry.help
