"""Alembic environment: runs on the connection `cgthub.store.upgrade` hands over, or on the URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

# Modules with tables of their own (besides cgthub.tables), imported so the metadata sees them.
import cgthub.api.tables
import cgthub.changes
import cgthub.heartbeat
import cgthub.ops_tables
import cgthub.outbox
import cgthub.qualification
import cgthub.release_tables
import cgthub.scheduling_tables
import cgthub.sync_state  # noqa: F401
from cgthub.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
