"""Builders for canonical events and synthetic patients used across the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

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

# Fixture PHI: must never show up in clear in the database, logs or CLI output.
PATIENTS = [
    {"name": "Smithson^Johanna", "birth_date": "19710412", "mrn": "MRN48213377"},
    {"name": "Okonkwo^Chidera", "birth_date": "19830930", "mrn": "MRN90017755"},
]


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


# Values a partner may put where a mapping reads (wrong types, blanks, unknown codes, malformed
# identifiers, a DST gap): the generated fast path must answer each as the reference does.
MAPPED_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            " ",
            "us",
            "DE",
            "XX",
            "OUT",
            "BACK",
            "KYM-BCMA",
            "NOPE",
            "DRAFT",
            "2026-03-02T09:00:00",
            "2026-03-08T02:30:00",
            "20260309080000",
            " 1.5 ",
            "2026-03-02T09:00:00Z",
            "20260302",
            "2026-13-40",
            "W123426000001",
            "W123426000001F",
            "W1234",
            "CHW123426000001",
            "chw123426000001",
            "psn:mrn:0123456789abcdef0123456789abcdef",
            "x" * 250,
            "1.5",
            "7",
        ]
    ),
    st.text(max_size=12),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["id", "x"]), st.integers(0, 3), max_size=2),
)
