"""A known event id with other content: never taken for a duplicate, kept for an operator to decide.

The ledger is idempotent on (source_system, source_event_id). A partner that sends an event id it
sent before means the same event (a resend: a plain duplicate) unless the content differs: a
hospital that reuses a control id for another order, a CRM record changed under the same event id.
The ledger's duplicate check reads the body of each entry it finds (in the same batched lookup) and
compares the business content, everything but arrival time and provenance. The first version stays
applied; the new one is quarantined at stage `conflict` with the differing field names (never their
values), an `event_conflict` alert is raised, and the sender is told (HL7: AE, ERR-3 205).

An operator resolves the entry with the usual signed decisions: retry applies it as a correction
(`<id>@c<entry>` superseding the version in force, as a mapping replay's corrections do), discard
closes it. Once decided, the same content arriving again is a duplicate. Content is compared only
between events made by the same mapping version: across a version change the mapping replay
(`cgthub mapping replay`) is what compares and corrects. The hub's own events are not compared
(their ids are idempotency keys for hub decisions, whose details may be worked out again).

A mapping version that changed its id form declares the former one (`former_id` in its spec): an
event the ledger holds under its former id, from the same sender (a payload the archive keys alike;
for HL7, the same sending facility), is that event, compared across the two versions (a resend or a
conflict as above).

A mapping may name the fields it fills from transmission metadata (`resend_ignores` in its spec): an
appointment's `occurred_at` is its message's creation time (SIU carries no other), which an interface
engine stamps anew on every resend. Versions that differ only there are the same event, a duplicate
(the first version stays, its time too); when other fields differ as well, the conflict names every
differing field, the ignored ones included, and its content digest leaves them out, so the same
change resent at another time is counted on one entry and, once decided, stays decided. The rule is
the one the arriving event's mapping version declares in its file, found by the mapping id and
version its provenance names and read when first needed, so a process that never compiled that
mapping (the API deciding, a replay, a fresh inbox worker) judges alike. A mapping compiled from a
file outside the mappings folder declares it when compiled (`declare_resend_ignores`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import yaml
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cgthub import alerts, quarantine, sites
from cgthub.archive import fitted
from cgthub.config_file import parse
from cgthub.errors import CgthubError
from cgthub.model import CanonicalEvent, SourceSystem
from cgthub.settings import get_settings
from cgthub.tables import LedgerEntry, QuarantineEntry, RawMessage, utcnow

log = logging.getLogger(__name__)

_PROVENANCE = ("received_at", "provenance")  # what a resend may change without being another event
_SUBJECT_LIMIT = 300
_EVENT_ID_LIMIT = 200
_DECIDED = (quarantine.QuarantineStatus.REPLAYED.value, quarantine.QuarantineStatus.DISCARDED.value)
_RAW_IDS_KEPT = 50  # the payloads that carried one conflicting version, as far as the entry lists them
CORRECTION_MARK = "@c"
# (mapping id, mapping version) -> the dotted canonical fields that version fills from transmission
# metadata, as its compiled mapping declared them (`declare_resend_ignores`): for a mapping compiled
# from a file outside the mappings folder; one inside it is read from its file.
_RESEND_IGNORES: dict[tuple[str, str], tuple[str, ...]] = {}
# A mapping id's parts (`hl7/SIU^S12`) and version (`v2`), as a file path may be made of them: an
# event's provenance is stored data, so no `..` or separator in it reaches the file system.
_MAPPING_PART = re.compile(r"[A-Za-z0-9_^-]+")
_MAPPING_VERSION = re.compile(r"v?([0-9]{1,6})")


def declare_resend_ignores(mapping_id: str, mapping_version: str, fields: list[str] | tuple[str, ...]) -> None:
    """Record the `resend_ignores` of one mapping version (called when it is compiled)."""
    _RESEND_IGNORES[(mapping_id, str(mapping_version))] = tuple(fields)


def resend_ignores(provenance: dict[str, Any] | None) -> tuple[str, ...]:
    """The fields the mapping version named by an event's provenance says a resend may change: what
    its file in the mappings folder declares, whether or not this process compiled it."""
    made_by = provenance or {}
    mapping_id, version = str(made_by.get("mapping_id")), str(made_by.get("mapping_version"))
    declared = _declared_in_file(get_settings().mappings_dir, mapping_id, version)
    return declared if declared is not None else _RESEND_IGNORES.get((mapping_id, version), ())


@lru_cache(maxsize=256)
def _declared_in_file(root: Path, mapping_id: str, version: str) -> tuple[str, ...] | None:
    """The `resend_ignores` of the file of `mapping_id` at `version` under `root`
    (`<system>/<kind>/v<N>.yaml`, an HL7 kind's `^` as `_`), () when it declares none; None when
    there is no such file. A version's file does not change once events are made by it; compiling
    it checks that each name is a field its rules fill."""
    system, _, kind = mapping_id.partition("/")
    number = _MAPPING_VERSION.fullmatch(version)
    if not (_MAPPING_PART.fullmatch(system) and _MAPPING_PART.fullmatch(kind) and number):
        return None
    path = root / system / kind.replace("^", "_") / f"v{int(number.group(1))}.yaml"
    try:
        _node, data = parse(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    fields = data.get("resend_ignores") if isinstance(data, dict) else None
    if not isinstance(fields, list):
        return ()
    return tuple(field for field in fields if isinstance(field, str))


def clear_cache() -> None:
    """Read the mapping files' declarations again (`mapping.registry.clear_cache` calls it)."""
    _declared_in_file.cache_clear()


def _ignored(name: str, ignores: tuple[str, ...]) -> bool:
    return any(name == field or name.startswith(f"{field}.") for field in ignores)


def content(data: dict[str, Any]) -> dict[str, Any]:
    """An event's JSON without arrival time and provenance: what must match for a resend."""
    return {k: v for k, v in data.items() if k not in _PROVENANCE}


def digest(data: dict[str, Any], *, ignoring: bool = True) -> str:
    """SHA-256 of an event's content (its canonical JSON without arrival time, provenance and, unless
    `ignoring` is False, the fields its mapping version declares transmission metadata)."""
    kept = content(data)
    ignores = resend_ignores(data.get("provenance")) if ignoring else ()
    if ignores:
        kept = _without(kept, ignores)
    return hashlib.sha256(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _without(data: dict[str, Any], ignores: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if _ignored(name, ignores):
            continue
        out[key] = _without(value, ignores, name) if isinstance(value, dict) else value
    return out


def differing_fields(prior: str | CanonicalEvent | None, event: CanonicalEvent, *, former: bool = False) -> list[str]:
    """The dotted names of the fields in which `event` differs from the version the ledger holds
    (`prior`: its stored body, or the event appended earlier in the batch); [] for a plain duplicate.

    Called only for an event whose id the ledger already holds, so the hot path of new events pays
    nothing. Not compared: the hub's own events, and versions made by different mapping versions.
    Versions that differ only in fields `event`'s mapping version declares transmission metadata
    (`resend_ignores`) are the same event; otherwise every differing field is named."""
    if prior is None or prior is event or event.source_system is SourceSystem.HUB:
        return []
    old = orjson.loads(prior) if isinstance(prior, str) else prior.to_json_dict()
    new = event.to_json_dict()
    made_by = old.get("provenance") or {}
    mapping = event.provenance
    if made_by.get("mapping_id") != mapping.mapping_id or (
        not former and str(made_by.get("mapping_version")) != str(mapping.mapping_version)
    ):
        return []
    old, new = content(old), content(new)
    if former:  # found by the id the mapping's previous version gave it: the ids differ by design
        old.pop("source_event_id", None)
        new.pop("source_event_id", None)
    if old == new:
        return []
    flat_old, flat_new = _flat(old), _flat(new)
    fields = sorted(name for name in flat_old.keys() | flat_new.keys() if flat_old.get(name) != flat_new.get(name))
    ignores = resend_ignores({"mapping_id": mapping.mapping_id, "mapping_version": mapping.mapping_version})
    if ignores and all(_ignored(name, ignores) for name in fields):
        return []  # a resend stamped anew by its sender: the first version stays, its time too
    return fields


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def same_sender(session: Session, prior: str | CanonicalEvent | None, event: CanonicalEvent) -> bool:
    """Whether the version the ledger holds under `event`'s former id came from `event`'s sender: a
    payload the archive keys alike (HL7: the same `<MSH-4>:<MSH-10>`) or, for HL7, one of the same
    sending facility (MSH-4), so one site's old id never stands for another site's event. An
    appointment's former id (SCH-1) comes back in the sender's later messages under other control
    ids. Asked only when a former id is found, never for a new event."""
    if prior is None or prior is event:
        return False
    old = orjson.loads(prior) if isinstance(prior, str) else prior.to_json_dict()
    raw_ids = {(old.get("provenance") or {}).get("raw_id"), event.provenance.raw_id}
    if None in raw_ids:
        return False
    if len(raw_ids) == 1:
        return True
    keys = session.scalars(select(RawMessage.dedupe_key).where(RawMessage.id.in_(raw_ids))).all()
    if len(keys) == 2 and keys[0] == keys[1]:
        return True
    if event.source_system is not SourceSystem.HL7:
        return False
    held = prior if isinstance(prior, CanonicalEvent) else CanonicalEvent.model_validate(old)
    before, now = sites.sender_of(session, held), sites.sender_of(session, event)
    return before is not None and now is not None and before.facility == now.facility


def subject(event: CanonicalEvent, content_digest: str) -> str:
    """The quarantine subject of one conflicting version: the event and its content's digest, so
    a decision about this version is found again when the same content comes back."""
    return fitted(f"{event.source_system.value}:{event.source_event_id}~{content_digest[:16]}", _SUBJECT_LIMIT)


def refuse(
    session: Session,
    event: CanonicalEvent,
    fields: list[str],
    *,
    order_id: str | None,
    applied_entry_id: int | None,
) -> tuple[int, str] | None:
    """Quarantine `event` at stage `conflict` and raise the alert; (entry id, reason for its sender).

    One entry per conflicting version: the same content again (in another payload too) counts on
    it. None when an operator already decided about this very content (retried it as a correction
    or discarded it): then it is a duplicate of what was decided. An event found under its former id
    also finds the version held or decided when the mapping's previous version made it."""
    data = event.to_json_dict()
    content_digest = digest(data)
    about = subject(event, content_digest)
    versions = [event]
    if event.former_id:
        versions.append(event.model_copy(update={"source_event_id": event.former_id}))
    # Also the whole content's digest: a version held before its mapping declared `resend_ignores`,
    # or under a previous mapping version that declared none, was filed under that one.
    subjects = list(
        dict.fromkeys(subject(v, digest(v.to_json_dict(), ignoring=i)) for v in versions for i in (True, False))
    )
    known = session.scalars(
        select(QuarantineEntry)
        .where(QuarantineEntry.subject.in_(subjects), QuarantineEntry.stage == quarantine.Stage.CONFLICT.value)
        .order_by(QuarantineEntry.id)
    ).all()
    if any(e.status in _DECIDED for e in known):
        return None
    raw_id = event.provenance.raw_id
    held = next((e for e in known if e.status == quarantine.QuarantineStatus.OPEN.value), None)
    if held is not None:  # this version is waiting already (it came in another payload too): count it
        held.occurrences += 1
        held.last_seen = utcnow()
        carried = list((held.details or {}).get("raw_ids") or [])
        if raw_id is not None and raw_id not in carried and len(carried) < _RAW_IDS_KEPT:
            held.details = {**held.details, "raw_ids": [*carried, raw_id]}
        return held.id, f"{held.reason} (quarantine #{held.id})"
    names = ", ".join(fields)
    reason = (
        f"event {event.source_event_id} was received before with different content (fields: {names}); "
        "the first version is applied; review, then retry to apply this one as a correction, or discard it"
    )
    entry = quarantine.put(
        session,
        stage=quarantine.Stage.CONFLICT,
        reason=reason,
        system=event.source_system.value,
        kind=event.event_type.value,
        raw_id=raw_id,
        order_id=order_id,
        subject=about,
        details={
            "event": data,
            "raw_ids": [raw_id] if raw_id is not None else [],
            "fields": fields,
            "content_digest": content_digest,
            "applied_entry_id": applied_entry_id,
            **({"former_id": event.former_id} if event.former_id else {}),  # what a retry supersedes, too
        },
    )
    alerts.event_conflict(
        session,
        system=event.source_system.value,
        quarantine_id=entry.id,
        order_id=order_id,
        fields=fields,
        raw_id=raw_id,
    )
    log.warning(
        "quarantined %s event (quarantine #%s): a known event id with other content (fields: %s)",
        event.source_system.value,
        entry.id,
        names,
    )
    return entry.id, f"{reason} (quarantine #{entry.id})"


class CorrectionRefused(CgthubError, ValueError):
    """A conflict entry that cannot become a correction (no event kept, or its id leaves no room)."""


def correction(session: Session, entry: QuarantineEntry) -> CanonicalEvent:
    """The event a `conflict` entry holds, as a correction of the version in force: id
    `<id>@c<entry>`, superseding the latest correction of the id, or the id itself."""
    data = (entry.details or {}).get("event")
    if not data:
        raise CorrectionRefused(f"quarantine entry {entry.id} keeps no event to apply")
    event = CanonicalEvent.model_validate(data)
    base = event.source_event_id
    # The version in force may be held under the id the mapping's previous version gave it.
    former = (entry.details or {}).get("former_id")
    ids = [base, former] if former else [base]
    corrected = f"{base}{CORRECTION_MARK}{entry.id}"
    if len(corrected) > _EVENT_ID_LIMIT:
        raise CorrectionRefused(
            f"event id of quarantine entry {entry.id} is too long to take a correction mark; discard it "
            "and have the partner send the change under a new id"
        )
    in_force = session.scalar(
        select(LedgerEntry.source_event_id)
        .where(
            LedgerEntry.source_system == event.source_system.value,
            or_(
                *(LedgerEntry.source_event_id == i for i in ids),
                *(LedgerEntry.source_event_id.startswith(i + CORRECTION_MARK, autoescape=True) for i in ids),
            ),
        )
        .order_by(LedgerEntry.id.desc())
        .limit(1)
    )
    return event.model_copy(update={"source_event_id": corrected, "supersedes": in_force or base})
