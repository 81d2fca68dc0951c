"""Pseudonymization and masking of patient identifiers.

The hub never stores MRNs, names or birth dates in clear: identifiers become keyed HMACs
("psn:<kind>:<hex>"), so the same MRN always maps to the same token for one key, and the
token cannot be reversed or brute-forced without the key. `mask` is for error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cgthub.settings import get_settings

_TOKEN = re.compile(r"^psn:[a-z_]+:[0-9a-f]{32}$")


def pseudonymize(kind: str, value: str, *, key: bytes | None = None) -> str:
    """Keyed HMAC-SHA256 of an identifier, namespaced by its kind (mrn, ssn, ...)."""
    if is_pseudonym(value):
        return value
    secret = key if key is not None else get_settings().pseudonym_key
    normalized = value.strip().upper()
    keyed = _KEYED.get(secret)
    if keyed is None:  # the key schedule once per key; each identifier then costs one copy and update
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(f"{kind}\x1f{normalized}".encode())
    return f"psn:{kind}:{mac.hexdigest()[:32]}"


_KEYED: dict[bytes, hmac.HMAC] = {}


def is_pseudonym(value: str) -> bool:
    return bool(_TOKEN.match(value))


def mask(value: object) -> str:
    """Show the shape of a value, never its content: '<masked str, 5 chars>'. For errors about PHI."""
    text = str(value)
    return f"<masked {type(value).__name__}, {len(text)} chars>"
