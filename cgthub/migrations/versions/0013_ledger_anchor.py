"""ledger anchoring: a keyed seal on every ledger entry

Each entry gets `entry_mac`, HMAC-SHA-256 under CGTHUB_LEDGER_KEY over all its columns (see
`cgthub.ledger_anchor`). Entries already there are sealed here, each only if its stored SHA-256
hash still recomputes from its content: one that was edited before the upgrade stays unsealed and
`cgthub ledger verify` names it, instead of the upgrade blessing the edit. The signed checkpoints of
chain heads live outside the database and need nothing here.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_CHUNK = 2000


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("entry_mac", sa.String(length=64), nullable=True))
    _seal_existing(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("entry_mac")


def _seal_existing(bind: sa.Connection) -> None:
    from cgthub import ledger_anchor
    from cgthub.ledger import entry_hash
    from cgthub.tables import UTCDateTime

    if bind.execute(sa.text("SELECT 1 FROM ledger_entries LIMIT 1")).first() is None:
        return  # a new database: no key is read (nor, in development, made) by the upgrade
    entries = sa.table(
        "ledger_entries",
        sa.column("id", sa.BigInteger()),
        sa.column("order_id", sa.String()),
        sa.column("seq", sa.Integer()),
        sa.column("source_system", sa.String()),
        sa.column("source_event_id", sa.String()),
        sa.column("event_type", sa.String()),
        sa.column("occurred_at", UTCDateTime()),
        sa.column("recorded_at", UTCDateTime()),
        sa.column("raw_id", sa.BigInteger()),
        sa.column("body", sa.Text()),
        sa.column("prev_hash", sa.String()),
        sa.column("entry_hash", sa.String()),
        sa.column("entry_mac", sa.String()),
    )
    base = ledger_anchor.entry_mac_base()
    seal = sa.update(entries).where(entries.c.id == sa.bindparam("entry_id")).values(entry_mac=sa.bindparam("mac"))
    after = -1
    while True:
        rows = bind.execute(sa.select(entries).where(entries.c.id > after).order_by(entries.c.id).limit(_CHUNK)).all()
        if not rows:
            return
        after = rows[-1].id
        sealed = []
        for row in rows:
            recomputed = entry_hash(
                prev_hash=row.prev_hash, order_id=row.order_id, seq=row.seq, recorded_at=row.recorded_at, body=row.body
            )
            if recomputed != row.entry_hash:
                continue
            mac = ledger_anchor.entry_mac(
                base,
                entry_hash=row.entry_hash,
                prev_hash=row.prev_hash,
                order_id=row.order_id,
                seq=row.seq,
                source_system=row.source_system,
                source_event_id=row.source_event_id,
                event_type=row.event_type,
                occurred_at=row.occurred_at,
                recorded_at=row.recorded_at,
                raw_id=row.raw_id,
            )
            sealed.append({"entry_id": row.id, "mac": mac})
        if sealed:
            bind.execute(seal, sealed)
