"""Each partner's own current record of its orders, for reconciliation.

A partner whose API can list its current records declares `snapshot` (cgthub.partners), a
function returning `PartnerRecord`s or dicts of the same fields. A partner without such an API
delivers a periodic extract instead, `var/snapshots/<partner>.json` (a list of records), the
usual nightly report from CRMs and CMOs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from cgthub import partners
from cgthub.lifecycle import OrderStatus
from cgthub.reconciliation import PartnerRecord
from cgthub.settings import var_dir
from cgthub.tables import utcnow


def snapshots() -> list[dict[str, Any]]:
    """Every partner's current records, as JSON-able dicts (they travel between tasks as XCom)."""
    records: list[dict[str, Any]] = []
    for name, partner in partners.registry().items():
        if partner.snapshot is not None:
            items = list(partners.resolve(partner.snapshot)())
        else:
            extract = var_dir() / "snapshots" / f"{name}.json"
            items = json.loads(extract.read_text()) if extract.exists() else []
        for item in items:
            data = asdict(item) if isinstance(item, PartnerRecord) else dict(item)
            data.setdefault("system", name)
            records.append(to_json(from_json([data])[0]))
    return records


def to_json(record: PartnerRecord) -> dict[str, Any]:
    data = asdict(record)
    data["status"] = record.status.value if record.status else None
    data["as_of"] = record.as_of.isoformat() if record.as_of else None
    return data


def from_json(items: list[dict[str, Any]]) -> list[PartnerRecord]:
    return [
        PartnerRecord(
            system=item["system"],
            ref_kind=item["ref_kind"],
            ref_value=item["ref_value"],
            status=OrderStatus(item["status"]) if item.get("status") else None,
            coi_id=item.get("coi_id"),
            as_of=datetime.fromisoformat(item["as_of"]) if item.get("as_of") else None,
        )
        for item in items
    ]


def run_clock(context: dict[str, Any]) -> datetime:
    """The time a monitoring run judges deadlines at: now, or `conf["now"]` when a run pins it.

    Pinning is how the demo and the tests replay weeks of a life cycle in minutes.
    """
    dag_run = context.get("dag_run")
    conf = (getattr(dag_run, "conf", None) or {}) if dag_run is not None else {}
    return datetime.fromisoformat(conf["now"]) if conf.get("now") else utcnow()
