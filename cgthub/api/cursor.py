"""Opaque pagination cursors: base64url text a client passes back unchanged and must not parse.

Each cursor names its kind, so a feed cursor given to the order list (or any edited string) is an
invalid cursor, answered with 400 rather than a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json

from cgthub.api.errors import ApiError
from cgthub.changes import FeedPosition


def _encode(kind: str, value: list[object]) -> str:
    raw = json.dumps([kind, *value], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(kind: str, cursor: str, arity: int) -> list[object]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        value = None
    if not isinstance(value, list) or len(value) != arity + 1 or value[0] != kind:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API handed out; start again without it")
    return value[1:]


def encode_order_cursor(last_order_id: str) -> str:
    return _encode("o1", [last_order_id])


def decode_order_cursor(cursor: str) -> str:
    (last,) = _decode("o1", cursor, 1)
    if not isinstance(last, str) or len(last) > 40:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API handed out; start again without it")
    return last


def encode_feed_cursor(position: FeedPosition) -> str:
    return _encode("f1", [position.tx, position.id])


def decode_feed_cursor(cursor: str) -> FeedPosition:
    tx, change_id = _decode("f1", cursor, 2)
    valid = all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in (tx, change_id))
    if not valid:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API handed out; start again without it")
    return FeedPosition(int(tx), int(change_id))  # type: ignore[arg-type]
