"""access log written durably: each row carries the id of its request

The API appends each request's row to a local journal before answering and drains the journal into
`api_access_log`; a journal left by a killed process is replayed at the next start. A row may then
be offered twice (drained, and the process killed before it noted so), and the unique request id
makes the second insert a no-op. Rows written before this revision have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_access_log") as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=32), nullable=True))
        batch_op.create_unique_constraint("uq_api_access_request", ["request_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_access_log") as batch_op:
        batch_op.drop_constraint("uq_api_access_request", type_="unique")
        batch_op.drop_column("request_id")
