"""Shared pieces of the CLI: consoles, the error type, and opening the database with a useful error."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cgthub.errors import CgthubError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from sqlalchemy.orm import Session

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
    from cgthub.store import safe_url

    return safe_url(url)


# The database and progress-bar imports below wait for a command that uses them: `cgthub --help`
# and a group's --help import this module and no database code (tests/test_cli_start.py).
@contextmanager
def open_session(*, readonly: bool = False) -> Iterator[Session]:
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    from cgthub.store import check_database, database_url, get_engine, session_scope

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


class WorkProgress:
    """Moves one bar: items done of a total, plus a count of what they held and its rate per second."""

    def __init__(self, progress: Progress, task: TaskID, started: float) -> None:
        self._progress = progress
        self._task = task
        self._started = started

    def advance_to(self, done: int, total: int | None = None, *, count: int | None = None) -> None:
        counted = done if count is None else count
        rate = counted / max(time.monotonic() - self._started, 1e-6)
        self._progress.update(self._task, completed=done, total=total, count=counted, rate=rate)

    def elapsed(self) -> float:
        return time.monotonic() - self._started


@contextmanager
def work_progress(label: str, *, total: int | None, unit: str) -> Iterator[WorkProgress]:
    """A Rich bar on stderr for long work (ingest, replay): counts, rate and elapsed time.

    Shown only when stderr is a terminal, so scripts and logs get the one-line summary alone, and
    stdout stays free for that summary."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(escape(label)),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[count]}} {unit}, {{task.fields[rate]:.0f}}/s"),
        TimeElapsedColumn(),
        console=console_err,
        transient=True,
        disable=not console_err.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total, count=0, rate=0.0)
        yield WorkProgress(progress, task, time.monotonic())


def signer_id(signer: str | None) -> str:
    """Who signs: --signer, else CGTHUB_OPERATOR; a signature with no one behind it is refused here."""
    from cgthub.settings import get_settings

    user = (signer or get_settings().operator).strip()
    if not user:
        raise CliError("who signs? no --signer given and CGTHUB_OPERATOR is not set", "pass --signer YOUR_USER_ID")
    return user


def read_password(from_stdin: bool, prompt: str) -> str:
    """The signer's password, typed at a hidden prompt or piped in on stdin's first line (scripts, tests)."""
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CliError("no password on stdin", "pipe it in: printf '%s\\n' \"$PASSWORD\" | cgthub ...")
        return line
    typed: str = typer.prompt(prompt, hide_input=True)
    return typed
