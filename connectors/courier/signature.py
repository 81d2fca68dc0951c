"""HMAC-SHA256 webhook signatures: `X-Courier-Signature: sha256=<hex>` over the raw body.

An empty secret signs nothing: anyone can compute an HMAC under the empty key, so such a
signature would prove nothing about its sender.
"""

from __future__ import annotations

import hashlib
import hmac

from cgthub.errors import CgthubError

HEADER = "X-Courier-Signature"


class EmptySecret(CgthubError, ValueError):
    """The webhook's shared secret is empty: every request would pass for the courier's."""

    def __init__(self) -> None:
        super().__init__("the courier webhook secret is empty: set the secret the courier signs with")


def sign(secret: str, body: bytes) -> str:
    if not secret:
        raise EmptySecret()
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True only for a header made with this (non-empty) secret over this body."""
    if not secret or not header:
        return False
    return hmac.compare_digest(sign(secret, body), header)
