"""signature lockout index: one signer's refused passwords, by time

The lockout (decisions.locked_until) counts a signer's refused passwords within the window on every
signature. Without an index it scanned the audit trail back to the window's start: its cost grew with
the trail and with a password guesser's refusals. A partial index on (actor, at) over the rows of a
refused password (action decision.refused, why signature_refused) makes the count read that signer's
few rows alone; other rows, and refusals for being locked out, are not in it.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# cgthub.tables.SIGNATURE_REFUSED as of this revision (a migration keeps its own copy).
SIGNATURE_REFUSED = "action = 'decision.refused' AND details LIKE '%\"why\":\"signature_refused\"%'"


def upgrade() -> None:
    op.create_index(
        "ix_audit_trail_signature_refusals",
        "audit_trail",
        ["actor", "at"],
        sqlite_where=sa.text(SIGNATURE_REFUSED),
        postgresql_where=sa.text(SIGNATURE_REFUSED),
    )


def downgrade() -> None:
    op.drop_index("ix_audit_trail_signature_refusals", table_name="audit_trail")
