"""drop two indexes the write path paid for and no query used

ix_ledger_entries_order_id duplicated uq_ledger_order_seq, which leads with order_id; nothing
searches raw_messages by checksum (a payload's provenance names its raw id). Each cost a page
write at a random place per message, about a tenth of a small group commit's time.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch_op:
        batch_op.drop_index("ix_ledger_entries_order_id")
    with op.batch_alter_table("raw_messages") as batch_op:
        batch_op.drop_index("ix_raw_messages_checksum")


def downgrade() -> None:
    with op.batch_alter_table("raw_messages") as batch_op:
        batch_op.create_index("ix_raw_messages_checksum", ["checksum"], unique=False)
    with op.batch_alter_table("ledger_entries") as batch_op:
        batch_op.create_index("ix_ledger_entries_order_id", ["order_id"], unique=False)
