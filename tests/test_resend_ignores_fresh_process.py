"""Whether a resend is a duplicate does not depend on what the judging process compiled before.

SIU v2 declares `occurred_at` (MSH-7) transmission metadata (`resend_ignores`). The ledger reads that
rule from the mapping version named by the arriving event's provenance: from its mapping file, read
when first needed, not from a list filled as mappings compile in this process. A process that judges
an event without having compiled its mapping (the API deciding a quarantined event, a replay, a fresh
inbox worker) judged a resent appointment with a new MSH-7 a conflicting version (AE 205, held).

Here a fresh Python process appends events the hub made earlier (an unchanged appointment resent with
a new MSH-7 and control id, and the same appointment in another room) without importing the mapping
package at all, on SQLite and PostgreSQL: the resend is a duplicate, the other room still a conflict
naming both fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cgthub import archive, conflicts, ledger, routing
from cgthub.hl7 import inbound
from cgthub.mapping import registry
from cgthub.store import session_scope
from cgthub.tables import utcnow
from tests.factories import enrolment
from tests.test_hl7_listener import ORM, SIU
from tests.test_siu_resend import _other_room, _resent

ROOT = Path(__file__).resolve().parent.parent

# What the fresh process runs: the events on stdin appended as the API or a replay appends them.
_JUDGE = """
import json, sys
from cgthub import conflicts, ledger
from cgthub.model import CanonicalEvent
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry

out = {}
for name, events in json.load(sys.stdin).items():
    with session_scope() as s:
        results = ledger.append_many(s, [CanonicalEvent.model_validate(e) for e in events])
        held = [s.get(QuarantineEntry, r.quarantine_id) for r in results if r.quarantine_id]
        out[name] = {
            "statuses": [r.status for r in results],
            "fields": [h.details["fields"] for h in held],
        }
out["mapping imported"] = sorted(m for m in sys.modules if m.startswith("cgthub.mapping"))
out["compiled here"] = len(conflicts._RESEND_IGNORES)
print(json.dumps(out))
"""


def _made(url: str, messages: dict[str, bytes]) -> dict[str, list[dict[str, object]]]:
    """Each message archived and mapped as live ingest maps it (its site's market), not applied."""
    made: dict[str, list[dict[str, object]]] = {}
    with session_scope(url) as s:
        for name, message in messages.items():
            received = inbound.read(message)
            saved = archive.store(s, system="hl7", kind=received.kind, channel="file", payload=message)
            mapper = routing.mapper(s, "hl7", received.kind, parsed=received.message)
            assert mapper is not None
            events = mapper.map(message, raw_id=saved.raw_id, checksum=saved.checksum, received_at=utcnow())
            made[name] = [e.to_json_dict() for e in events]
    return made


def test_a_process_that_never_compiled_the_mapping_takes_a_resend_for_a_duplicate(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with session_scope(db_url) as s:
        answers = inbound.apply_answers(s, [inbound.read(m) for m in (ORM, SIU)], "file")
    assert [a.code for a in answers] == ["AA", "AA"]
    made = _made(
        db_url,
        {
            "resent": _resent(SIU, at="20260306070000", control="BOS0000951"),
            "other room": _resent(_other_room(SIU), at="20260306070500", control="BOS0000952"),
        },
    )
    assert made["resent"] and made["other room"]
    judged = subprocess.run(
        [sys.executable, "-c", _JUDGE], input=json.dumps(made), capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert judged.returncode == 0, judged.stderr[-2000:]
    out = json.loads(judged.stdout.strip().splitlines()[-1])
    assert out["mapping imported"] == [] and out["compiled here"] == 0  # nothing compiled, nothing declared
    assert set(out["resent"]["statuses"]) == {"duplicate"}, out
    assert "quarantined" in out["other room"]["statuses"], out
    assert out["other room"]["fields"] == [["attributes.location", "occurred_at"]]


def test_the_rule_is_read_again_after_the_caches_are_cleared_and_nothing_is_compiled():
    """In this process too: with the compiled mappings and the declarations forgotten, SIU v2's rule
    comes from its file; a mapping without the key (the CRM's) ignores nothing; a made-up or
    path-like mapping id names no file and ignores nothing."""
    registry.clear_cache()
    conflicts._RESEND_IGNORES.clear()
    assert conflicts.resend_ignores({"mapping_id": "hl7/SIU^S12", "mapping_version": "v2"}) == ("occurred_at",)
    assert conflicts.resend_ignores({"mapping_id": "hl7/SIU^S12", "mapping_version": "v1"}) == ()
    assert conflicts.resend_ignores({"mapping_id": "crm/enrollment", "mapping_version": "v2"}) == ()
    assert conflicts.resend_ignores({"mapping_id": "hl7/../../hl7/SIU_S12", "mapping_version": "v2"}) == ()
    assert conflicts.resend_ignores({"mapping_id": "hl7/SIU^S12", "mapping_version": "v2/../v2"}) == ()
    assert conflicts.resend_ignores(None) == ()
    assert conflicts._RESEND_IGNORES == {}
