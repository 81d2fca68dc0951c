"""HL7 acknowledgements, built from a template (hl7apy validates them in the tests).

AA: accepted (durably archived). AE: accepted but it could not be applied; the ERR segment says
why. AR: rejected (not HL7, unsupported type, too large); ERR says why. Reasons never quote
message content, so no PHI travels back in an ACK.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cgthub import hl7v2

_counter = itertools.count(1)
# HL7 table 0357 (ERR-3, required from 2.5): what went wrong, by ACK code.
_HL7_ERROR = {"AE": "207^Application internal error^HL70357", "AR": "200^Unsupported message type^HL70357"}


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )[:200]


@dataclass(frozen=True)
class AckHeader:
    """What an ACK echoes from the message it answers: read once when the message arrives, so
    answering does not parse the message again (the hot path acknowledges thousands a second)."""

    sender: str  # "application|facility" of the original sender: the ACK's receiver
    receiver: str  # "application|facility" the original was sent to: the ACK's sender
    trigger: str
    version: str
    control_id: str

    @classmethod
    def of(cls, message: hl7v2.Message) -> AckHeader:
        """Application and facility fields are echoed as sent (all components, still escaped)."""
        msh, header = message.msh, message.header
        assert msh is not None  # hl7v2.parse refuses a message without MSH
        raw = msh.fields  # indexed once: MSH-3 to MSH-6 and MSH-10 as sent, "" where the MSH ends first
        if len(raw) < 11:
            raw = [*raw, *[""] * (11 - len(raw))]
        return cls(
            sender=f"{raw[3]}|{raw[4]}",
            receiver=f"{raw[5] or 'CGTHUB'}|{raw[6] or 'HUB'}",
            trigger=header.trigger,
            version=header.version or "2.5.1",
            control_id=raw[10],
        )


_HUB = AckHeader(sender="|", receiver="CGTHUB|HUB", trigger="", version="2.5.1", control_id="")
_clock: tuple[int, str] = (0, "")


def _timestamp() -> str:
    """DTM to the second, formatted once per second."""
    global _clock  # a one-entry cache shared by every ACK
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S"))
    return _clock[1]


def build_ack(original: bytes | None, code: str, reason: str = "", *, header: AckHeader | None = None) -> bytes:
    """An ACK for `original` (which may be unreadable: then the header is the hub's own); pass the
    `header` read on arrival to skip parsing the original again."""
    if header is None and original:
        try:
            header = AckHeader.of(hl7v2.parse(original))
        except hl7v2.HL7ParseError:
            header = None
    header = header or _HUB
    now = _timestamp()
    msh = (
        f"MSH|^~\\&|{header.receiver}|{header.sender}|{now}||ACK^{header.trigger}^ACK|"
        f"CGT{now}{next(_counter):06d}|P|{header.version}"
    )
    segments = [msh, f"MSA|{code}|{header.control_id}"]
    if code != "AA":
        # ERR-3 error code, ERR-4 severity E(rror), ERR-8 the reason for the hospital's operators.
        segments.append(f"ERR|||{_HL7_ERROR.get(code, _HL7_ERROR['AE'])}|E||||{_escape(reason)}")
    return ("\r".join(segments) + "\r").encode()


def ack_code(ack: bytes) -> str:
    """The MSA-1 code of an ACK (AA, AE, AR, CA, CE, CR); '|'-separated ACKs are read without a parse."""
    at = ack.find(b"\rMSA|")
    if ack.startswith(b"MSH|") and at > 0 and ack[at + 7 : at + 8] in (b"|", b"\r", b""):
        return ack[at + 5 : at + 7].decode("ascii", "replace")
    return hl7v2.parse(ack).get("MSA-1")
