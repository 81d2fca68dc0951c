"""booking changes (reserved: reschedule and cancel)

Reserved so parallel work chains in order; a no-op until its change fills it in.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04
"""

from __future__ import annotations

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
