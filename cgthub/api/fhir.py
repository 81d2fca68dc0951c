"""An order as a FHIR R4 Bundle: ServiceRequest (the order), Task (the current step) and one
BiologicallyDerivedProduct each for the apheresis unit and the manufactured product.

Built as FHIR JSON and validated with `fhir.resources`' R4B models (R4B is FHIR 4.3, the R4 line
the package ships; the resources used here are unchanged from R4 4.0.1) before it is served. The
patient is referenced by chain-of-identity id only: no name, birth date or MRN ever enters the hub.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from cgthub.lifecycle import OrderProjection, OrderStatus

_NS = uuid.UUID("6f6c6b1e-3c39-4b7e-9a51-6b3c2f0c9e10")
SYSTEM = "urn:cgthub"

_SERVICE_REQUEST_STATUS = {
    OrderStatus.CANCELLED: "revoked",
    OrderStatus.TERMINATED: "revoked",
    OrderStatus.INFUSED: "completed",
    OrderStatus.ON_HOLD: "on-hold",
}
_TASK_STATUS = {
    OrderStatus.ENROLLED: "accepted",
    OrderStatus.CANCELLED: "cancelled",
    OrderStatus.TERMINATED: "failed",
    OrderStatus.INFUSED: "completed",
    OrderStatus.ON_HOLD: "on-hold",
}
_REF_SYSTEMS = {
    "crm_order_id": f"{SYSTEM}:crm:order",
    "erp_sales_order": f"{SYSTEM}:erp:sales-order",
    "hospital_placer_order": f"{SYSTEM}:hospital:placer-order",
    "hospital_filler_order": f"{SYSTEM}:hospital:filler-order",
    "cmo_batch_id": f"{SYSTEM}:cmo:batch",
    "courier_shipment_id": f"{SYSTEM}:courier:shipment",
}


def _urn(order_id: str, what: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{order_id}/{what}')}"


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _prune(value: Any) -> Any:
    """Drop empty values: FHIR forbids empty strings, lists and objects."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [p for p in (_prune(v) for v in value) if p not in (None, "", [], {})]
    return value


def build_bundle(order: OrderProjection, *, updated_at: datetime) -> dict[str, Any]:
    """The validated FHIR R4 Bundle (type collection) of one order, as JSON."""
    oid = order.order_id
    request_ref = {"reference": _urn(oid, "service-request")}
    subject = {
        "type": "Patient",
        "identifier": {"system": f"{SYSTEM}:coi", "value": order.coi_id}
        if order.coi_id
        else {"system": f"{SYSTEM}:order-subject", "value": oid},
    }
    identifiers = [{"system": f"{SYSTEM}:order", "value": oid}] + [
        {"system": _REF_SYSTEMS.get(kind, f"{SYSTEM}:{kind}"), "value": value} for kind, value in order.refs.pairs()
    ]
    service_request = {
        "resourceType": "ServiceRequest",
        "id": "order",
        "identifier": identifiers,
        "status": _SERVICE_REQUEST_STATUS.get(order.status, "active"),
        "intent": "order",
        "category": [{"text": "autologous cell therapy"}],
        "code": {"text": order.therapy or "cell therapy"},
        "subject": subject,
        "authoredOn": _dt(order.milestones.get(OrderStatus.ENROLLED.value)),
        "occurrenceDateTime": _dt(order.scheduled.get("infusion")),
    }
    task = {
        "resourceType": "Task",
        "id": "current-step",
        "status": _TASK_STATUS.get(order.status, "in-progress"),
        "businessStatus": {
            "coding": [{"system": f"{SYSTEM}:order-status", "code": order.status.value}],
            "text": order.hold_reason if order.on_hold else order.status.value,
        },
        "intent": "order",
        "code": {"coding": [{"system": f"{SYSTEM}:order-stage", "code": order.stage.value}], "text": order.stage.value},
        "focus": request_ref,
        "basedOn": [request_ref],
        "for": subject,
        "executionPeriod": {"start": _dt(order.status_since)},
        "lastModified": _dt(updated_at),
    }
    entries: list[dict[str, Any]] = [
        {"fullUrl": _urn(oid, "service-request"), "resource": service_request},
        {"fullUrl": _urn(oid, "task"), "resource": task},
    ]
    collected = order.milestones.get(OrderStatus.COLLECTED.value)
    if order.dins or collected:
        entries.append(
            {
                "fullUrl": _urn(oid, "apheresis-unit"),
                "resource": {
                    "resourceType": "BiologicallyDerivedProduct",
                    "id": "apheresis-unit",
                    "identifier": [{"system": f"{SYSTEM}:isbt128:din", "value": d} for d in order.dins],
                    "productCategory": "cells",
                    "productCode": {"text": "apheresis collection (leukapheresis)"},
                    "status": "unavailable" if order.milestones.get(OrderStatus.MANUFACTURING.value) else "available",
                    "request": [request_ref],
                    "quantity": max(len(order.dins), 1),
                    "collection": {"collectedDateTime": _dt(collected)},
                },
            }
        )
    manufactured = order.milestones.get(OrderStatus.MANUFACTURING.value)
    if order.lot or order.bag_ids or manufactured:
        released = order.milestones.get(OrderStatus.RELEASED.value)
        infused = order.milestones.get(OrderStatus.INFUSED.value)
        product = {
            "resourceType": "BiologicallyDerivedProduct",
            "id": "product",
            "identifier": ([{"system": f"{SYSTEM}:lot", "value": order.lot}] if order.lot else [])
            + [{"system": f"{SYSTEM}:bag", "value": b} for b in order.bag_ids],
            "productCategory": "cells",
            "productCode": {"text": order.therapy or "cell therapy product"},
            "status": "available" if released and not infused else "unavailable",
            "request": [request_ref],
            "quantity": max(len(order.bag_ids), 1),
            "parent": [{"reference": _urn(oid, "apheresis-unit")}] if order.dins or collected else [],
            "processing": [{"description": "manufacturing", "timeDateTime": _dt(manufactured)}] if manufactured else [],
        }
        entries.append({"fullUrl": _urn(oid, "product"), "resource": product})
    bundle = _prune(
        {
            "resourceType": "Bundle",
            "id": str(uuid.uuid5(_NS, f"{oid}/bundle")),
            "identifier": {"system": f"{SYSTEM}:order-bundle", "value": oid},
            "type": "collection",
            "timestamp": _dt(updated_at),
            "entry": entries,
        }
    )
    validated = Bundle.model_validate(bundle)  # raises if the bundle is not valid FHIR
    document: dict[str, Any] = json.loads(validated.model_dump_json())
    return document
