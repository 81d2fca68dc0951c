"""HL7 acknowledgements, built from a template (hl7apy validates them in the tests).

AA: accepted (durably archived). AE: accepted but it could not be applied; the ERR segment says
why. AR: rejected (not HL7, unsupported type, too large); ERR says why. Which of them, and the
ERR-3 code, follow from the message's `Rejection` code (`answer`), never from the reason's words.
Reasons never quote message content, so no PHI travels back in an ACK.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from cgthub import hl7v2
from cgthub.errors import Rejection

_counter = itertools.count(1)
# HL7 table 0357 (ERR-3, required from 2.5): what went wrong.
_INTERNAL = "207^Application internal error^HL70357"
_UNSUPPORTED = "200^Unsupported message type^HL70357"
_HL7_ERROR = {"AE": _INTERNAL, "AR": _UNSUPPORTED}  # for an ACK built from its code alone

# MSA-1 and ERR-3 for each rejection. AR: the message will never be applied as sent (the sender
# must change it); AE: it is kept, and is applied or replayed once the hub's side is fixed (or, not
# stored, the sender resends it). HL7 has no code for "too large": 207, with ERR-8 giving the limit.
ANSWERS: dict[Rejection, tuple[str, str]] = {
    Rejection.UNREADABLE: ("AR", "100^Segment sequence error^HL70357"),
    Rejection.UNSUPPORTED_TYPE: ("AR", _UNSUPPORTED),
    Rejection.TOO_LARGE: ("AR", _INTERNAL),
    Rejection.ROUTE: ("AE", "103^Table value not found^HL70357"),
    Rejection.QUALIFY: ("AE", "103^Table value not found^HL70357"),
    Rejection.MAPPING: ("AE", _INTERNAL),
    Rejection.VALIDATION: ("AE", "102^Data type error^HL70357"),
    Rejection.CORRELATE: ("AE", "204^Unknown key identifier^HL70357"),
    Rejection.IDENTITY: ("AE", "205^Duplicate key identifier^HL70357"),
    Rejection.CONFLICT: ("AE", "205^Duplicate key identifier^HL70357"),  # a known id with other content
    Rejection.UNAPPLIED: ("AE", _INTERNAL),
    Rejection.NOT_STORED: ("AE", _INTERNAL),
}


def _escape(text: str) -> str:
    """ERR-8's text: cut to 200 characters before escaping (a cut after could split an escape
    sequence), without control characters."""
    return (
        _CONTROL.sub(" ", text[:200])
        .replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_TRIGGER = re.compile(r"[^A-Za-z0-9_]")
_NOT_VERSION = re.compile(r"[^0-9.]")


def _echo(value: str, limit: int) -> str:
    """A value of the sender's MSH as the ACK repeats it: at most `limit` characters, no control
    characters, and no '|' (a sender whose field separator is another character may send one,
    which would shift the ACK's fields)."""
    if len(value) <= limit and value.isprintable() and "|" not in value:
        return value  # the usual case, without a regex
    return _CONTROL.sub("", value[:limit]).replace("|", "\\F\\")


def _code(value: str, not_code: re.Pattern[str]) -> str:
    """A trigger event or version as the ACK repeats it: only the characters such a code has."""
    return value if len(value) <= 20 and not not_code.search(value) else not_code.sub("", value[:20])


class _Template(NamedTuple):
    """The parts of an ACK that one sender's MSH fixes (all but the time, the ACK's own control id,
    the code, the MSH-10 echoed and the ERR), joined once per sender, not once per message."""

    head: str  # "MSH|^~\\&|<receiver>|<sender>|": MSH-1 to MSH-6, the original's ends swapped
    kind: str  # "||ACK^<trigger>^ACK|CGT": MSH-8 and MSH-9, up to MSH-10's prefix
    tail: str  # "|P|<version>\rMSA|": MSH-11, MSH-12 and the MSA up to its code


def _template(sender: str, receiver: str, trigger: str, version: str) -> _Template:
    return _Template(f"MSH|^~\\&|{receiver}|{sender}|", f"||ACK^{trigger}^ACK|CGT", f"|P|{version}\rMSA|")


# The templates of the senders seen, by their MSH values as sent (MSH-3 to MSH-6, trigger, version):
# a listener hears from a few interfaces. A sender varying them cannot grow it past the bound:
# it is emptied when full and filled again as messages come. A key longer than HL7's own sizes
# allow is not kept (its template is made for the one ACK): the key holds the values as sent, and
# 1,024 of a megabyte each would pin a gigabyte.
_TEMPLATES: dict[tuple[str, ...], _Template] = {}
_TEMPLATES_BOUND = 1024
_KEPT_KEY_CHARACTERS = 4 * 227 + 2 * 20


@dataclass(frozen=True, slots=True)
class AckHeader:
    """What an ACK echoes from the message it answers: read once when the message arrives, so
    answering does not parse the message again (the hot path acknowledges thousands a second)."""

    template: _Template  # the sender's own: its application and facility, trigger and version
    control_id: str

    @classmethod
    def of(cls, message: hl7v2.Message) -> AckHeader:
        """Application and facility fields are echoed as sent (all components, still escaped)."""
        msh, header = message.msh, message.header
        assert msh is not None  # hl7v2.parse refuses a message without MSH
        raw = msh.fields  # indexed once: MSH-3 to MSH-6 and MSH-10 as sent, "" where the MSH ends first
        if len(raw) < 11:
            raw = [*raw, *[""] * (11 - len(raw))]
        key = (raw[3], raw[4], raw[5], raw[6], header.trigger, header.version)
        template = _TEMPLATES.get(key)
        if template is None:
            # Each echoed as it came but bounded (HD 227, MSH-10 199, as HL7 2.7 sizes them) and unable
            # to break the ACK's own fields; a trigger or version is a code, so only its code characters.
            template = _template(
                sender=f"{_echo(raw[3], 227)}|{_echo(raw[4], 227)}",
                receiver=f"{_echo(raw[5], 227) or 'CGTHUB'}|{_echo(raw[6], 227) or 'HUB'}",
                trigger=_code(header.trigger, _NOT_TRIGGER),
                version=_code(header.version, _NOT_VERSION) or "2.5.1",
            )
            if sum(map(len, key)) <= _KEPT_KEY_CHARACTERS:
                if len(_TEMPLATES) >= _TEMPLATES_BOUND:
                    _TEMPLATES.clear()
                _TEMPLATES[key] = template
        return cls(template, _echo(raw[10], 199))


_HUB = AckHeader(_template(sender="|", receiver="CGTHUB|HUB", trigger="", version="2.5.1"), "")
_clock: tuple[int, str] = (0, "")


def _timestamp() -> str:
    """DTM to the second, formatted once per second."""
    global _clock  # a one-entry cache shared by every ACK
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S"))
    return _clock[1]


def answer(
    original: bytes | None, rejection: Rejection | None, reason: str = "", *, header: AckHeader | None = None
) -> bytes:
    """The ACK for a message with this outcome: AA when nothing rejected it, else the rejection's
    code and ERR-3, with `reason` (PHI-free) as ERR-8."""
    if rejection is None:
        return build_ack(original, "AA", header=header)
    code, error = ANSWERS[rejection]
    return build_ack(original, code, reason, header=header, error=error)


def _first_segment(message: bytes) -> bytes:
    """The bytes before the first segment terminator (CR, or LF from a careless sender)."""
    ends = [at for at in (message.find(b"\r"), message.find(b"\n")) if at >= 0]
    return message[: min(ends)] if ends else message


def build_ack(
    original: bytes | None, code: str, reason: str = "", *, header: AckHeader | None = None, error: str | None = None
) -> bytes:
    """An ACK for `original` (which may be unreadable: then the header is the hub's own); pass the
    `header` read on arrival to skip parsing the original again. `error` is ERR-3 (by default the
    code's: 207 for AE, 200 for AR)."""
    if header is None and original:
        try:  # the MSH alone: a message refused for its size or segment count is not parsed whole
            header = AckHeader.of(hl7v2.parse(_first_segment(original)))
        except hl7v2.HL7ParseError:
            header = None
    template, control_id = header.template if header else _HUB.template, header.control_id if header else ""
    now = _timestamp()
    # MSH-7 and MSH-10 (CGT<now><counter>) carry the time; MSA-2 echoes the original's MSH-10.
    ack = f"{template.head}{now}{template.kind}{now}{next(_counter):06d}{template.tail}{code}|{control_id}\r"
    if code != "AA":
        # ERR-3 error code, ERR-4 severity E(rror), ERR-8 the reason for the hospital's operators.
        ack += f"ERR|||{error or _HL7_ERROR.get(code, _INTERNAL)}|E||||{_escape(reason)}\r"
    return ack.encode()


def ack_code(ack: bytes) -> str:
    """The MSA-1 code of an ACK (AA, AE, AR, CA, CE, CR); '|'-separated ACKs are read without a parse."""
    at = ack.find(b"\rMSA|")
    if ack.startswith(b"MSH|") and at > 0 and ack[at + 7 : at + 8] in (b"|", b"\r", b""):
        return ack[at + 5 : at + 7].decode("ascii", "replace")
    return hl7v2.parse(ack).get("MSA-1")
