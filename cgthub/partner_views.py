"""Each partner's own current record of its orders, for reconciliation.

A connector that can list its partner's current records offers `snapshot() -> list[PartnerRecord]`
(or dicts of the same fields). A partner without such an API delivers a periodic extract instead,
`var/snapshots/<partner>.json` (a list of records), the usual nightly report from CRMs and CMOs.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from cgthub.lifecycle import OrderStatus
from cgthub.reconciliation import PartnerRecord
from cgthub.settings import var_dir
from cgthub.tables import utcnow

SNAPSHOT_SOURCES = {
    "crm": "connectors.crm.sync",
    "erp": "connectors.erp.sync",
    "cmo": "connectors.cmo.sync",
    "courier": "connectors.courier.sync",
}


def _connector_snapshot(module_name: str) -> list[Any] | None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        if missing.name and module_name.startswith(missing.name):
            return None
        raise
    snapshot = getattr(module, "snapshot", None)
    return list(snapshot()) if snapshot is not None else None


def snapshots() -> list[dict[str, Any]]:
    """Every partner's current records, as JSON-able dicts (they travel between tasks as XCom)."""
    records: list[dict[str, Any]] = []
    for partner, module_name in SNAPSHOT_SOURCES.items():
        items = _connector_snapshot(module_name)
        if items is None:
            extract = var_dir() / "snapshots" / f"{partner}.json"
            items = json.loads(extract.read_text()) if extract.exists() else []
        for item in items:
            data = asdict(item) if isinstance(item, PartnerRecord) else dict(item)
            data.setdefault("system", partner)
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
