"""`cgthub db`: schema management."""

from __future__ import annotations

import typer

from cgthub.cli.common import CliError, _safe_url, console

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("heads", help="target revision")) -> None:
    """Create or migrate the hub's tables."""
    from sqlalchemy.exc import OperationalError

    from cgthub import store

    url = store.database_url()
    try:
        store.upgrade(url, revision)
    except OperationalError as exc:
        raise CliError(
            f"cannot migrate {_safe_url(url)}: {str(exc.orig).strip()}",
            "check CGTHUB_DATABASE_URL and that the database server is running",
        ) from exc
    console.print(f"schema at {revision} on {_safe_url(url)}")
