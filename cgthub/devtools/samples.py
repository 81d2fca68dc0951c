"""Synthetic canonical events and partner records that the tests and the benches both build.

Here, not in `tests/` or `bench/`, so that neither imports the other: a bench runs without the
test extras installed, and a test does not break when a bench is reshaped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cgthub.identifiers import mod37_2_check
from cgthub.model import (
    CanonicalEvent,
    Direction,
    EventType,
    ExternalRefs,
    Material,
    OrderDetails,
    PatientRef,
    Provenance,
    Shipment,
    SourceSystem,
)
from cgthub.pseudonym import pseudonymize

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def din(n: int, facility: str = "W1234", year: str = "26") -> str:
    body = f"{facility}{year}{n:06d}"
    return body + mod37_2_check(body)


def coi(n: int, facility: str = "W1234", year: str = "26") -> str:
    return f"CH{facility}{year}{n:06d}"


def event(
    kind: EventType,
    n: int,
    *,
    at: datetime,
    system: SourceSystem = SourceSystem.CRM,
    eid: str | None = None,
    crm: str | None = None,
    **fields: Any,
) -> CanonicalEvent:
    return CanonicalEvent(
        source_system=system,
        source_event_id=eid or f"{kind.value}:{n}",
        event_type=kind,
        occurred_at=at,
        received_at=at + timedelta(minutes=5),
        refs=ExternalRefs(crm_order_id=crm or f"CRM-{n:05d}"),
        provenance=Provenance(mapping_id=f"{system.value}/test", mapping_version="1"),
        **fields,
    )


def enrolment(n: int, *, at: datetime = T0, market: str = "US", mrn: str | None = None) -> CanonicalEvent:
    pseudonyms = {"mrn": pseudonymize("mrn", mrn)} if mrn else {}
    return event(
        EventType.ORDER_ENROLLED,
        n,
        at=at,
        patient=PatientRef(coi_id=coi(n), pseudonyms=pseudonyms),
        order=OrderDetails(therapy="CART-19", market=market, site=f"{market}-SITE-1", cmo="CMO-EAST"),
    )


def happy_path(n: int, start: datetime = T0) -> list[CanonicalEvent]:
    """A full autologous life cycle for patient n, as the partners would report it."""
    d = timedelta(days=1)
    ship_out = Shipment(shipment_id=f"SHP-{n}-OUT", courier="cryo", direction=Direction.TO_CMO)
    ship_back = Shipment(shipment_id=f"SHP-{n}-BACK", courier="cryo", direction=Direction.TO_SITE)
    return [
        enrolment(n, at=start),
        event(EventType.APHERESIS_SCHEDULED, n, at=start + d, scheduled_for=start + 7 * d),
        event(
            EventType.APHERESIS_COLLECTED, n, at=start + 7 * d, system=SourceSystem.HL7, material=Material(din=din(n))
        ),
        event(
            EventType.SHIPMENT_PICKED_UP,
            n,
            at=start + 7 * d + timedelta(hours=6),
            system=SourceSystem.COURIER,
            shipment=ship_out,
        ),
        event(EventType.SHIPMENT_DELIVERED, n, at=start + 8 * d, system=SourceSystem.COURIER, shipment=ship_out),
        event(
            EventType.MATERIAL_RECEIVED_AT_CMO,
            n,
            at=start + 8 * d + timedelta(hours=1),
            system=SourceSystem.CMO,
            material=Material(din=din(n)),
        ),
        event(EventType.MANUFACTURING_STARTED, n, at=start + 9 * d, system=SourceSystem.CMO),
        event(
            EventType.QC_STARTED, n, at=start + 20 * d, system=SourceSystem.CMO, material=Material(lot=f"LOT-{n:05d}")
        ),
        event(
            EventType.PRODUCT_RELEASED,
            n,
            at=start + 24 * d,
            system=SourceSystem.CMO,
            material=Material(lot=f"LOT-{n:05d}"),
        ),
        event(
            EventType.SHIPMENT_PICKED_UP,
            n,
            at=start + 25 * d,
            system=SourceSystem.COURIER,
            shipment=ship_back,
            eid=f"back-pickup:{n}",
        ),
        event(
            EventType.SHIPMENT_DELIVERED,
            n,
            at=start + 26 * d,
            system=SourceSystem.COURIER,
            shipment=ship_back,
            eid=f"back-delivered:{n}",
        ),
        event(
            EventType.INFUSION_SCHEDULED,
            n,
            at=start + 26 * d + timedelta(hours=2),
            system=SourceSystem.HL7,
            scheduled_for=start + 30 * d,
        ),
        event(EventType.INFUSED, n, at=start + 30 * d, system=SourceSystem.HL7),
    ]


def json_record(n: int) -> bytes:
    """The 20-field CRM order record that bench/mappings/crm/order_record/v1.yaml maps."""
    body = f"W1234{26:02d}{n % 1_000_000:06d}"
    return json.dumps(
        {
            "id": f"CRM-{n:06d}",
            "status": "ENROLLED",
            "enrolledAt": "2026-03-02T09:00:00",
            "note": "first order",
            "product": "KYM-CD19",
            "priority": "2",
            "site": {"id": "US-BOS-01", "country": "us"},
            "patient": {"coiId": f"CHW123426{n % 1_000_000:06d}", "mrn": f"MRN{n:08d}", "weightKg": "71.5"},
            "apheresis": {"scheduledFor": "2026-03-09T08:00:00"},
            "erp": {"salesOrder": f"SO-{n}"},
            "hospital": {"placer": f"PL-{n}"},
            "cmo": {"batch": f"B-{n}", "site": "CMO-EAST"},
            "unit": {"din": body + mod37_2_check(body), "lot": f"LOT-{n}"},
            "shipment": {"id": f"SHP-{n}", "leg": "OUT"},
        }
    ).encode()
