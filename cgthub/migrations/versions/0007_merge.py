"""merge the connectors, api and ops branches into one head

Revision ID: 0007
Revises: 0004, 0005, 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0007"
down_revision = ("0004", "0005", "0006")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change: the branches were built side by side and meet here."""


def downgrade() -> None:
    """Nothing to undo."""
