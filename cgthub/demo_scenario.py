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

Each partner speaks its own format (`Emission`): the CRM's therapy-order records, the ERP's sales
orders, the courier's tracking events, the CMO's REST events and nightly CSV rows, the hospital's
HL7 v2; the demo posts them into the partners' sandboxes, split into waves by time.
Patient identifiers are synthetic and enter only as pseudonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cgthub.identifiers import mod37_2_check
from cgthub.lifecycle import OrderStatus

PATIENTS = 25
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SITES = {"US": ["US-BOS-01", "US-HOU-02", "US-SEA-03"], "DE": ["DE-HD-01", "DE-MUC-02"]}
CMO = {"US": "CMO-NJ", "DE": "CMO-LEI"}


@dataclass
class Emission:
    """One partner message, in the partner's own format: who says it, when, and what they record."""

    system: str  # crm, erp, courier, cmo, or hl7 (the hospital, over MLLP)
    at: datetime
    kind: str  # the partner's document kind (enrollment, sales_order, batch_record...) or HL7 type (ORU^R01)
    native: dict[str, Any] | None = None  # the partner's own record (mapped by mappings/<system>/<kind>)
    hl7: str = ""  # the HL7 v2 message as the hospital sends it (mapped by mappings/hl7)
    message_id: str = ""  # MSH-10 of an HL7 message


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


def therapy_order(p: Patient, at: datetime, status: str, **extra: Any) -> dict[str, Any]:
    """The CRM's therapy-order record as it stands at `at` (the CRM sends whole records)."""
    return {
        "id": p.crm,
        "recordType": "TherapyOrder",
        "status": status,
        "modifiedAt": at.isoformat(),
        "enrolledAt": p.enrolled_at.isoformat(),
        "product": "KYM-CD19",
        "site": {"id": p.site, "country": p.market},
        "manufacturingSite": CMO[p.market],
        "patient": {"coiId": p.coi, "mrn": f"MRN{p.n:08d}"},  # synthetic; the mapping pseudonymizes it
        "apheresis": None,
        **extra,
    }


@dataclass
class Desk:
    """Today's work at the scheduling desk: enrolments the CRM sends this morning, and who is in them."""

    refused: Patient  # from a site whose qualification for the therapy lapsed
    first: Patient  # books the last place on the earliest slot
    second: Patient  # asks for the same place a moment later
    bedside: int  # the patient whose infusion bag is scanned at the bedside ...
    wrong_bag: int  # ... and whose bag it really is
    enrolments: list[Emission]


UNQUALIFIED_SITE = "US-NYC-04"  # config/sites.yaml: its CART-19 certification lapsed


def desk(now: datetime) -> Desk:
    """Three enrolments this morning (one from a site no longer qualified), and a bag mix-up at a bedside."""
    at = now - 2 * HOUR
    refused = Patient(PATIENTS + 1, "US", UNQUALIFIED_SITE, at)
    first = Patient(PATIENTS + 2, "US", SITES["US"][0], at)
    second = Patient(PATIENTS + 3, "US", SITES["US"][0], at)
    emissions = [
        Emission("crm", at, "enrollment", native=therapy_order(p, at, "ENROLLED")) for p in (refused, first, second)
    ]
    return Desk(refused, first, second, bedside=12, wrong_bag=8, enrolments=emissions)


CMO_PLANT_TZ = ZoneInfo("Europe/Brussels")  # the CMO's batch records carry the plant's local time


def life_cycle(p: Patient, all_patients: list[Patient]) -> list[Emission]:
    """Everything the partners will ever say about patient p, future included."""
    t0, n = p.enrolled_at, p.n
    out: list[Emission] = []

    def cmo(event_type: str, at: datetime, eid: str, **fields: Any) -> None:
        """One step of the CMO's MES, as its REST event feed reports it (mappings/cmo/batch_event)."""
        record = {"messageId": eid, "eventType": event_type, "eventTime": at.isoformat()}
        record |= {"orderReference": p.crm, "batchId": p.batch, **fields}
        out.append(Emission("cmo", at, "batch_event", native=record))

    def batch_record(step: str, result: str, at: datetime) -> None:
        """One row of the CMO's nightly CSV export, in the plant's local time (mappings/cmo/batch_record)."""
        local = at.astimezone(CMO_PLANT_TZ).strftime("%Y-%m-%d %H:%M:%S")
        row = {"batch_id": p.batch, "order_reference": p.crm, "lot": p.lot, "step": step, "step_time": local}
        out.append(Emission("cmo", at, "batch_record", native={**row, "result": result}))

    def crm(at: datetime, status: str, **extra: Any) -> None:
        out.append(Emission("crm", at, "enrollment", native=therapy_order(p, at, status, **extra)))

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
        out.append(Emission("courier", at, "tracking_event", native=event))

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
    sales_order = {  # entered by the sponsor's order desk in the ERP, keyed by the CRM order id
        "salesOrderNumber": p.so,
        "crmOrderId": p.crm,
        "materialNumber": "MAT-CART19",
        "plant": f"{p.market}10",
        "createdAt": (t0 + 3 * HOUR).isoformat(),
    }
    out.append(Emission("erp", t0 + 3 * HOUR, "sales_order", native=sales_order))
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
    out.append(Emission("hl7", collected_at, "ORU^R01", hl7=oru, message_id=f"{p.site[:3]}{n:05d}C"))
    if n == 2:  # the interface engine resends the same message (same control id) after a timeout
        out.append(Emission("hl7", collected_at + 2 * HOUR, "ORU^R01", hl7=oru, message_id=out[-1].message_id))
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
    cmo("MATERIAL_RECEIVED", t0 + 6 * DAY + 2 * HOUR, f"cmo-{n}-receipt", din=received_din)
    if n == 7:
        p.notes.append("COI mismatch at CMO receipt")
        return out
    cmo("MANUFACTURING_STARTED", t0 + 7 * DAY, f"cmo-{n}-mfg")
    if n == 18:
        p.notes.append("manufacturing overrun")
        return out
    cmo("QC_STARTED", t0 + 19 * DAY, f"cmo-{n}-qc", lot=p.lot)
    slip = 0 * DAY
    if n == 5:
        cmo("OOS", t0 + 22 * DAY, f"cmo-{n}-oos", lot=p.lot, finding="viability 68% < 70% specification")
        # released under exception after the physician's request and a risk assessment
        batch_record("RELEASE", "EXCEPTION", t0 + 26 * DAY)
        slip = 3 * DAY
        p.notes.append("OOS, released under exception")
    else:
        batch_record("RELEASE", "PASS", t0 + 23 * DAY)
    track("PICKED_UP", t0 + 24 * DAY + slip, f"EVT-{n:04d}-B1", ship_back, contents={"lot": p.lot}, temperature=cold)
    track("DELIVERED", t0 + 25 * DAY + slip, f"EVT-{n:04d}-B4", ship_back, location={"code": p.site})
    booked_at, infusion_at = t0 + 26 * DAY + slip, t0 + 29 * DAY + slip
    siu = infusion_booking(p, booked_at, infusion_at, f"{p.site[:3]}{n:05d}S")
    out.append(Emission("hl7", booked_at, "SIU^S12", hl7=siu, message_id=f"{p.site[:3]}{n:05d}S"))
    infused = infusion_record(p, infusion_at, f"{p.site[:3]}{n:05d}I")
    out.append(Emission("hl7", infusion_at + HOUR, "ORU^R01", hl7=infused, message_id=f"{p.site[:3]}{n:05d}I"))
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


def infusion_record(p: Patient, infused_at: datetime, control_id: str) -> str:
    """ORU^R01 infusion record: OBR-4 INF, OBR-7 when the product went in, OBR-20 its lot."""
    return "\r".join(
        [
            f"MSH|^~\\&|EPIC|{p.site}|CGTHUB|HUB|{_ts(infused_at + HOUR)}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
            _pid(p),
            f"OBR|1|PO-{p.n:05d}|FL-{p.n:05d}|INF^CAR-T infusion^L|||{_ts(infused_at)}|||||||||||||{p.lot}|||||F",
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
    return Emission("courier", at, "tracking_event", native=event)


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


def stories(now: datetime) -> tuple[list[Patient], list[list[Emission]]]:
    """Each patient's whole life cycle placed against `now` (the part after `now` included).

    Everything is relative to `now`: a story placed at the real time is judged truthfully by
    monitoring that runs on the real clock."""
    people = patients(now)
    return people, [life_cycle(p, people) for p in people]


def world(now: datetime) -> tuple[list[Patient], list[Emission]]:
    """What the partners have said by `now`, oldest first (the demo's whole story as of `now`)."""
    people, lives = stories(now)
    emissions = [e for life in lives for e in life if e.at <= now]
    emissions.append(orphan_shipment(now))
    return people, sorted(emissions, key=lambda e: e.at)
