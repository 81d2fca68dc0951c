"""Values a sender chose, as a reason quotes them: bounded, with the cut shown.

A quarantine reason lands in the store, the ACK's ERR-8 and the log, and an operator reads it. A
value the sender supplied (a sending facility, a site id) is quoted so the operator can find it,
but never at full length: a 3,000-character facility would otherwise fill all three whole. The
first `QUOTE_LIMIT` characters are kept and the cut says how long the value was, so nobody takes
the head for the whole. Control characters are escaped, so a value cannot start a log line of its
own. Only ids are quoted this way; patient fields are never passed here.
"""

from __future__ import annotations

QUOTE_LIMIT = 40


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """`value` in quotes (repr, so control characters are escaped), cut after `limit` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def shown(value: str, limit: int = QUOTE_LIMIT) -> str:
    """`value` as it reads, without quotes (control characters escaped), cut after `limit` characters."""
    head = value[:limit]
    if not head.isprintable():
        head = repr(head)[1:-1]
    return head if len(value) <= limit else f"{head}… ({len(value):,} characters)"
