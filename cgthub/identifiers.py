"""ISBT 128 identifiers the chain of identity rests on, and the hub's own order ids.

DIN: facility id (5) + year (2) + sequence (6) = 13 characters, plus a check character
computed with ISO 7064 Mod 37-2 over the 13 characters (set 0-9, A-Z, *).
CoI id (ST-028, data structure 040): "CH" + facility id (5) + year (2) + sequence (6).
"""

from __future__ import annotations

import re
import uuid

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
_VALUE = {ch: i for i, ch in enumerate(_ALPHABET)}
_DIN_BODY = re.compile(r"^[A-Z][0-9A-Z]{4}[0-9]{2}[0-9]{6}$")
_COI = re.compile(r"^CH[A-Z][0-9A-Z]{4}[0-9]{2}[0-9]{6}$")


class IdentifierError(ValueError):
    """An identifier that is malformed or fails its check character."""


def mod37_2_check(body: str) -> str:
    """ISO 7064 Mod 37-2 check character for `body` (digits and upper-case letters)."""
    for ch in body:
        if ch not in _VALUE or ch == "*":
            raise IdentifierError(f"character {ch!r} is not allowed in an ISBT 128 identifier")
    return _check(body)


def _check(body: str) -> str:
    """Mod 37-2 over characters already known to be 0-9 A-Z (the DIN pattern checked them)."""
    total = 0
    value = _VALUE
    for ch in body:
        total = ((total + value[ch]) * 2) % 37
    return _ALPHABET[(38 - total) % 37]


def normalize_din(value: str) -> str:
    """Return the 14-character DIN (13 + check) after validating it.

    Accepts the 13-character body (the check character is added) or 14 characters with
    the check character, which must match. Flag characters after the check are not part of the DIN.
    """
    din = value.strip().upper().replace(" ", "")
    body, check = (din[:13], din[13:]) if len(din) == 14 else (din, "")
    if not _DIN_BODY.match(body):
        raise IdentifierError(
            "DIN must be facility id (5) + year (2) + sequence (6), optionally followed by its check character"
        )
    expected = _check(body)
    if check and check != expected:
        raise IdentifierError(f"DIN check character is {check!r}, expected {expected!r}")
    return body + expected


def validate_coi_id(value: str) -> str:
    coi = value.strip().upper()
    if not _COI.match(coi):
        raise IdentifierError("CoI id must be 'CH' + facility id (5) + year (2) + sequence (6)")
    return coi


def new_order_id() -> str:
    """The hub's own order id: opaque, stable, carries no PHI."""
    return "ORD-" + uuid.uuid4().hex[:16].upper()
