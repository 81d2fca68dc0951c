"""quarantine_waiting_keys: the keys each event waiting for its order would be found by

Registering an order key then replays exactly the events waiting on it (an index lookup) instead
of reading every open correlate entry of the quarantine on each batch. Open entries already
waiting get their keys here, read from the event each one keeps.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quarantine_waiting_keys",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("quarantine_id", _ID, sa.ForeignKey("quarantine.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quarantine_waiting_keys_key", "quarantine_waiting_keys", ["kind", "value"])
    op.create_index("ix_quarantine_waiting_keys_quarantine_id", "quarantine_waiting_keys", ["quarantine_id"])
    bind = op.get_bind()
    waiting = bind.execute(
        sa.text("SELECT id, details FROM quarantine WHERE stage = 'correlate' AND status = 'open'")
    ).all()
    rows: list[dict[str, Any]] = []
    for entry_id, details in waiting:
        event = (json.loads(details) if isinstance(details, str) else details or {}).get("event") or {}
        rows.extend({"quarantine_id": entry_id, "kind": k, "value": v} for k, v in dict.fromkeys(event_keys(event)))
    if rows:
        table = sa.table("quarantine_waiting_keys", sa.column("quarantine_id"), sa.column("kind"), sa.column("value"))
        op.bulk_insert(table, rows)


def event_keys(event: dict[str, Any]) -> list[tuple[str, str]]:
    """`CanonicalEvent.all_keys()` of a stored event, read from its JSON as this revision knows it
    (a migration must not depend on the model changing after it)."""
    keys: list[tuple[str, str]] = []
    refs = event.get("refs") or {}
    for name in ("crm_order_id", "erp_sales_order", "hospital_placer_order", "hospital_filler_order", "cmo_batch_id"):
        if refs.get(name):
            keys.append((name, str(refs[name])))
    keys.extend(("courier_shipment_id", str(sid)) for sid in refs.get("courier_shipment_ids") or ())
    shipment = event.get("shipment") or {}
    if shipment.get("shipment_id") and ("courier_shipment_id", shipment["shipment_id"]) not in keys:
        keys.append(("courier_shipment_id", str(shipment["shipment_id"])))
    patient, material = event.get("patient") or {}, event.get("material") or {}
    if patient.get("coi_id"):
        keys.append(("coi_id", str(patient["coi_id"])))
    for name in ("din", "lot"):
        if material.get(name):
            keys.append((name, str(material[name])))
    return keys


def downgrade() -> None:
    op.drop_index("ix_quarantine_waiting_keys_quarantine_id", table_name="quarantine_waiting_keys")
    op.drop_index("ix_quarantine_waiting_keys_key", table_name="quarantine_waiting_keys")
    op.drop_table("quarantine_waiting_keys")
