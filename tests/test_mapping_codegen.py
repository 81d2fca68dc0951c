"""The generated fast path of a mapping gives exactly what the reference path gives.

Same events (equal, same JSON, same fields set at every level) or the same rejection, on every
shipped fixture in every market, and on payloads mutated at random (wrong types, blanks, unknown
codes, malformed identifiers), where the fast path must hand the decision to the reference path.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cgthub.devtools.samples import json_record
from cgthub.mapping import codegen, fixtures, registry
from cgthub.pipeline import PayloadRejected
from tests.factories import MAPPED_VALUES

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
BENCH_MAPPING = Path(__file__).parents[1] / "bench" / "mappings" / "crm" / "order_record" / "v1.yaml"
MAPPING_FILES = [f.path for f in registry.discover()] + [BENCH_MAPPING]
MARKETS = [None, "US", "DE"]


_PAIRS: dict[tuple[Path, str | None], tuple[Any, Any]] = {}


def _pair(path: Path, market: str | None, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The mapping compiled with its fast path and without (compiled once per test session)."""
    if (path, market) not in _PAIRS:
        with monkeypatch.context() as patch:
            patch.delenv("CGTHUB_MAPPING_FASTPATH", raising=False)
            fast = registry.compile_file(path, market)
            patch.setenv("CGTHUB_MAPPING_FASTPATH", "0")
            reference = registry.compile_file(path, market)
        assert all(e.fast is None for e in reference.events)
        assert all(type(e.fast) is types.FunctionType for e in fast.events if e.fast is not None)
        _PAIRS[path, market] = fast, reference
    return _PAIRS[path, market]


def _fields_set(model: BaseModel) -> Any:
    """Which fields were given, at every level (what `exclude_unset` dumps would see)."""
    nested = {name: _fields_set(value) for name, value in model.__dict__.items() if isinstance(value, BaseModel)}
    return sorted(model.model_fields_set), nested


def _outcome(mapper: Any, payload: bytes) -> Any:
    try:
        events = mapper.map_by_rule(payload, raw_id=7, checksum="c" * 64, received_at=NOW)
    except PayloadRejected as exc:
        return ("rejected", exc.stage, exc.reason, exc.details)
    return [(rule, event, event.model_dump_json(), _fields_set(event)) for rule, event in events]


def _same(fast: Any, reference: Any, payload: bytes) -> None:
    assert _outcome(fast, payload) == _outcome(reference, payload)


@pytest.mark.parametrize("market", MARKETS)
@pytest.mark.parametrize("path", MAPPING_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_every_rule_has_a_fast_path_and_it_matches_the_reference_on_every_fixture(path, market, monkeypatch):
    fast, reference = _pair(path, market, monkeypatch)
    assert [e.rule.name for e in fast.events if e.fast is None] == [], [e.fast_source for e in fast.events]
    inputs = fixtures.inputs(path) or [None]
    for fixture in inputs:
        payload = fixture.read_bytes() if fixture else b"{}"
        _same(fast, reference, payload)


def _bench_record() -> dict[str, Any]:
    return json.loads(json_record(1))  # the 20-field record bench/mapping_bench.py measures


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(node, list) and node:
        return [p for i, v in enumerate(node) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


VALUES = MAPPED_VALUES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_json_records_get_the_reference_outcome(data, monkeypatch):
    fast, reference = _pair(BENCH_MAPPING, data.draw(st.sampled_from(MARKETS)), monkeypatch)
    record = _bench_record()
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_leaf_paths(record)))
        node = record
        for key in path[:-1]:
            node = node[key]
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(VALUES)
        else:
            del node[path[-1]]
    _same(fast, reference, json.dumps(record).encode())


@functools.cache
def _json_fixture_records() -> list[tuple[Path, bytes]]:
    out = []
    for path in MAPPING_FILES:
        if registry.load(path).spec.format != "json":
            continue
        for fixture in fixtures.inputs(path):
            try:
                json.loads(fixture.read_bytes())
            except ValueError:
                continue  # a fixture of what is not JSON at all (an HTML error page)
            out.append((path, fixture.read_bytes()))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_partner_payloads_get_the_reference_outcome(data, monkeypatch):
    path, payload = data.draw(st.sampled_from(_json_fixture_records()))
    fast, reference = _pair(path, data.draw(st.sampled_from(MARKETS)), monkeypatch)
    document = json.loads(payload)
    mutated = copy.deepcopy(document)
    leaves = [p for p in _leaf_paths(mutated) if p]
    if leaves:
        path_ = data.draw(st.sampled_from(leaves))
        node = mutated
        for key in path_[:-1]:
            node = node[key]
        node[path_[-1]] = data.draw(VALUES)
    _same(fast, reference, json.dumps(mutated).encode())


@functools.cache
def _hl7_fixtures() -> list[tuple[Path, bytes]]:
    return [
        (path, fixture.read_bytes())
        for path in MAPPING_FILES
        if registry.load(path).spec.format == "hl7"
        for fixture in fixtures.inputs(path)
    ]


HL7_VALUES = st.one_of(
    st.text(alphabet="AZaz09^~&-+.: \\", max_size=16),
    st.sampled_from(
        [
            "",
            "20260302",
            "2026030209",
            "202603020900-0500",
            "W123426000001",
            "CHW123426000001",
            "\\S\\",
            "PL\\F\\1",
            "\\X41\\PH",
            "CHW123426000001\\E\\",
            "NW~CA",
            "~CHW123426000001",
            "X~CHW123426000001^^^COI~Y",
            "APH&x^INF",
            "&APH",
        ]
    ),
)


def _mutate_hl7(data: st.DataObject, payload: bytes) -> bytes:
    """Fields replaced (escapes, repetitions, components, subcomponents), segments cut short
    (missing fields) or left out (absent segments); the MSH's own fields too, bar MSH-1 and MSH-2."""
    text = payload.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s.split("|") for s in text.split("\r") if s]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(segments) - 1))
        segment = segments[at]
        change = data.draw(st.sampled_from(["value", "value", "value", "cut", "drop"]))
        if change == "drop" and at > 0:
            del segments[at]
        elif change == "cut":
            del segment[data.draw(st.integers(3 if at == 0 else 1, max(3 if at == 0 else 1, len(segment)))) :]
        else:
            index = data.draw(st.integers(2 if at == 0 else 1, max(2, len(segment) - 1)))
            if index < len(segment):
                segment[index] = data.draw(HL7_VALUES)
    return "\r".join("|".join(s) for s in segments).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_hl7_messages_get_the_reference_outcome(data, monkeypatch):
    path, payload = data.draw(st.sampled_from(_hl7_fixtures()))
    fast, reference = _pair(path, data.draw(st.sampled_from(MARKETS)), monkeypatch)
    _same(fast, reference, _mutate_hl7(data, payload))


# Every shape of HL7 path the generated reads write out, into attributes (which keep any string),
# so nearly every mutation still makes an event: the fast path builds it, and must build the same.
SHAPES_MAPPING = """\
system: hl7
kind: ZZS^Z01
version: 1
effective: 2026-01-01
change_note: every HL7 path shape, read into attributes
format: hl7
events:
  - name: shapes
    event_type: order.updated
    # ZZZ-1 reads None, not "": the condition holds
    when: [{from: MSH-9.2, equals: Z01}, {from: ORC-1, not_in: [CA]}, {from: PID-3(2).1, exists: true},
           {from: ZZZ-1, not_in: [""]}]
    fields: &shapes
      source_event_id: {from: MSH-10, required: true}
      occurred_at: {value: "2026-01-01T00:00:00Z", transform: datetime}
      attributes.msh1: {from: MSH-1}
      attributes.msh2: {from: MSH-2}
      attributes.kind: {from: MSH-9}
      attributes.trigger: {from: MSH-9.2}
      attributes.first: {from: PID-3}
      attributes.second: {from: PID-3(2).1}
      attributes.authority: {from: PID-3(2).4}
      attributes.last: {from: PID-3(0)}
      attributes.name: {from: PID-5.2}
      attributes.sub: {from: OBR-4.1.2}
      attributes.nested: {from: OBR-4(2).2.2}
      attributes.order: {from: ORC-2}
      attributes.gone: {from: ORC-99}
      attributes.again: {from: OBR(2)-4}
      attributes.absent: {from: ZZZ-1}
  - name: cancelled
    event_type: order.cancelled
    when: [{from: ORC-1, equals: CA}, {from: PID-3(2).1, exists: true}]
    fields: *shapes
"""
SHAPES_MESSAGE = (
    b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303112000||ZZS^Z01^ZZS_Z01|BOS0000101|P|2.5.1\r"
    b"PID|1||MRN48213377^^^US-BOS-01^MR~CHW123426000001^^^COI^PN~LAST||Smith\\S\\son^Jo\\T\\hanna\r"
    b"ORC|NW|PL-1001|FL-77|CRM-00001|SC\r"
    b"OBR|1|PL-1001|FL-77|APH&a&b^Apheresis~INF^Infusion&c&d\r"
    b"OBR|2|PL-1002|FL-78|INF\r"
)


def _written_pair(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, where: str, text: str
) -> tuple[Any, Any]:
    """The fast and reference mappings of `text`, written once per session under `where`."""
    path = tmp_path_factory.getbasetemp() / where / "v1.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True)
        path.write_text(text)
    return _pair(path, None, monkeypatch)


def _shapes_pair(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    return _written_pair(tmp_path_factory, monkeypatch, "shapes/hl7/ZZS_Z01", SHAPES_MAPPING)


def test_the_fast_path_reads_every_hl7_path_shape_itself(tmp_path_factory, monkeypatch):
    from cgthub import hl7v2
    from cgthub.mapping.compiler import _provenance

    fast, reference = _shapes_pair(tmp_path_factory, monkeypatch)
    provenance = {"mapping_id": "hl7/ZZS^Z01", "mapping_version": "v1", "raw_id": 7, "raw_checksum": "c" * 64}
    message = hl7v2.parse(SHAPES_MESSAGE)
    assert fast._select(message) == [True, False]
    built = fast.events[0].fast(message, _provenance(provenance), NOW)  # raises if it would hand over
    (expected,) = reference.map(SHAPES_MESSAGE, raw_id=7, checksum="c" * 64, received_at=NOW)
    assert built == expected and built.attributes == {
        "msh1": "|",
        "msh2": "^~\\&",
        "kind": "ZZS",
        "trigger": "Z01",
        "first": "MRN48213377",
        "second": "CHW123426000001",
        "authority": "COI",
        "last": "LAST",
        "name": "Jo&hanna",
        "sub": "a",
        "nested": "c",
        "order": "PL-1001",
        "again": "INF",
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_messages_get_the_reference_outcome_for_every_path_shape(data, tmp_path_factory, monkeypatch):
    fast, reference = _shapes_pair(tmp_path_factory, monkeypatch)
    _same(fast, reference, _mutate_hl7(data, SHAPES_MESSAGE))


def test_the_fast_path_can_be_turned_off_and_every_rule_then_takes_the_reference(monkeypatch):
    monkeypatch.setenv("CGTHUB_MAPPING_FASTPATH", "0")
    assert not codegen.enabled()
    mapper = registry.compile_file(BENCH_MAPPING)
    assert all(e.fast is None for e in mapper.events)
    assert mapper.map(json.dumps(_bench_record()).encode(), raw_id=1, checksum="", received_at=NOW)


RAW_MAPPING = """\
system: courier
kind: raw_values
version: 1
effective: 2026-01-01
change_note: every field read as it comes, so only the model's own checks stand between it and the event
format: json
events:
  - name: raw
    event_type: shipment.in_transit
    fields:
      source_event_id: {from: id}
      occurred_at: {from: at, transform: datetime}
      scheduled_for: {from: eta}
      refs.crm_order_id: {from: order}
      refs.courier_shipment_ids: {from: shipments}
      patient.coi_id: {from: coi}
      patient.pseudonyms.mrn: {from: mrn, transform: strip}
      patient.pseudonyms.visit: {from: visit, transform: strip}
      order.market: {from: market}
      material.din: {from: din}
      material.bag_ids: {from: bags}
      shipment.shipment_id: {from: shipment}
      shipment.direction: {from: direction}
      shipment.temperature.min_c: {from: min_c}
      shipment.temperature.readings: {from: readings}
      attributes.note: {from: note}
"""

RAW_VALUES = st.one_of(
    VALUES,
    st.sampled_from(["to_cmo", "to_site", "TO_CMO", "psn:mrn:0123456789abcdef0123456789abcdef", "psn:MRN:00"]),
    st.lists(st.sampled_from(["S-1", "S-2", 3]), max_size=3),
)
RAW_KEYS = [
    "visit",
    "id",
    "at",
    "eta",
    "order",
    "shipments",
    "coi",
    "mrn",
    "market",
    "din",
    "bags",
    "shipment",
    "direction",
    "min_c",
    "readings",
    "note",
]


RAW_VALID = {
    "id": "E-1",
    "at": "2026-03-02T09:00:00Z",
    "order": "CRM-1",
    "shipments": ["S-1", "S-2"],
    "coi": "CHW123426000001",
    "mrn": "psn:mrn:0123456789abcdef0123456789abcdef",
    "market": "us",
    "din": "W123426000001",
    "bags": ["B-1"],
    "shipment": "S-1",
    "direction": "to_cmo",
    "min_c": -150,
    "readings": 12,
    "note": "ok",
}


def _raw_pair(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    return _written_pair(tmp_path_factory, monkeypatch, "raw/courier/raw_values", RAW_MAPPING)


def test_a_valid_raw_record_is_built_by_the_fast_path_itself(tmp_path_factory, monkeypatch):
    fast, reference = _raw_pair(tmp_path_factory, monkeypatch)
    record = dict(RAW_VALID)
    provenance = {"mapping_id": "courier/raw_values", "mapping_version": "v1", "raw_id": 7, "raw_checksum": "c" * 64}
    from cgthub.mapping.compiler import _provenance

    built = fast.events[0].fast(record, _provenance(provenance), NOW)  # raises if it would hand over
    (expected,) = reference.map(json.dumps(record).encode(), raw_id=7, checksum="c" * 64, received_at=NOW)
    assert built == expected and built.order.market == "US" and built.material.din == "W123426000001N"
    assert built.shipment.temperature.min_c == -150.0 and type(built.shipment.temperature.min_c) is float


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(RAW_KEYS), st.one_of(RAW_VALUES, st.just(...)), min_size=1, max_size=2))
def test_raw_values_are_checked_as_the_model_checks_them(changes, tmp_path_factory, monkeypatch):
    fast, reference = _raw_pair(tmp_path_factory, monkeypatch)
    record = dict(RAW_VALID)
    for key, value in changes.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    _same(fast, reference, json.dumps(record).encode())


def test_a_source_expression_never_becomes_generated_code(tmp_path, monkeypatch):
    """A JMESPath may span lines; in the generated text it stays inside a comment's repr."""
    path = tmp_path / "crm" / "sly" / "v1.yaml"
    path.parent.mkdir(parents=True)
    sly = "a ||\n__import__('os').environ.setdefault('CGTHUB_INJECTED', '1')"  # valid JMESPath
    path.write_text(
        "system: crm\nkind: sly\nversion: 1\neffective: 2026-01-01\nchange_note: t\nformat: json\nevents:\n"
        "  - name: a\n    event_type: order.enrolled\n    fields:\n"
        f"      source_event_id: {{from: {json.dumps(sly)}}}\n"
        '      occurred_at: {value: "2026-01-01T00:00:00Z", transform: datetime}\n'
    )
    monkeypatch.delenv("CGTHUB_INJECTED", raising=False)
    mapper = registry.compile_file(path)
    (event,) = mapper.map(b'{"a": "E-1"}', raw_id=None, checksum="", received_at=NOW)
    assert event.source_event_id == "E-1"
    assert "CGTHUB_INJECTED" not in __import__("os").environ
    assert mapper.events[0].fast is not None


def test_shared_defaults_are_only_those_nothing_can_change():
    """A default the generated builders share between instances must be immutable; a mutable one
    gets a copy per instance, as pydantic gives it (a shared dict would leak one event's keys into the next)."""
    from enum import StrEnum

    from pydantic import ConfigDict

    from cgthub.mapping import construct
    from cgthub.model import CanonicalEvent, ExternalRefs

    class Colour(StrEnum):
        RED = "red"

    class Frozen(BaseModel):
        model_config = ConfigDict(frozen=True)
        names: tuple[str, ...] = ()
        colour: Colour = Colour.RED

    class Loose(BaseModel):
        names: list[str] = []

    class Holder(BaseModel):
        tags: dict[str, str] = {}
        colour: Colour = Colour.RED

    assert construct.immutable(ExternalRefs()) and construct.immutable(Frozen()) and construct.immutable(Colour.RED)
    assert construct.immutable(("a", 1, None))
    assert not construct.immutable(Loose()) and not construct.immutable({}) and not construct.immutable(("a", []))
    assert CanonicalEvent.model_fields["refs"].default == ExternalRefs()  # shared: frozen, so safe

    build = construct.model_builder(Holder)
    first, second = build({}), build({})
    assert first.colour is Colour.RED
    first.tags["leak"] = "x"
    assert second.tags == {} and Holder.model_fields["tags"].default == {}

    writer = codegen._Writer()
    assert codegen._default_expr(writer, Holder.model_fields["colour"]) is not None  # an enum default is a constant
    with pytest.raises(codegen.NoFastPath):
        codegen._default_expr(writer, Holder.model_fields["tags"])


def _built_by_fast_path(event: Any, record: Any) -> Any:
    from cgthub.mapping.compiler import _provenance

    provenance = {"mapping_id": "x/y", "mapping_version": "v1", "raw_id": 7, "raw_checksum": "c" * 64}
    try:
        return event.fast(record, _provenance(provenance), NOW)
    except Exception:
        return None  # handed over: the reference path would decide


@pytest.mark.parametrize("path", [p for p in MAPPING_FILES if fixtures.inputs(p)], ids=lambda p: "/".join(p.parts[-3:]))
def test_fixture_records_are_built_by_the_fast_path_itself_not_only_handed_over(path, monkeypatch):
    """A fast path that always handed over would pass the equivalence tests; the shipped fixtures'
    records must be built by the generated functions themselves."""
    fast, _reference = _pair(path, None, monkeypatch)
    built = 0
    for fixture in fixtures.inputs(path):
        try:
            records = fast.records(fixture.read_bytes())
        except Exception:
            continue  # a fixture of a payload the mapping rejects whole
        built += sum(_built_by_fast_path(e, r) is not None for r in records for e in fast.events)
    assert built, "no fixture record is built by the fast path itself"


def test_the_bench_record_is_built_by_the_fast_path_itself(monkeypatch):
    fast, reference = _pair(BENCH_MAPPING, None, monkeypatch)
    record = _bench_record()
    built = _built_by_fast_path(fast.events[0], record)
    (expected,) = reference.map(json.dumps(record).encode(), raw_id=7, checksum="c" * 64, received_at=NOW)
    assert built is not None and built.model_dump_json(exclude={"provenance"}) == expected.model_dump_json(
        exclude={"provenance"}
    )
    assert built.occurred_at == datetime(2026, 3, 2, 14, tzinfo=UTC)  # 09:00 in New York
    assert built.patient.pseudonyms["mrn"].startswith("psn:mrn:") and built.order.market == "US"


def test_the_fast_path_pseudonymizes_with_the_key_the_settings_hold_now(monkeypatch):
    """A key rotated in the settings is the key the next record is pseudonymized with."""
    from cgthub import settings as hub_settings
    from cgthub.pseudonym import pseudonymize

    fast, _reference = _pair(BENCH_MAPPING, None, monkeypatch)
    payload = json.dumps(_bench_record()).encode()
    first = fast.map(payload, raw_id=7, checksum="c" * 64, received_at=NOW)[0].patient.pseudonyms["mrn"]
    with monkeypatch.context() as patch:
        patch.setenv("CGTHUB_PSEUDONYM_KEY", base64.urlsafe_b64encode(b"\x01" * 32).decode())
        hub_settings.get_settings.cache_clear()
        try:
            second = fast.map(payload, raw_id=7, checksum="c" * 64, received_at=NOW)[0].patient.pseudonyms["mrn"]
            assert second != first and second == pseudonymize("mrn", _bench_record()["patient"]["mrn"])
        finally:
            hub_settings.get_settings.cache_clear()
    assert fast.map(payload, raw_id=7, checksum="c" * 64, received_at=NOW)[0].patient.pseudonyms["mrn"] == first
