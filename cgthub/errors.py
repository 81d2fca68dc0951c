"""The hub's error vocabulary, at the bottom of every layer: it imports nothing from cgthub.

Every exception the hub raises derives from `CgthubError`, so a caller (a DAG task, the CLI, a
test) can tell the hub's own failures from a library's. A payload the hub will not turn into
canonical events raises `PayloadRejected`, which carries a `Rejection` code: HL7 ACKs, API errors
and reports choose their answer from that code, never from the reason's wording (the reason is for
people and may be reworded freely).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class CgthubError(Exception):
    """Root of every exception the hub defines."""


class Rejection(StrEnum):
    """Why a payload was not applied: stable codes that answers to senders are chosen from."""

    UNREADABLE = "unreadable"  # not a message of its format at all (HL7 without an MSH, broken JSON)
    UNSUPPORTED_TYPE = "unsupported_type"  # no mapping is configured for its system/kind (or market)
    TOO_LARGE = "payload_too_large"  # over the size the hub accepts; the API's 413 code too
    ROUTE = "route"  # its site, sender or market is not in the site registry
    QUALIFY = "qualify"  # its site is not qualified for the therapy on that day (refused, replayable)
    MAPPING = "mapping"  # its mapping failed on it
    VALIDATION = "validation"  # mapped, but a value breaks a rule of the canonical model or the store
    CORRELATE = "correlate"  # no order matches it yet (replayed once the order is enrolled)
    IDENTITY = "identity"  # its identifiers contradict the order they name, or its sender's scope
    CONFLICT = "conflict"  # its event id was received before with other content (kept for review)
    UNAPPLIED = "unapplied"  # archived, but applying it failed; replay once the cause is fixed
    NOT_STORED = "not_stored"  # not even archived (a transient store failure): the sender must resend

    @property
    def resend_helps(self) -> bool:
        """Whether sending the same payload again may succeed without anyone fixing anything."""
        return self is Rejection.NOT_STORED

    @property
    def final(self) -> bool:
        """Whether the payload will never be applied as it is (the sender must change it)."""
        return self in _FINAL


_FINAL = frozenset({Rejection.UNREADABLE, Rejection.UNSUPPORTED_TYPE, Rejection.TOO_LARGE})

# The code a rejection raised at a quarantine stage carries unless it names its own (the stage
# values are `quarantine.Stage`'s, which sits above this module).
_BY_STAGE = {
    "receive": Rejection.UNREADABLE,
    "parse": Rejection.UNREADABLE,
    "route": Rejection.ROUTE,
    "qualify": Rejection.QUALIFY,
    "map": Rejection.MAPPING,
    "validate": Rejection.VALIDATION,
    "correlate": Rejection.CORRELATE,
    "identity": Rejection.IDENTITY,
    "conflict": Rejection.CONFLICT,
}


def rejection_of_stage(stage: str) -> Rejection:
    """The code of a rejection at this quarantine stage (a stage named nowhere above: unapplied)."""
    return _BY_STAGE.get(str(stage), Rejection.UNAPPLIED)


class PayloadRejected(CgthubError):
    """A payload that cannot become canonical events. The message must be PHI-free.

    `stage` is the quarantine stage it is kept at; `code` what its sender is told (by default the
    stage's code: a missing mapping passes `Rejection.UNSUPPORTED_TYPE` itself).
    """

    def __init__(
        self, stage: str, reason: str, details: dict[str, Any] | None = None, *, code: Rejection | None = None
    ) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.details = details or {}
        self.code = code or rejection_of_stage(stage)
