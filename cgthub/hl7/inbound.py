"""Turning raw HL7 bytes into archive items, and archive outcomes into ACKs: shared by the MLLP
listener and the file-drop ingest so both treat a message exactly alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from cgthub import archive, hl7v2, pipeline, quarantine
from cgthub.archive import Inbound
from cgthub.hl7.ack import AckHeader, build_ack
from cgthub.mapping import get_mapper
from cgthub.mapping.compiler import CompiledMapping
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
    header: AckHeader | None = None  # what its ACK echoes, read once on arrival
    message: hl7v2.Message | None = None  # the parse that read the MSH: the mapping reads the rest of it

    def item(self, channel: str, received_at: datetime) -> Inbound:
        return Inbound("hl7", self.kind, channel, self.payload, received_at, self.dedupe_key, "x-application/hl7-v2")


def read(payload: bytes) -> Received:
    """MSH only (type, sending facility, control id): the mapping reads the rest, if it is applied."""
    try:
        message = hl7v2.parse(payload)
        msh = message.header  # the MSH's fields cut once, for all of these and the ACK's
        kind = msh.message_type
        if "^" not in kind:
            raise hl7v2.HL7ParseError("MSH-9 does not carry a message type and trigger event")
        control = msh.control_id
        dedupe = f"{msh.sending_facility}:{control}" if control else None
        return Received(payload, kind, dedupe, header=AckHeader.of(message), message=message)
    except hl7v2.HL7ParseError as exc:
        return Received(payload, UNPARSEABLE, None, str(exc))


class _ParsedOnce:
    """A compiled mapping handed the message `read` already parsed, so it is not parsed again."""

    def __init__(self, mapper: CompiledMapping, message: hl7v2.Message) -> None:
        self.mapper, self.message = mapper, message
        self.mapping_id, self.version = mapper.mapping_id, mapper.version

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        return self.mapper.map(payload, raw_id=raw_id, checksum=checksum, received_at=received_at, parsed=self.message)


class _Refuse:
    """The mapper for a message that could not be read: quarantine it at the parse stage."""

    mapping_id, version = "hl7/unparseable", "-"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        raise pipeline.PayloadRejected(quarantine.Stage.PARSE, f"not an HL7 v2 message we can read: {self.reason}")


def apply(session: Session, messages: Sequence[Received], channel: str) -> list[bytes]:
    """Archive, map and apply a batch in the caller's transaction; the ACK for each message."""
    now = utcnow()
    problems = {id(m.payload): m.problem for m in messages if m.problem}
    parsed = {id(m.payload): m.message for m in messages if m.message is not None}

    mappers: dict[str, pipeline.Mapper | None] = {}  # one lookup per kind per batch

    def mapper_for(item: Inbound) -> pipeline.Mapper | None:
        if item.kind == UNPARSEABLE:
            return _Refuse(problems.get(id(item.payload), "unreadable"))
        if item.kind not in mappers:
            mappers[item.kind] = get_mapper("hl7", item.kind)
        mapper, message = mappers[item.kind], parsed.get(id(item.payload))
        if isinstance(mapper, CompiledMapping) and message is not None:
            return _ParsedOnce(mapper, message)
        return mapper

    results = pipeline.ingest_batch(session, [m.item(channel, now) for m in messages], mapper_for)
    return [_ack(m, r) for m, r in zip(messages, results, strict=True)]


def archive_only(session: Session, messages: Sequence[Received], channel: str) -> list[bytes]:
    """Archive a batch (status `received`, applied later by the HL7 inbox DAG); quarantine unreadable ones."""
    now = utcnow()
    stored = archive.store_many(session, [m.item(channel, now) for m in messages])
    acks = []
    for message, saved in zip(messages, stored, strict=True):
        if message.problem:
            if not saved.duplicate:
                reason = f"not an HL7 v2 message we can read: {message.problem}"
                quarantine.put(
                    session,
                    stage=quarantine.Stage.PARSE,
                    reason=reason,
                    system="hl7",
                    kind=UNPARSEABLE,
                    raw_id=saved.raw_id,
                )
                archive.mark(session, saved.raw_id, "quarantined")
            acks.append(build_ack(message.payload, "AR", f"not an HL7 v2 message we can read: {message.problem}"))
        else:
            acks.append(build_ack(message.payload, "AA", header=message.header))
    return acks


def _ack(message: Received, result: pipeline.IngestResult) -> bytes:
    if message.problem:
        return build_ack(message.payload, "AR", f"not an HL7 v2 message we can read: {message.problem}")
    if result.duplicate_payload:
        return build_ack(message.payload, "AA", header=message.header)
    if result.rejected and any(r.startswith("no mapping is configured") for r in result.reasons):
        return build_ack(message.payload, "AR", f"unsupported message type {message.kind}", header=message.header)
    if result.quarantined:
        return build_ack(
            message.payload, "AE", result.reasons[0] if result.reasons else "quarantined", header=message.header
        )
    return build_ack(message.payload, "AA", header=message.header)
