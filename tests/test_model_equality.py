"""The canonical models' own `==` (`model._Model.__eq__`, a shortcut for two of one class) answers as
pydantic's does, for every pair of the sample life cycle's events and of their parts, and keeps
them hashable as pydantic's frozen models are; the canonical body it is used for stays as it was
(tests/test_canonical_body_pinned.py pins the bodies and the entry hashes)."""

from __future__ import annotations

import itertools

from pydantic import BaseModel

from cgthub.model import CanonicalEvent, ExternalRefs, PatientRef
from tests.factories import happy_path


def _parts(event: CanonicalEvent) -> list[object]:
    return [
        event,
        event.refs,
        event.patient,
        event.order,
        event.material,
        event.shipment,
        event.custody,
        event.provenance,
        event.shipment.temperature if event.shipment else None,
    ]


def test_equality_answers_as_pydantics_for_every_pair():
    events = happy_path(1) + happy_path(2)
    values = [part for e in events for part in _parts(e)] + [ExternalRefs(), None, 1, "x"]
    copies = [e.model_copy() for e in events]  # equal, not the same objects
    values += copies
    compared = 0
    for a, b in itertools.product(values, repeat=2):
        if not isinstance(a, BaseModel):
            continue
        expected = BaseModel.__eq__(a, b)
        expected = (a is b) if expected is NotImplemented else expected
        assert (a == b) is expected, (type(a).__name__, type(b).__name__)
        assert (a != b) is (not expected)
        compared += 1
    assert compared > 1_000
    assert all(copy == e and copy is not e for copy, e in zip(copies, events, strict=True))
    assert events[0] != events[1] and events[0].refs != ExternalRefs()


def test_equal_models_hash_alike_and_unhashable_ones_stay_so():
    one, other = ExternalRefs(crm_order_id="CRM-1"), ExternalRefs(crm_order_id="CRM-1")
    assert one == other and hash(one) == hash(other) and len({one, other}) == 1
    assert ExternalRefs(crm_order_id="CRM-2") not in {one}
    try:
        hash(PatientRef(pseudonyms={}))  # a dict field: pydantic's frozen hash refuses it, as before
    except TypeError:
        pass
    else:
        raise AssertionError("a model holding a dict hashed")
