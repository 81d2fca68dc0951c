"""Opaque pagination cursors: base64url text a client passes back unchanged and must not parse.

Each cursor names its kind, so a feed cursor given to the order list (or any edited string) is an
invalid cursor, answered with 400 rather than a wrong page. Encoding is plain text, not JSON: the
change feed encodes one cursor per event, on its hot path.
"""

from __future__ import annotations

import base64
import binascii

from cgthub.api.errors import ApiError
from cgthub.changes import FeedPosition

_INVALID = "the cursor is not one this API handed out; start again without it"
_MAX_INT_DIGITS = 18  # below 2**63


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii")).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise ApiError(400, "invalid_cursor", _INVALID) from None
    prefix, _, rest = text.partition(":")
    if prefix != kind or not rest:
        raise ApiError(400, "invalid_cursor", _INVALID)
    return rest


def encode_order_cursor(last_order_id: str) -> str:
    return _encode(f"o1:{last_order_id}")


def decode_order_cursor(cursor: str) -> str:
    last = _decode("o1", cursor)
    if len(last) > 40:
        raise ApiError(400, "invalid_cursor", _INVALID)
    return last


def encode_feed_cursor(position: FeedPosition) -> str:
    return _encode(f"f1:{position.tx}:{position.id}")


def decode_feed_cursor(cursor: str) -> FeedPosition:
    parts = _decode("f1", cursor).split(":")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= _MAX_INT_DIGITS for p in parts):
        raise ApiError(400, "invalid_cursor", _INVALID)
    return FeedPosition(int(parts[0]), int(parts[1]))
