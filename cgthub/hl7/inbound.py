"""Turning raw HL7 bytes into archive items, and archive outcomes into ACKs: shared by the MLLP
listener and the file-drop ingest so both treat a message exactly alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sqlalchemy.orm import Session

from cgthub import archive, hl7v2, pipeline, quarantine, routing
from cgthub.archive import Inbound
from cgthub.errors import PayloadRejected, Rejection
from cgthub.hl7.ack import ANSWERS, AckHeader, answer
from cgthub.mapping import registry
from cgthub.model import CanonicalEvent
from cgthub.tables import utcnow

UNPARSEABLE = "unparseable"


@dataclass(frozen=True)
class Received:
    """One message as it came in, with what its MSH says (or why it could not be read)."""

    payload: bytes
    kind: str
    dedupe_key: str | None
    problem: str | None = None
    message: hl7v2.Message | None = None  # the parse that read the MSH: the mapping reads the rest of it

    @cached_property
    def header(self) -> AckHeader | None:
        """What its ACK echoes, from the parse that read the MSH; read when an ACK is first built
        (the file drop counts outcomes and builds none)."""
        return AckHeader.of(self.message) if self.message is not None else None

    def item(self, channel: str, received_at: datetime) -> Inbound:
        return Inbound("hl7", self.kind, channel, self.payload, received_at, self.dedupe_key, "x-application/hl7-v2")


# The most segments the hub reads in one message: its messages carry tens. More is refused before
# the parse (a megabyte of 4-byte segments took the listener about a second a frame, every other
# sender waiting behind it).
MAX_SEGMENTS = 10_000


def read(payload: bytes) -> Received:
    """MSH only (type, sending facility, control id): the mapping reads the rest, if it is applied.

    A message with a NUL byte (HL7 v2 has none; PostgreSQL's text columns refuse it, so it could
    not even be archived under its MSH values) or more than `MAX_SEGMENTS` segments is refused as
    unreadable, before the parse: it is archived and quarantined by its checksum alone."""
    nul = payload.find(b"\x00")
    if nul >= 0:
        return Received(payload, UNPARSEABLE, None, f"byte {nul} is a NUL, which HL7 v2 does not allow")
    if max(payload.count(b"\r"), payload.count(b"\n")) > MAX_SEGMENTS:
        return Received(payload, UNPARSEABLE, None, f"more than {MAX_SEGMENTS} segments")
    try:
        message = hl7v2.parse(payload)
        msh = message.header  # the MSH's fields cut once, for all of these and the ACK's
        kind = msh.message_type
        if "^" not in kind:
            raise hl7v2.HL7ParseError("MSH-9 does not carry a message type and trigger event")
        control = msh.control_id
        dedupe = f"{msh.sending_facility}:{control}" if control else None
        return Received(payload, kind, dedupe, message=message)
    except hl7v2.HL7ParseError as exc:
        return Received(payload, UNPARSEABLE, None, _unquoted(str(exc)))


# The parser's reasons that quote the message itself: a bad segment's first characters (a broken
# line may begin inside a patient's name) and the characters after 'MSH'. Said without them, as
# the reason reaches the ACK, the quarantine and the log.
_QUOTING = (
    (re.compile(r".* is not a segment name", re.S), "a segment does not begin with a segment name"),
    (
        re.compile(r"MSH-1/MSH-2 encoding characters .* are not five distinct separators.*", re.S),
        "MSH-1/MSH-2 are not five distinct separators (expected '|^~\\&')",
    ),
)


def _unquoted(problem: str) -> str:
    for pattern, instead in _QUOTING:
        if pattern.fullmatch(problem):
            return instead
    return problem


class _Refuse:
    """The mapper for a message that could not be read: quarantine it at the parse stage."""

    mapping_id, version = "hl7/unparseable", "-"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        raise PayloadRejected(quarantine.Stage.PARSE, f"not an HL7 v2 message we can read: {self.reason}")


class Answer:
    """A message's outcome, and its ACK, built on first use: the file drop counts outcomes and
    answers no one, so it builds none."""

    __slots__ = ("_ack", "_message", "_reason", "rejection")

    def __init__(self, message: Received, rejection: Rejection | None = None, reason: str = "") -> None:
        self._message, self.rejection, self._reason = message, rejection, reason
        self._ack: bytes | None = None

    @property
    def ack(self) -> bytes:
        if self._ack is None:
            message = self._message
            self._ack = answer(message.payload, self.rejection, self._reason, header=message.header)
        return self._ack

    @property
    def code(self) -> str:
        """MSA-1: AA, AE or AR."""
        return "AA" if self.rejection is None else ANSWERS[self.rejection][0]


def apply(session: Session, messages: Sequence[Received], channel: str) -> list[bytes]:
    """Archive, map and apply a batch in the caller's transaction; the ACK for each message."""
    return [a.ack for a in apply_answers(session, messages, channel)]


def apply_answers(session: Session, messages: Sequence[Received], channel: str) -> list[Answer]:
    """`apply`, with each ACK's outcome beside it."""
    now = utcnow()
    problems = {id(m.payload): m.problem for m in messages if m.problem}
    parsed = {id(m.payload): m.message for m in messages if m.message is not None}

    def mapper_for(item: Inbound) -> pipeline.Mapper | None:
        if item.kind == UNPARSEABLE:
            return _Refuse(problems.get(id(item.payload), "unreadable"))
        # The sending facility's site decides the market (its pins, code maps and residency), and
        # bounds which orders the message may touch; the parse that read the MSH is reused.
        return routing.mapper(session, "hl7", item.kind, parsed=parsed.get(id(item.payload)))

    results = pipeline.ingest_batch(session, [m.item(channel, now) for m in messages], mapper_for)
    return [_answer(m, r) for m, r in zip(messages, results, strict=True)]


def archive_only(session: Session, messages: Sequence[Received], channel: str) -> list[bytes]:
    """Archive a batch (status `received`, applied later by the HL7 inbox DAG), and answer now what
    will never be applied: an unreadable message or a type no mapping handles gets AR, and is
    archived and quarantined with the reason. A message that fails the batch fails only itself."""
    now = utcnow()
    handled: dict[str, bool] = {}  # one look per kind per batch

    def run(part: Sequence[Received]) -> list[bytes]:
        stored = archive.store_many(session, [m.item(channel, now) for m in part])
        return [_archived_ack(session, m, saved, handled) for m, saved in zip(part, stored, strict=True)]

    def poisoned(message: Received, exc: Exception) -> bytes:
        reason = f"not stored, please resend: {pipeline.failure_text(exc)}"
        return answer(message.payload, Rejection.NOT_STORED, reason, header=message.header)

    def hold(part: Sequence[Received]) -> None:
        archive.hold(session, [m.item(channel, now) for m in part])

    return pipeline.isolated(session, messages, run, poisoned, hold=hold)


def _archived_ack(session: Session, message: Received, saved: archive.Archived, handled: dict[str, bool]) -> bytes:
    """The ACK of an archived message under archive-only, quarantining one that cannot be applied."""
    if message.problem:
        reason = f"not an HL7 v2 message we can read: {message.problem}"
        if not saved.duplicate:
            _quarantine(session, saved.raw_id, quarantine.Stage.PARSE, UNPARSEABLE, reason)
        return answer(message.payload, Rejection.UNREADABLE, reason)
    if message.kind not in handled:
        handled[message.kind] = bool(registry.versions("hl7", message.kind))
    if not handled[message.kind]:
        if not saved.duplicate:
            reason = f"no mapping is configured for hl7/{message.kind}"
            _quarantine(session, saved.raw_id, quarantine.Stage.MAP, message.kind, reason)
        return answer(message.payload, Rejection.UNSUPPORTED_TYPE, _unsupported(message), header=message.header)
    return answer(message.payload, None, header=message.header)


def _quarantine(session: Session, raw_id: int, stage: quarantine.Stage, kind: str, reason: str) -> None:
    quarantine.put(session, stage=stage, reason=reason, system="hl7", kind=kind, raw_id=raw_id)
    archive.mark(session, raw_id, "quarantined")


def _answer(message: Received, result: pipeline.IngestResult) -> Answer:
    """The outcome of an applied message, from the rejection code its result carries."""
    if message.problem:
        return Answer(message, Rejection.UNREADABLE, f"not an HL7 v2 message we can read: {message.problem}")
    if result.duplicate_payload or result.code is None:
        return Answer(message)
    if result.code is Rejection.NOT_STORED:
        reason = f"not stored, please resend: {result.not_stored}"
    elif result.code is Rejection.UNSUPPORTED_TYPE:
        reason = _unsupported(message)
    else:
        reason = result.reasons[0] if result.reasons else "quarantined"
    return Answer(message, result.code, reason)


def _unsupported(message: Received) -> str:
    return f"unsupported message type {message.kind}"
