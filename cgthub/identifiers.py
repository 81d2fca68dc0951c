"""ISBT 128 identifiers the chain of identity rests on, and the hub's own order ids.

DIN: facility id (5) + year (2) + sequence (6) = 13 characters, plus a check character
computed with ISO 7064 Mod 37-2 over the 13 characters (set 0-9, A-Z, *).
CoI id (ST-028, data structure 040): "CH" + facility id (5) + year (2) + sequence (6).
"""

from __future__ import annotations

import os
import re

from cgthub.errors import CgthubError

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
_VALUE = {ch: i for i, ch in enumerate(_ALPHABET)}
_COI = re.compile(r"^CH[A-Z][0-9A-Z]{4}[0-9]{2}[0-9]{6}$")


class IdentifierError(CgthubError, ValueError):
    """An identifier that is malformed or fails its check character."""


def mod37_2_check(body: str) -> str:
    """ISO 7064 Mod 37-2 check character for `body` (digits and upper-case letters)."""
    total = 0
    for ch in body:
        value = _VALUE.get(ch)
        if value is None or ch == "*":
            raise IdentifierError(f"character {ch!r} is not allowed in an ISBT 128 identifier")
        total = ((total + value) * 2) % 37
    return _ALPHABET[(38 - total) % 37]


# For each of a DIN body's 13 positions (facility: a letter and four letters or digits; year and
# sequence: eight digits), the characters allowed there and what each adds to the Mod 37-2 sum:
# ((total + value) * 2) % 37, run over the body, is the sum of value * 2 ** (13 - position), mod 37.
_DIN_CLASSES = ["ABCDEFGHIJKLMNOPQRSTUVWXYZ"] + [_ALPHABET[:36]] * 4 + ["0123456789"] * 8
_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9, _P10, _P11, _P12 = (
    {ch: (_VALUE[ch] << (13 - position)) % 37 for ch in allowed} for position, allowed in enumerate(_DIN_CLASSES)
)


def _din_check(body: str) -> str | None:
    """The check character of a DIN body, or None where it is not 13 such characters: one lookup
    a position both checks the character and weighs it (a third of a pattern match and a loop;
    tests/test_transforms_speed_equivalence.py holds it to those)."""
    if len(body) != 13:
        return None
    try:
        total = (
            _P0[body[0]] + _P1[body[1]] + _P2[body[2]] + _P3[body[3]] + _P4[body[4]] + _P5[body[5]] + _P6[body[6]]
            + _P7[body[7]] + _P8[body[8]] + _P9[body[9]] + _P10[body[10]] + _P11[body[11]] + _P12[body[12]]
        )  # fmt: skip
    except KeyError:
        return None
    return _ALPHABET[(38 - total % 37) % 37]


_FLAG_DIGITS = frozenset("0123456789")


def normalize_din(value: str) -> str:
    """Return the 14-character DIN (13 + check) after validating it.

    Accepts the 13-character body (the check character is added), 14 characters with the check
    character, which must match, and a DIN as scanned or printed with its two flag characters
    (ISBT 128 data structure 001: the data identifier `=`, the 13 characters, two flag digits; or the
    eye-readable 13 + flags + check). Flags describe the label, not the donation: they are dropped.
    """
    din = value.strip().upper().replace(" ", "")
    scanned = din.startswith("=")
    if scanned:
        din = din[1:]
    if (len(din) == 15 or (len(din) == 16 and not scanned)) and _FLAG_DIGITS.issuperset(din[13:15]):
        din = din[:13] + din[15:]  # the flags go; a check character after them stays to be checked
    elif scanned:
        raise IdentifierError("a scanned DIN is '=' + facility id (5) + year (2) + sequence (6) + two flag digits")
    body, check = (din[:13], din[13:]) if len(din) == 14 else (din, "")
    expected = _din_check(body)
    if expected is None:
        raise IdentifierError(
            "DIN must be facility id (5) + year (2) + sequence (6), optionally followed by its check character"
        )
    if check and check != expected:
        raise IdentifierError(f"DIN check character is {check!r}, expected {expected!r}")
    return body + expected


def validate_coi_id(value: str) -> str:
    coi = value.strip().upper()
    if not _COI.match(coi):
        raise IdentifierError("CoI id must be 'CH' + facility id (5) + year (2) + sequence (6)")
    return coi


def new_order_id() -> str:
    """The hub's own order id: opaque, stable, carries no PHI.

    The first 16 hex digits of a version 4 UUID, as `uuid.uuid4().hex[:16]` gave them (8 random
    bytes, the version nibble 4 in the 13th digit), without building the UUID object: a new order
    on the ingest path paid about 2 us for it."""
    head = bytearray(os.urandom(8))
    head[6] = head[6] & 0x0F | 0x40
    return "ORD-" + head.hex().upper()
