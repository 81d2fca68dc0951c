"""HL7 acknowledgements, built from a template (hl7apy validates them in the tests).

AA: accepted (durably archived). AE: accepted but it could not be applied; the ERR segment says
why. AR: rejected (not HL7, unsupported type, too large); ERR says why. Reasons never quote
message content, so no PHI travels back in an ACK.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from cgthub import hl7v2

_counter = itertools.count(1)
_HL7_ERROR = {"AE": "207", "AR": "200"}  # HL7 table 0357: application internal error / unsupported


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )[:200]


def build_ack(original: bytes | None, code: str, reason: str = "") -> bytes:
    """An ACK for `original` (which may be unreadable: then the header is the hub's own)."""
    message = None
    if original:
        try:
            message = hl7v2.parse(original)
        except hl7v2.HL7ParseError:
            message = None
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    control = f"CGT{now}{next(_counter):06d}"
    if message is not None:
        trigger = message.get("MSH-9.2")
        version = message.version or "2.5.1"
        receiving = f"{message.get('MSH-3')}|{message.get('MSH-4')}"
        sending = f"{message.get('MSH-5') or 'CGTHUB'}|{message.get('MSH-6') or 'HUB'}"
        original_id = message.control_id
    else:
        trigger, version, receiving, sending, original_id = "", "2.5.1", "|", "CGTHUB|HUB", ""
    msh = f"MSH|^~\\&|{sending}|{receiving}|{now}||ACK^{trigger}^ACK|{control}|P|{version}"
    segments = [msh, f"MSA|{code}|{original_id}"]
    if code != "AA":
        segments.append(f"ERR||||E|{_HL7_ERROR.get(code, '207')}^^HL70357|||{_escape(reason)}")
    return ("\r".join(segments) + "\r").encode()


def ack_code(ack: bytes) -> str:
    """The MSA-1 code of an ACK (AA, AE, AR, CA, CE, CR)."""
    return hl7v2.parse(ack).get("MSA-1")
