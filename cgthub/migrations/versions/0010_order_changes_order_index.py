"""drop the order_changes index on order_id, which no query reads

The change feed pages through order_changes by its position (tx, id) and filters by data scope
(site, cmo, market); an order's history is read from its ledger. The order_id index only cost a
leaf page written at a random place for each change: 4 of the 49 pages an 8-message MLLP group
commit logs (and syncs) on SQLite.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order_changes") as batch_op:
        batch_op.drop_index("ix_order_changes_order_id")


def downgrade() -> None:
    with op.batch_alter_table("order_changes") as batch_op:
        batch_op.create_index("ix_order_changes_order_id", ["order_id"], unique=False)
