"""Order status back to the hospital as HL7 ORR^O02 over MLLP, with retry and ACK checking.

Why ORR^O02 (2.5): the hospitals we connect speak 2.3-2.5.1, where ORR^O02 is the order response
every order-entry system accepts; OSU^O51 (a dedicated status update) only exists from 2.7.
ORC-1 is SC (status changed), ORC-5 the HL7 table 0038 order status derived from the hub's
status, and an NTE carries the hub's own status word. MSH-19 names the principal language the
order's market sets (config/markets `language`), for the hospital's engine to pick its display.
PID carries only the CoI id: names and birth dates stay at the hospital. Each segment is validated
with hl7apy (strict) before sending; hl7apy cannot validate the ORR_O02 choice group as a whole, so
the message structure is checked by parsing it with groups.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message, parse_segment

from cgthub import markets
from cgthub.errors import CgthubError
from cgthub.hl7.ack import ack_code
from cgthub.hl7.appointment import MESSAGE_TYPES as APPOINTMENTS
from cgthub.hl7.appointment import build_appointment
from cgthub.hl7.mllp import FrameDecoder, frame

CONN_ID = "hospital_mllp"
# Hub status -> HL7 table 0038 order status.
ORDER_STATUS = {
    "enrolled": "SC",
    "apheresis_scheduled": "SC",
    "infusion_scheduled": "SC",
    "infused": "CM",
    "cancelled": "CA",
    "terminated": "DC",
    "on_hold": "HD",
}


class HospitalRefused(CgthubError, RuntimeError):
    """The hospital answered AE/AR (or not at all); the outbox retries."""


def build_status(
    payload: dict[str, Any], *, control_id: str, receiving: tuple[str, str], language: str | None = None
) -> bytes:
    """`language` (ISO 639-1, the market's `language`) goes in MSH-19, the message's principal language."""
    refs = payload.get("refs") or {}
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    status = str(payload["status"])
    coi = str(payload.get("coi_id") or "")
    principal = f"|||||||{language}^^ISO639" if language else ""
    segments = [
        f"MSH|^~\\&|CGTHUB|HUB|{receiving[0]}|{receiving[1]}|{now}||ORR^O02^ORR_O02|{control_id}|P|2.5{principal}",
        f"MSA|AA|{control_id}",
        f'PID|1||{coi}^^^COI^PN||""',
        f"ORC|SC|{refs.get('hospital_placer_order', '')}|{payload.get('order_id', '')}|"
        f"{refs.get('crm_order_id', '')}|{ORDER_STATUS.get(status, 'IP')}||||{now}",
        f"OBR|1|{refs.get('hospital_placer_order', '')}|{payload.get('order_id', '')}|CART^Cell therapy order^L",
        f"NTE|1|L|cgthub status {status}"
        + (f" since {payload['status_since']}" if payload.get("status_since") else ""),
    ]
    for segment in segments:
        parse_segment(segment, version="2.5", validation_level=VALIDATION_LEVEL.STRICT).validate()
    message = "\r".join(segments) + "\r"
    parsed = parse_message(message, find_groups=True)
    if [c.name for c in parsed.children] != ["MSH", "MSA", "ORR_O02_RESPONSE"]:
        raise ValueError("ORR^O02 did not parse into its response group")
    return message.encode()


def send(host: str, port: int, message: bytes, *, timeout: float = 10.0) -> bytes:
    """One message over MLLP; the ACK that came back."""
    decoder = FrameDecoder()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame(message))
        while True:
            block = sock.recv(65536)
            if not block:
                raise HospitalRefused("the hospital closed the connection without an ACK")
            for answer in decoder.feed(block):
                if isinstance(answer, bytes):
                    return answer


def push(payload: dict[str, Any], *, address: str | None = None, attempts: int = 3) -> dict[str, Any]:
    """Deliver one outbox message; retried here briefly, then by the outbox with backoff."""
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    host, port = _address(address)
    control = "CGT" + "".join(ch for ch in str(payload["idempotency_key"]) if ch.isalnum())[-16:]
    receiving = ("EHR", str(payload.get("site") or ""))
    if payload.get("message_type") in APPOINTMENTS:  # a booking, moved or cancelled: SIU^S12, S13, S15
        message = build_appointment(payload, control_id=control, receiving=receiving)
    else:  # a status, in the language of the order's market (MSH-19)
        language = markets.outbound_language(payload.get("market"))
        message = build_status(payload, control_id=control, receiving=receiving, language=language)

    @retry(
        retry=retry_if_exception_type((OSError, HospitalRefused)),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
        stop=stop_after_attempt(attempts),
        reraise=True,
    )
    def deliver() -> bytes:
        ack = send(host, port, message)
        code = ack_code(ack)
        if code not in ("AA", "CA"):
            raise HospitalRefused(f"hospital answered {code} to {control}")
        return ack

    deliver()
    return {"control_id": control, "status": payload.get("status") or payload.get("message_type")}


def _address(address: str | None) -> tuple[str, int]:
    if address is None:
        from cgthub.connections import get_connection

        address = get_connection(CONN_ID).base_url
    parts = urlsplit(address if "://" in address else f"mllp://{address}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"hospital MLLP address {address!r} needs a host and a port (mllp://host:port)")
    return parts.hostname, parts.port
