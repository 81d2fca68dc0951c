"""The `cgthub` command. Each concept has its own sub-command module; this file wires them."""

from __future__ import annotations

import logging
import sys

import typer

from cgthub.cli import db, ledger, orders, quarantine
from cgthub.cli.common import CliError, console_err

app = typer.Typer(
    help="cgthub: integration hub for cell and gene therapy orders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(orders.app, name="orders")
app.add_typer(ledger.app, name="ledger")
app.add_typer(quarantine.app, name="quarantine")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except CliError as err:
        console_err.print(f"[bold red]error:[/] {err.message}")
        if err.hint:
            console_err.print(f"[yellow]what to do:[/] {err.hint}")
        sys.exit(err.exit_code)
