"""The demo's synthetic world: 25 patients in two markets, as each partner would report them.

Every patient follows the autologous CAR-T life cycle with realistic timings (DOMAIN.md): apheresis
5 days after enrolment, a day in the dry shipper, ~18 days of manufacturing and QC, a day back,
infusion ~3 days after receipt. Start dates are spread over the last seven weeks, so at the demo's
"now" the orders sit at every stage. A few patients carry the exceptions operators must see:

P03 temperature excursion in the shipper to the CMO       P05 OOS, released under exception
P07 CMO receipt labelled with P01's DIN (COI mismatch)     P11 cancelled (too sick for apheresis)
P02 the hospital resends its collection message (dup)     P13 collected, stuck in customs: no CMO receipt
P18 manufacturing far beyond plan: vein-to-vein at risk   P20 scheduled, then silence: stuck
plus a courier shipment that matches no order, and a CRM extract that lags and contradicts the hub.

Events are produced as canonical JSON per source system (`Emission`), split into waves by time.
Patient identifiers are synthetic and enter only as pseudonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cgthub.identifiers import mod37_2_check
from cgthub.lifecycle import OrderStatus
from cgthub.model import EventType as E

PATIENTS = 25
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SITES = {"US": ["US-BOS-01", "US-HOU-02", "US-SEA-03"], "DE": ["DE-HD-01", "DE-MUC-02"]}
CMO = {"US": "CMO-NJ", "DE": "CMO-LEI"}


@dataclass
class Emission:
    """One partner message: which system says it (and over which channel), when, and the event."""

    system: str  # drop folder: crm, erp, courier, cmo, cmo_batch, or hl7 (the MLLP inbox)
    at: datetime
    event: dict[str, Any]
    message_id: str = ""
    hl7: str = ""  # the HL7 v2 message as the hospital sends it (mapped by mappings/hl7), when there is one
    kind: str = ""  # its message type (ORU^R01) or the partner's document kind (enrollment, tracking_event)
    native: dict[str, Any] | None = None  # the partner's own JSON record (mapped by mappings/<partner>/<kind>)


@dataclass
class Patient:
    n: int
    market: str
    site: str
    enrolled_at: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def crm(self) -> str:
        return f"CRM-{self.n:05d}"

    @property
    def so(self) -> str:
        return f"SO-{4500000 + self.n}"

    @property
    def batch(self) -> str:
        return f"B{self.market}-{self.n:04d}"

    @property
    def din(self) -> str:
        body = f"W1234{26}{self.n:06d}"
        return body + mod37_2_check(body)

    @property
    def coi(self) -> str:
        return f"CHW123426{self.n:06d}"

    @property
    def lot(self) -> str:
        return f"LOT-{self.market}-{self.n:04d}"


def patients(now: datetime) -> list[Patient]:
    # Enrolled 44 days ago (P01, infused) down to 8 days ago (P25, at the CMO); a few set on purpose.
    special = {13: 9.5, 18: 36.0, 20: 12.0}
    out = []
    for n in range(1, PATIENTS + 1):
        market = "US" if n % 2 else "DE"
        site = SITES[market][(n // 2) % len(SITES[market])]
        age = special.get(n, 44 - 1.5 * (n - 1))
        out.append(Patient(n, market, site, now - timedelta(days=age)))
    return out


def _event(p: Patient, system: str, kind: E, at: datetime, eid: str, **fields: Any) -> dict[str, Any]:
    refs = {"crm_order_id": p.crm, **fields.pop("refs", {})}
    return {
        "source_system": {"cmo_batch": "cmo"}.get(system, system),
        "source_event_id": eid,
        "event_type": kind.value,
        "occurred_at": at.isoformat(),
        "received_at": (at + timedelta(minutes=5)).isoformat(),
        "refs": refs,
        **fields,
    }


def life_cycle(p: Patient, all_patients: list[Patient]) -> list[Emission]:
    """Everything the partners will ever say about patient p, future included."""
    t0, n = p.enrolled_at, p.n
    out: list[Emission] = []

    def say(system: str, kind: E, at: datetime, eid: str, message_id: str = "", **fields: Any) -> None:
        out.append(Emission(system, at, _event(p, system, kind, at, eid, **fields), message_id))

    def crm(at: datetime, status: str, **extra: Any) -> None:
        """The CRM's therapy-order record as it stands at `at` (the CRM sends whole records)."""
        record = {
            "id": p.crm,
            "recordType": "TherapyOrder",
            "status": status,
            "modifiedAt": at.isoformat(),
            "enrolledAt": t0.isoformat(),
            "product": "KYM-CD19",
            "site": {"id": p.site, "country": p.market},
            "manufacturingSite": CMO[p.market],
            "patient": {"coiId": p.coi, "mrn": f"MRN{n:08d}"},  # synthetic; the mapping pseudonymizes it
            "apheresis": None,
            **extra,
        }
        out.append(Emission("crm", at, {}, kind="enrollment", native=record))

    def track(status: str, at: datetime, eid: str, leg: dict[str, Any], **extra: Any) -> None:
        """One courier tracking event, in the courier's own format and offsets."""
        event = {
            "eventId": eid,
            "shipmentId": leg["shipment_id"],
            "trackingNumber": f"CRY{leg['shipment_id'][4:8]}{leg['direction'][3].upper()}",
            "status": status,
            "timestamp": at.isoformat(),
            "direction": {"to_cmo": "TO_MANUFACTURER", "to_site": "TO_SITE"}[leg["direction"]],
            "reference": {"crmOrderId": p.crm},
            "shipper": {"id": leg["shipper_id"]},
            **extra,
        }
        out.append(Emission("courier", at, {}, kind="tracking_event", native=event))

    ship_out = {
        "shipment_id": f"SHP-{n:04d}-O",
        "courier": "cryoport",
        "direction": "to_cmo",
        "shipper_id": f"DS-{700 + n}",
    }
    ship_back = {
        "shipment_id": f"SHP-{n:04d}-B",
        "courier": "cryoport",
        "direction": "to_site",
        "shipper_id": f"DS-{800 + n}",
    }
    crm(t0, "ENROLLED")
    say("erp", E.ERP_SALES_ORDER_CREATED, t0 + 3 * HOUR, f"so-{n}-created", refs={"erp_sales_order": p.so})
    booking = {
        "scheduledFor": (t0 + 5 * DAY).isoformat(),
        "bookedAt": (t0 + DAY).isoformat(),
        "slotId": f"SLOT-{n:04d}",
    }
    crm(t0 + DAY, "SCHEDULED", apheresis=booking)
    if n == 11:
        cancelled_at = (t0 + 3 * DAY).isoformat()
        crm(t0 + 3 * DAY, "CANCELLED", apheresis=booking, cancelledAt=cancelled_at, cancelReason="PT_UNWELL")
        p.notes.append("cancelled")
        return out
    if n == 20:
        p.notes.append("no word since apheresis was scheduled")
        return out
    collected_at = t0 + 5 * DAY
    oru = collection_report(p, collected_at, f"{p.site[:3]}{n:05d}C")
    out.append(Emission("hl7", collected_at, {}, f"{p.site[:3]}{n:05d}C", hl7=oru, kind="ORU^R01"))
    if n == 2:  # the interface engine resends the same message (same control id) after a timeout
        out.append(Emission("hl7", collected_at + 2 * HOUR, {}, out[-1].message_id, hl7=oru, kind="ORU^R01"))
        p.notes.append("HL7 resend")
    cold = {"minC": -192.0, "maxC": -186.5, "readings": 24}
    track("PICKED_UP", t0 + 5 * DAY + 4 * HOUR, f"EVT-{n:04d}-O1", ship_out, contents={"din": p.din}, temperature=cold)
    if n == 13:
        track("CUSTOMS_HOLD", t0 + 5 * DAY + 14 * HOUR, f"EVT-{n:04d}-O2", ship_out)
        p.notes.append("customs hold")
        return out
    if n == 3:
        excursion = {"start": (t0 + 5 * DAY + 10 * HOUR).isoformat(), "extremeC": -128.5, "limitC": -150.0}
        track(
            "TEMPERATURE_EXCURSION",
            t0 + 5 * DAY + 11 * HOUR,
            f"EVT-{n:04d}-O3",
            ship_out,
            excursion={**excursion, "durationMin": 55},
        )
        p.notes.append("temperature excursion")
    track("DELIVERED", t0 + 6 * DAY, f"EVT-{n:04d}-O4", ship_out, location={"code": CMO[p.market]}, temperature=cold)
    received_din = all_patients[0].din if n == 7 else p.din
    say(
        "cmo",
        E.MATERIAL_RECEIVED_AT_CMO,
        t0 + 6 * DAY + 2 * HOUR,
        f"cmo-{n}-receipt",
        material={"din": received_din},
        refs={"cmo_batch_id": p.batch},
    )
    if n == 7:
        p.notes.append("COI mismatch at CMO receipt")
        return out
    say("cmo", E.MANUFACTURING_STARTED, t0 + 7 * DAY, f"cmo-{n}-mfg", refs={"cmo_batch_id": p.batch})
    if n == 18:
        p.notes.append("manufacturing overrun")
        return out
    say("cmo", E.QC_STARTED, t0 + 19 * DAY, f"cmo-{n}-qc", material={"lot": p.lot}, refs={"cmo_batch_id": p.batch})
    slip = 0 * DAY
    if n == 5:
        say(
            "cmo",
            E.PRODUCT_OOS,
            t0 + 22 * DAY,
            f"cmo-{n}-oos",
            reason="viability 68% < 70% specification",
            refs={"cmo_batch_id": p.batch},
        )
        say(
            "cmo_batch",
            E.OOS_RELEASED_UNDER_EXCEPTION,
            t0 + 26 * DAY,
            f"coa-{n}-exception",
            reason="released under exception after physician request and risk assessment",
            material={"lot": p.lot},
            refs={"cmo_batch_id": p.batch},
        )
        slip = 3 * DAY
        p.notes.append("OOS, released under exception")
    else:
        say(
            "cmo_batch",
            E.PRODUCT_RELEASED,
            t0 + 23 * DAY,
            f"coa-{n}-released",
            material={"lot": p.lot},
            refs={"cmo_batch_id": p.batch},
        )
    track("PICKED_UP", t0 + 24 * DAY + slip, f"EVT-{n:04d}-B1", ship_back, contents={"lot": p.lot}, temperature=cold)
    track("DELIVERED", t0 + 25 * DAY + slip, f"EVT-{n:04d}-B4", ship_back, location={"code": p.site})
    booked_at, infusion_at = t0 + 26 * DAY + slip, t0 + 29 * DAY + slip
    siu = infusion_booking(p, booked_at, infusion_at, f"{p.site[:3]}{n:05d}S")
    out.append(Emission("hl7", booked_at, {}, f"{p.site[:3]}{n:05d}S", hl7=siu, kind="SIU^S12"))
    say("hl7", E.INFUSED, t0 + 29 * DAY + slip, f"ORU-{n}-infused", message_id=f"MSG{n:05d}I")
    return out


def _ts(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S+0000")


def _pid(p: Patient) -> str:
    # Synthetic identity, as a hospital sends it: the mapping keeps only the COI id and a pseudonym.
    return f"PID|1||MRN{p.n:08d}^^^{p.site}^MR~{p.coi}^^^COI^PN||Demo^Patient{p.n:02d}||19700101|U"


def collection_report(p: Patient, at: datetime, control_id: str) -> str:
    """ORU^R01: the apheresis unit (SPM-2, ISBT 128 DIN) and its cell counts."""
    return "\r".join(
        [
            f"MSH|^~\\&|EPIC|{p.site}|CGTHUB|HUB|{_ts(at + HOUR)}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
            _pid(p),
            f"OBR|1|PO-{p.n:05d}|FL-{p.n:05d}|APH^Apheresis collection^L",
            f"OBX|1|NM|CD3^CD3+ cells^L||4.2E9|cells|||||F|||{_ts(at + 2 * HOUR)}",
            f"OBX|2|NM|TNC^Total nucleated cells^L||1.1E10|cells|||||F|||{_ts(at + 2 * HOUR)}",
            f"OBX|3|NM|VOL^Product volume^L||265|mL|||||F|||{_ts(at + 2 * HOUR)}",
            f"SPM|1|{p.din}||PBMC^Apheresis product|||||||||||||{_ts(at)}",
        ]
    )


def infusion_booking(p: Patient, at: datetime, infusion_at: datetime, control_id: str) -> str:
    """SIU^S12: the infusion slot booked at the treatment site (SCH-26 names the placer order)."""
    return "\r".join(
        [
            f"MSH|^~\\&|EPIC|{p.site}|CGTHUB|HUB|{_ts(at)}||SIU^S12^SIU_S12|{control_id}|P|2.5.1",
            f"SCH|APT-{p.n:05d}|||||^Infusion|||||||||||||||||||BOOKED|PO-{p.n:05d}",
            _pid(p),
            "RGS|1",
            f"AIS|1||INF^CAR-T infusion|{_ts(infusion_at)}",
            f"AIL|1||INF-BAY-4^^^{p.site}",
        ]
    )


def orphan_shipment(now: datetime) -> Emission:
    """A courier pickup for a shipment no order knows (the booking reference was left out)."""
    at = now - 2 * DAY
    event = {
        "eventId": "EVT-9977-O1",
        "shipmentId": "SHP-9977-O",
        "status": "PICKED_UP",
        "timestamp": at.isoformat(),
        "direction": "TO_MANUFACTURER",
        "reference": {},
        "shipper": {"id": "DS-9977"},
    }
    return Emission("courier", at, {}, kind="tracking_event", native=event)


def crm_extract(people: list[Patient], now: datetime) -> list[dict[str, Any]]:
    """The CRM's nightly extract: right for most, stale for P15, and wrongly cancelled for P22."""
    rows = []
    for p in people:
        status = None
        if p.n == 15:
            status = OrderStatus.APHERESIS_SCHEDULED.value
        elif p.n == 22:
            status = OrderStatus.CANCELLED.value
        rows.append(
            {
                "system": "crm",
                "ref_kind": "crm_order_id",
                "ref_value": p.crm,
                "status": status,
                "coi_id": p.coi,
                "as_of": now.isoformat(),
            }
        )
    rows.append(
        {
            "system": "crm",
            "ref_kind": "crm_order_id",
            "ref_value": "CRM-09999",
            "status": "enrolled",
            "coi_id": None,
            "as_of": now.isoformat(),
        }
    )
    return rows


def world(now: datetime) -> tuple[list[Patient], list[Emission]]:
    people = patients(now)
    emissions = [e for p in people for e in life_cycle(p, people) if e.at <= now]
    emissions.append(orphan_shipment(now))
    return people, sorted(emissions, key=lambda e: e.at)
