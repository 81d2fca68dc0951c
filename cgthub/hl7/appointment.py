"""The booked apheresis to the hospital as HL7 SIU^S12 (new appointment booking), SIU^S13 (the
appointment rescheduled) and SIU^S15 (the appointment cancelled), v2.5, all of structure SIU_S12.

The hub is the filler of the appointment: SCH-2 is the booking's id, SCH-1 the hospital's placer
order number when the hub knows it (else the hub's order id), SCH-11 and TQ1 the start and end in
the site's local time with its offset (for S15, the appointment that is called off), AIS the
service and its duration, AIL the site; SCH-6 and SCH-25 say booked, moved or cancelled, and RGS-2
and AIS-2 the action (A add, U update, D delete). PID carries
only the CoI id, as the status messages do: names and birth dates stay at the hospital. The whole
message is validated by hl7apy (strict) before it is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

MESSAGE_TYPE = "SIU^S12"  # a new booking
RESCHEDULED = "SIU^S13"
CANCELLED = "SIU^S15"
MESSAGE_TYPES = frozenset({MESSAGE_TYPE, RESCHEDULED, CANCELLED})
SERVICE = "APHERESIS^Apheresis collection^L"
# trigger: (SCH-6 event reason, SCH-25 filler status, RGS-2 / AIS-2 segment action)
_TRIGGERS = {
    MESSAGE_TYPE: ("BOOKED^Slot booked^L", "Booked^Booked^HL70278", "A"),
    RESCHEDULED: ("MOVED^Slot moved^L", "Booked^Booked^HL70278", "U"),
    CANCELLED: ("CANCELLED^Booking cancelled^L", "Cancelled^Cancelled^HL70278", "D"),
}
_MINUTES = "min^minutes^ISO+"


def _field(value: object) -> str:
    """A value safe inside one HL7 field (the hub's own ids and codes, escaped all the same)."""
    text = str(value or "")
    for raw, escaped in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(raw, escaped)
    return text.replace("\r", " ").replace("\n", " ")[:199]


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(i, "") for i in range(1, max(fields) + 1))])


def build_appointment(payload: dict[str, Any], *, control_id: str, receiving: tuple[str, str]) -> bytes:
    """SIU^S12, S13 or S15 (the payload's `message_type`) for one booking outbox payload (cgthub.booking)."""
    trigger = str(payload.get("message_type") or MESSAGE_TYPE)
    if trigger not in _TRIGGERS:
        raise ValueError(f"no appointment message {trigger}")
    reason, status, action = _TRIGGERS[trigger]
    event = trigger.split("^")[1]
    start = datetime.fromisoformat(str(payload["apheresis_at"]))
    minutes = int(payload.get("apheresis_minutes") or 240)
    end = start + timedelta(minutes=minutes)
    at, until = start.strftime("%Y%m%d%H%M%S%z"), end.strftime("%Y%m%d%H%M%S%z")
    refs = payload.get("refs") or {}
    placer = _field(refs.get("hospital_placer_order") or payload["order_id"])
    filler = _field(f"BKG-{payload['booking_id']}")
    site = _field(payload.get("site"))
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    slot = f"manufacturing slot {_field(payload.get('cmo'))} {_field(payload.get('slot_day'))}"
    note = (
        f"booking cancelled, {slot} released"
        if trigger == CANCELLED
        else f"{slot}, planned infusion {_field(payload.get('infusion_on'))}"
    )
    segments = [
        f"MSH|^~\\&|CGTHUB|HUB|{_field(receiving[0])}|{_field(receiving[1])}|{now}||SIU^{event}^SIU_S12|{control_id}|P|2.5",
        _segment(
            "SCH",
            {
                1: f"{placer}^CGTHUB",
                2: f"{filler}^CGTHUB",
                6: reason,
                7: SERVICE,
                9: str(minutes),
                10: _MINUTES,
                11: f"^^{minutes}^{at}^{until}",
                16: "cgthub^^^^^^^^CGTHUB",
                20: "cgthub^^^^^^^^CGTHUB",
                25: status,
            },
        ),
        f"TQ1|1||||||{at}|{until}",
        f"NTE|1|L|{note}",
        f'PID|1||{_field(payload.get("coi_id"))}^^^COI^PN||""',
        f"RGS|1|{action}",
        f"AIS|1|{action}|{SERVICE}|{at}|||{minutes}|{_MINUTES}",
        f"AIL|1|{action}|{site}^^^{site}",
    ]
    message = "\r".join(segments) + "\r"
    parsed = parse_message(message, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    return message.encode()
