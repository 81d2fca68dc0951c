"""`lifecycle.effective_events` (each event once, the superseded left out, in processing order),
rewritten to skip `event.key`'s call and the superseded set's walk when nothing supersedes: it must
choose exactly what the reference below chooses, in the same order, for duplicates with other
content, corrections of corrections, and a correction that names another system's event."""

from __future__ import annotations

import json
import random
from datetime import timedelta

from cgthub.lifecycle import _order_key, effective_events
from cgthub.model import CanonicalEvent, EventType, SourceSystem
from tests.factories import T0, event, happy_path


def _reference(events: list[CanonicalEvent]) -> list[CanonicalEvent]:
    """The function as it was written before (1 December's reading of the rule)."""
    unique: dict[tuple[str, str], CanonicalEvent] = {}
    for one in events:
        current = unique.get(one.key)
        content = json.dumps(one.to_json_dict(), sort_keys=True)
        if current is None or content < json.dumps(current.to_json_dict(), sort_keys=True):
            unique[one.key] = one
    superseded = {(e.source_system.value, e.supersedes) for e in unique.values() if e.supersedes}
    alive = [e for key, e in unique.items() if key not in superseded]
    return sorted(alive, key=_order_key)


def _cases() -> list[list[CanonicalEvent]]:
    history = happy_path(1)
    wrong = event(EventType.APHERESIS_COLLECTED, 1, at=T0 + timedelta(days=7), system=SourceSystem.HL7)
    fix = event(
        EventType.APHERESIS_SCHEDULED,
        1,
        at=T0 + timedelta(days=2),
        system=SourceSystem.HL7,
        eid=f"{wrong.source_event_id}@v2",
        supersedes=wrong.source_event_id,
    )
    fix_of_fix = fix.model_copy(
        update={"source_event_id": f"{wrong.source_event_id}@v3", "supersedes": f"{wrong.source_event_id}@v2"}
    )
    other_system = fix.model_copy(update={"source_system": SourceSystem.CRM, "source_event_id": "crm-fix"})
    resent = history[2].model_copy(update={"reason": "resent with other content"})  # same key, other content
    pool = [*history, wrong, fix, fix_of_fix, other_system, resent, history[0], history[3]]
    shuffler = random.Random(21)
    cases = [history, [], [history[0]], [wrong, fix], [fix, wrong, fix_of_fix], pool]
    for _ in range(30):
        cases.append(shuffler.sample(pool, shuffler.randint(1, len(pool))))
    return cases


def test_the_same_events_in_the_same_order_as_the_reference():
    for case in _cases():
        got, expected = effective_events(case), _reference(case)
        assert [id(e) for e in got] == [id(e) for e in expected], [e.source_event_id for e in case]


def test_a_superseded_event_and_a_duplicate_are_left_out():
    history = happy_path(1)
    wrong = event(EventType.APHERESIS_COLLECTED, 1, at=T0 + timedelta(days=7), system=SourceSystem.HL7)
    fix = event(
        EventType.APHERESIS_SCHEDULED, 1, at=T0, system=SourceSystem.HL7, eid="fix", supersedes=wrong.source_event_id
    )
    kept = effective_events([*history[:2], history[0], wrong, fix])
    assert [e.source_event_id for e in kept].count(history[0].source_event_id) == 1
    assert wrong not in kept and fix in kept
