"""raw archive: a reused control id with other content is a new message

A payload was a duplicate when its (system, dedupe key) was known, whatever it said, so a sender
that reused a control id for a new message (a cancel after the order) had it acknowledged and
dropped. The archive is now unique on (system, dedupe key, checksum): the same key with the same
content is a duplicate, with other content a new message. The index still leads with (system,
dedupe key), which every lookup of the batch path uses.

Downgrading fails if a key is already held by two contents: pick which to keep first.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("raw_messages") as batch_op:
        batch_op.drop_constraint("uq_raw_system_dedupe", type_="unique")
        batch_op.create_unique_constraint("uq_raw_system_dedupe_content", ["system", "dedupe_key", "checksum"])


def downgrade() -> None:
    with op.batch_alter_table("raw_messages") as batch_op:
        batch_op.drop_constraint("uq_raw_system_dedupe_content", type_="unique")
        batch_op.create_unique_constraint("uq_raw_system_dedupe", ["system", "dedupe_key"])
