"""Shared pieces of the CLI: consoles, the error type, and opening the database with a useful error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cgthub.errors import CgthubError
from cgthub.store import check_database, database_url, get_engine, safe_url, session_scope

# Piped output (logs, CI, grep) gets wide lines instead of rich's 80-column wrapping.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
# An error stays one line however long the path it names, so a log or a grep gets it whole.
console_err = Console(
    stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200, soft_wrap=not sys.stderr.isatty()
)


class CliError(CgthubError):
    """An error the user can act on: what went wrong, what to do, which exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    return safe_url(url)


@contextmanager
def open_session(*, readonly: bool = False) -> Iterator[Session]:
    url = database_url()
    check_database(url)  # a missing SQLite file is named, not created
    try:
        engine = get_engine(url, readonly=readonly)
        with engine.connect() as conn:
            if not inspect(conn).has_table("ledger_entries"):
                raise CliError(
                    f"the database at {_safe_url(url)} has no cgthub schema",
                    "run `cgthub db upgrade` (or set CGTHUB_DATABASE_URL to the hub's database)",
                )
    except OperationalError as exc:
        raise CliError(
            f"cannot open the database at {_safe_url(url)}: {str(exc.orig).strip()}",
            "check CGTHUB_DATABASE_URL and that the database server is running",
        ) from exc
    with session_scope(url, readonly=readonly) as session:
        yield session
