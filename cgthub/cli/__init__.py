"""The `cgthub` command. Each concept has its own sub-command module, imported when a command line
names it (cgthub.cli.lazy): this file lists them and turns the errors a user can act on into a
message and an exit code."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from cgthub.cli.common import CliError, console_err
from cgthub.cli.lazy import LazyGroup, Listed

# `cgthub --help` lists these, in this order, with this help; naming one imports its module.
COMMANDS = (
    Listed(
        "verify",
        "cgthub.cli.verify:verify",
        "Check a scanned DIN and/or CoI id against an order, and record the scan in its ledger.",
    ),
    Listed("db", "cgthub.cli.db:app", "Database schema (Alembic migrations)."),
    Listed("api", "cgthub.cli.api:app", "Order transparency API: serve, keys, webhooks, OpenAPI schema."),
    Listed("mappings", "cgthub.cli.mappings:app", "Versioned mapping files: partner payload -> canonical events."),
    Listed("hl7", "cgthub.cli.hl7:app", "Hospital HL7 v2 feed (MLLP, batch files)."),
    Listed(
        "orders",
        "cgthub.cli.orders:app",
        "Normalized orders.",
        more=(
            Listed(
                "release-hold",
                "cgthub.cli.decisions:release_hold",
                "Lift a hold the hub placed (a COI discrepancy), signed; it enters the order's ledger.",
            ),
            Listed(
                "release-under-exception",
                "cgthub.cli.decisions:release_under_exception",
                "Release an out-of-specification product under exception (QA), signed.",
            ),
        ),
    ),
    Listed("ledger", "cgthub.cli.ledger:app", "The hash-chained custody ledger."),
    Listed(
        "quarantine",
        "cgthub.cli.quarantine:app",
        "Quarantined payloads and events.",
        more=(
            Listed(
                "retry",
                "cgthub.cli.decisions:retry",
                "Run entries through again with the mapping and registry in force now (after a fix), signed.",
            ),
            Listed(
                "discard",
                "cgthub.cli.decisions:discard",
                "Close entries without applying them (the payload stays archived), signed.",
            ),
        ),
    ),
    Listed(
        "sites",
        "cgthub.cli.sites:app",
        "Treatment sites: markets, CMOs, HL7 senders, qualifications (config/sites.yaml).",
    ),
    Listed("audit", "cgthub.cli.audit:app", "Audit trail of people: who did what (hash-chained, sealed)."),
    Listed("release", "cgthub.cli.release:app", "Release bundles: build, approve, promote, roll back, evidence."),
    Listed(
        "markets",
        "cgthub.cli.markets:app",
        "Markets: one baseline and its variants (config/markets/); show, new, check.",
    ),
    Listed("slots", "cgthub.cli.slots:app", "Manufacturing slots: feasible apheresis dates, capacity sync, booking."),
    Listed("alerts", "cgthub.cli.decisions:alerts_app", "Alerts: list, acknowledge and resolve them (signed)."),
    Listed(
        "outbox", "cgthub.cli.decisions:outbox_app", "Messages to partners: dead letters and their replay (signed)."
    ),
    Listed(
        "operators",
        "cgthub.cli.decisions:operators_app",
        "People who sign decisions (passwords kept as scrypt hashes).",
    ),
    Listed("decisions", "cgthub.cli.decisions:decisions_app", "Signed decisions and the reason codes they take."),
)


class _Cgthub(LazyGroup):
    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.defer(COMMANDS)


# Plain help (no Rich panels): it lists a flag as a flag, where Rich's layout gives every
# option, --help included, a value type such as `<bool>`. Sub-commands inherit the mode.
app = typer.Typer(
    cls=_Cgthub,
    help="cgthub: integration hub for cell and gene therapy orders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _group() -> None:
    # Typer builds a group (rather than refusing an app with no commands of its own) when it has a callback.
    pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if sys.argv[1:] and not {"--help", "-h"} & set(sys.argv[1:]):
            from cgthub.settings import get_settings

            get_settings()  # a missing key stops any command here, before a listener takes a message
        app()
    except CliError as err:
        _fail(err)
    except Exception as exc:
        known = _user_error(exc)
        if known is None:
            raise
        _fail(known)


def _user_error(exc: Exception) -> CliError | None:
    """A setting or database error as a message and what to do; None for any other error.

    Looked up in sys.modules: a command that never imported SQLAlchemy (or the settings) cannot have
    raised its errors, and importing it here would cost every `cgthub --help` its import."""
    settings = sys.modules.get("cgthub.settings")
    if settings is not None and isinstance(exc, settings.SettingError):
        return CliError(str(exc), exc.hint)
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
        first_line = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return CliError(
            f"database error: {first_line}",
            "run `cgthub db upgrade` if the schema is older than this cgthub; otherwise check CGTHUB_DATABASE_URL",
        )
    return None


def _fail(err: CliError) -> None:
    console_err.print(f"[bold red]error:[/] {err.message}")
    if err.hint:
        console_err.print(f"[yellow]what to do:[/] {err.hint}")
    sys.exit(err.exit_code)
