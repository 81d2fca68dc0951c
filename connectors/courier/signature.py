"""HMAC-SHA256 webhook signatures: `X-Courier-Signature: sha256=<hex>` over the raw body."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Courier-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(sign(secret, body), header or "")
