"""custody signing keyring: every public key custody exports were signed with

The keyring was a file under one host's var/ (custody-keys.jsonl): two API replicas each kept their
own, and a container whose var/ was not a volume forgot retired keys at restart, so consumers could
no longer fetch the key a document signed before a rotation names. One row per key id, written on
first signing with ON CONFLICT DO NOTHING; the ORM is cgthub.tables.CustodySigningKey. An old
var/custody-keys.jsonl is imported at first use (cgthub.custody_signing), not here: a migration does
not know which host's var/ to read.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custody_signing_keys",
        sa.Column("key_id", sa.String(length=40), primary_key=True),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("first_used", UTCDateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("custody_signing_keys")
