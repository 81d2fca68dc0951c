"""The `cgthub` command. Each concept has its own sub-command module; this file wires them."""

from __future__ import annotations

import logging
import sys

import typer
from sqlalchemy.exc import SQLAlchemyError

from cgthub.cli import api, audit, db, decisions, hl7, ledger, mappings, orders, quarantine, sites
from cgthub.cli import markets as markets_cli
from cgthub.cli import release as release_cli
from cgthub.cli import slots as slots_cli
from cgthub.cli import verify as verify_cli
from cgthub.cli.common import CliError, console_err
from cgthub.settings import SettingError, get_settings

# Plain help (no Rich panels): it lists a flag as a flag, where Rich's layout gives every
# option, --help included, a value type such as `<bool>`. Sub-commands inherit the mode.
app = typer.Typer(
    help="cgthub: integration hub for cell and gene therapy orders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(db.app, name="db")
app.add_typer(api.app, name="api")
app.add_typer(mappings.app, name="mappings")
app.add_typer(hl7.app, name="hl7")
app.add_typer(orders.app, name="orders")
app.add_typer(ledger.app, name="ledger")
app.add_typer(quarantine.app, name="quarantine")
app.add_typer(sites.app, name="sites")
app.add_typer(audit.app, name="audit")
app.add_typer(release_cli.app, name="release")
app.add_typer(markets_cli.app, name="markets")
app.add_typer(slots_cli.app, name="slots")
decisions.register(app)
verify_cli.register(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if sys.argv[1:] and not {"--help", "-h"} & set(sys.argv[1:]):
            get_settings()  # a missing key stops any command here, before a listener takes a message
        app()
    except SettingError as exc:
        _fail(CliError(str(exc), exc.hint))
    except CliError as err:
        _fail(err)
    except SQLAlchemyError as exc:
        first_line = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        _fail(
            CliError(
                f"database error: {first_line}",
                "run `cgthub db upgrade` if the schema is older than this cgthub; otherwise check CGTHUB_DATABASE_URL",
            )
        )


def _fail(err: CliError) -> None:
    console_err.print(f"[bold red]error:[/] {err.message}")
    if err.hint:
        console_err.print(f"[yellow]what to do:[/] {err.hint}")
    sys.exit(err.exit_code)
