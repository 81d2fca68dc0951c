"""The C interpreter (`cgthub/mapping/_vm.c`) builds what the generated Python builds, itself.

`test_mapping_codegen.py` holds both fast paths to the reference outcome; a fast path that always
handed over would pass there. Here the C build of every rule is called directly, beside the
generated Python function of the same rule, and the two must agree exactly: the same instances
(same JSON, same fields set at every level), or both handing over. Its own steps (DIN, CoI,
date/time) answer only what the Python transforms answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bench.mapping_bench import json_record
from cgthub.identifiers import IdentifierError, mod37_2_check, normalize_din, validate_coi_id
from cgthub.mapping import construct, fixtures, native, registry
from cgthub.mapping.compiler import _provenance
from cgthub.mapping.transforms import datetime_transform, zone
from cgthub.model import Direction
from cgthub.pseudonym import pseudonymize
from tests.factories import MAPPED_VALUES

if not native.available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("the C interpreter is not built (cgthub/mapping/_vm.c): `make install` compiles it")
    pytest.skip("the C interpreter is not built here", allow_module_level=True)

from cgthub.mapping.native import _vm

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
BENCH_MAPPING = Path(__file__).parents[1] / "bench" / "mappings" / "crm" / "order_record" / "v1.yaml"
# HL7 rules keep the generated Python, which reads segments inline (native.generate says why).
MAPPING_FILES = [f.path for f in registry.discover() if f.system != "hl7"] + [BENCH_MAPPING]
PROVENANCE = _provenance({"mapping_id": "x/y", "mapping_version": "v1", "raw_id": 7, "raw_checksum": "c" * 64})


def _python_and_native(path: Path, market: str | None, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    with monkeypatch.context() as patch:
        patch.setenv("CGTHUB_MAPPING_FASTPATH", "python")
        python = registry.compile_file(path, market)
    return python, registry.compile_file(path, market)


def _fields_set(model: BaseModel) -> Any:
    nested = {name: _fields_set(value) for name, value in model.__dict__.items() if isinstance(value, BaseModel)}
    return sorted(model.model_fields_set), nested


def _built(build: Any, record: Any) -> Any:
    try:
        made = build(record, PROVENANCE, NOW)
    except Exception:
        return "hands over"
    return made, made.model_dump_json(), _fields_set(made)


def _records(mapper: Any, path: Path) -> list[Any]:
    out = []
    for fixture in fixtures.inputs(path):
        try:
            out.extend(mapper.records(fixture.read_bytes()))
        except Exception:
            continue
    return out


@pytest.mark.parametrize("market", [None, "US", "DE"])
@pytest.mark.parametrize("path", MAPPING_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_the_c_build_of_every_rule_builds_what_the_generated_python_builds(path, market, monkeypatch):
    python, compiled = _python_and_native(path, market, monkeypatch)
    built_here = 0
    for py_event, c_event in zip(python.events, compiled.events, strict=True):
        assert type(c_event.fast) is _vm.Build, c_event.fast_source
        for record in _records(python, path):
            expected = _built(py_event.fast, record)
            assert _built(c_event.fast, record) == expected, (py_event.rule.name, c_event.fast_source)
            built_here += expected != "hands over"
    assert built_here or not fixtures.inputs(path), "no fixture record is built by the fast path itself"


def test_the_bench_record_is_built_by_the_c_build_itself(monkeypatch):
    python, compiled = _python_and_native(BENCH_MAPPING, None, monkeypatch)
    record = json.loads(json_record(41))
    built = compiled.events[0].fast(record, PROVENANCE, NOW)  # raises if it would hand over
    assert built == python.events[0].fast(record, PROVENANCE, NOW)
    assert built.occurred_at == datetime(2026, 3, 2, 14, tzinfo=UTC)  # 09:00 in New York
    assert built.material.din == record["unit"]["din"] and built.order.market == "US"
    assert built.patient.pseudonyms["mrn"].startswith("psn:mrn:") and built.attributes == {
        "weight_kg": 71.5,
        "priority": 2,
    }
    assert built.model_fields_set == python.events[0].fast(record, PROVENANCE, NOW).model_fields_set


LEAVES = MAPPED_VALUES


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), LEAVES | st.just(...)), min_size=1, max_size=3))
def test_mutated_records_get_the_same_answer_from_both_builds(changes):
    python, compiled = _MUTATION_PAIR
    record = _mutated(1, changes)
    assert _built(compiled.events[0].fast, record) == _built(python.events[0].fast, record)


def _mutated(number: int, changes: list[tuple[int, Any]]) -> dict[str, Any]:
    """The bench's record `number` with `changes` made: (which key of all its objects', the value
    to put there or ... to delete it)."""
    record = json.loads(json_record(number))
    for pick, value in changes:
        leaves = [(node, key) for node in _nodes(record) for key in list(node)]
        node, key = leaves[pick % len(leaves)]
        if value is ...:
            del node[key]
        else:
            node[key] = value
    return record


def _nodes(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [record] + [n for v in record.values() if isinstance(v, dict) for n in _nodes(v)]


def _mutation_pair() -> tuple[Any, Any]:
    os.environ["CGTHUB_MAPPING_FASTPATH"] = "python"
    try:
        python = registry.compile_file(BENCH_MAPPING)
    finally:
        del os.environ["CGTHUB_MAPPING_FASTPATH"]
    return python, registry.compile_file(BENCH_MAPPING)


_MUTATION_PAIR = _mutation_pair()


def _python_answer(function: Any, value: Any) -> Any:
    try:
        return function(value)
    except (IdentifierError, ValueError):
        return "refused"


DIN_TEXT = st.text(alphabet="W12345670ABZ*a -", min_size=11, max_size=16)


@settings(max_examples=2000, deadline=None)
@given(body=st.from_regex(r"[A-Z][0-9A-Z]{4}[0-9]{8}", fullmatch=True), noise=DIN_TEXT, keep=st.integers(0, 2))
def test_the_din_step_answers_only_what_normalize_din_answers(body, noise, keep):
    for value in (body, body + mod37_2_check(body), body + "A", noise):
        own = _vm.din(value)
        if own is not None:
            assert own == _python_answer(normalize_din, value)
    assert _vm.din(body) == normalize_din(body)  # the usual value is its own to answer
    assert _vm.din(body + mod37_2_check(body)) == body + mod37_2_check(body)


@settings(max_examples=1000, deadline=None)
@given(value=st.from_regex(r"CH[A-Z][0-9A-Z]{4}[0-9]{8}", fullmatch=True) | st.text(alphabet="CHW1234z ", max_size=16))
def test_the_coi_step_answers_only_what_validate_coi_id_answers(value):
    own = _vm.coi(value)
    if own is not None:
        assert own == _python_answer(validate_coi_id, value)
    if _python_answer(validate_coi_id, value) == value:
        assert own == value  # the usual value (already stripped, upper case) is its own to answer


ZONES = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]


def test_the_datetime_step_matches_the_python_transform_across_transitions():
    """Every quarter hour over two DST years in zones with odd offsets, both shapes, and edges."""
    rng = random.Random(5)
    for name in ZONES:
        tz = zone(name)
        transform = datetime_transform(tz)
        moment = datetime(2025, 1, 1)
        while moment < datetime(2027, 1, 1):
            for text in (
                moment.strftime("%Y-%m-%dT%H:%M:%S"),
                moment.strftime("%Y%m%d%H%M%S"),
                moment.strftime("%Y-%m-%d %H:%M:%S"),
            ):
                own = _vm.datetime(text, tz.utcoffset)
                assert own is not None and own == transform(text) and own.tzinfo is UTC, (name, text)
            moment += timedelta(minutes=15 * rng.randint(1, 8))
    tz = zone("Europe/Berlin")
    for text in (
        "2026-02-29T00:00:00",
        "2026-13-01T00:00:00",
        "0001-01-01T00:30:00",
        "9999-12-31T23:59:59",
        "2026-03-02T24:00:00",
        "2026-03-02T09:00:60",
        "2026-03-02T09:00:00Z",
        "2026-03-02X09:00:00",
        "20260302",
        "2026030209000",
        "2026-03-02T09:00.00",
        "\uff12\uff10\uff12\uff16-03-02T09:00:00",
        "2024-02-29T12:00:00",
    ):
        own = _vm.datetime(text, tz.utcoffset)
        if own is not None:
            assert own == datetime_transform(tz)(text), text
    assert _vm.datetime("2024-02-29T12:00:00", tz.utcoffset) == datetime(2024, 2, 29, 11, tzinfo=UTC)


def test_a_malformed_plan_is_refused_when_made_not_when_run():
    setters = tuple(BaseModel.__dict__[name] for name in construct.SLOTS)
    with pytest.raises(ValueError, match="register 9 out of range"):
        _vm.Build(
            ((_vm.OP_READ, 9, 0, "id", None, None), (_vm.OP_RETURN, 3, 0, None, None, None)),
            4,
            construct.ABSENT,
            setters,
        )
    with pytest.raises(ValueError, match="needs a dict operand"):
        _vm.Build(
            ((_vm.OP_MAP, 3, 0, ["not", "a", "map"], None, None), (_vm.OP_RETURN, 3, 0, None, None, None)),
            4,
            construct.ABSENT,
            setters,
        )
    with pytest.raises(ValueError, match="needs a dict operand"):
        _vm.Build(
            ((_vm.OP_CHK_TABLE, 3, 0, ("US",), str, None), (_vm.OP_RETURN, 3, 0, None, None, None)),
            4,
            construct.ABSENT,
            setters,
        )
    with pytest.raises(ValueError, match="ends with its return"):
        _vm.Build(((_vm.OP_READ, 3, 0, "id", None, None),), 4, construct.ABSENT, setters)
    build = _vm.Build(
        ((_vm.OP_READ, 3, 0, "id", None, None), (_vm.OP_RETURN, 3, 0, None, None, None)), 4, construct.ABSENT, setters
    )
    assert build({"id": "E-1"}, None, None) == "E-1"
    with pytest.raises(LookupError):
        build(["not", "a", "record"], None, None)  # not a plain dict: hands over


def test_a_check_decided_early_answers_from_its_table_and_calls_for_the_rest():
    """`native._decided`: a model's check answered once at plan time for the values a register
    often holds (a code map's, the allowed ones); a value not among them is checked by the call."""
    setters = tuple(BaseModel.__dict__[name] for name in construct.SLOTS)
    build = _vm.Build(
        (
            (_vm.OP_READ, 3, 0, "m", None, None),
            (_vm.OP_CHK_TABLE, 3, 0, {"US": "decided US"}, lambda v: f"called with {v!r}", None),
            (_vm.OP_RETURN, 3, 0, None, None, None),
        ),
        4,
        construct.ABSENT,
        setters,
    )
    assert build({"m": "US"}, None, None) == "decided US"
    assert build({"m": "DE"}, None, None) == "called with 'DE'"
    assert build({"m": None}, None, None) == "called with None"

    class Text(str):
        pass

    assert build({"m": Text("US")}, None, None) == "called with 'US'"  # only exactly a str is looked up
    compiled = registry.compile_file(BENCH_MAPPING)
    event = compiled.map(json_record(1), raw_id=7, checksum="c" * 64, received_at=NOW)[0]
    assert (event.order.market, event.shipment.direction) == ("US", Direction.TO_CMO)
    assert native._decided(construct.annotation_check(Direction | None), frozenset({"to_cmo", "nowhere"})) == {
        "to_cmo": Direction.TO_CMO
    }


KEYS = st.one_of(st.binary(min_size=0, max_size=80), st.just(b"k" * 64), st.just(b"k" * 65))


@settings(max_examples=1500, deadline=None)
@given(
    kind=st.sampled_from(["mrn", "visit", "ssn", "a_b"]),
    value=st.one_of(
        st.from_regex(r"[A-Z0-9^-]{0,60}", fullmatch=True),
        st.text(max_size=12),
        st.just("psn:mrn:0123456789abcdef0123456789abcdef"),
        st.just(" MRN1 "),
    ),
    key=KEYS,
)
def test_the_pseudonym_step_answers_only_what_pseudonymize_answers(kind, value, key):
    own = _vm.pseudonym(kind, value, key)
    if own is not None:
        assert own == pseudonymize(kind, value, key=key)
    if value == value.strip().upper() and value.isascii() and not value.startswith("psn:"):
        assert own is not None  # the usual value is its own to answer


def test_the_pseudonym_step_follows_the_settings_key(monkeypatch):
    """The build reads the key from the settings on every value: new settings, new pads."""
    from cgthub import settings as hub_settings

    _python, compiled = _python_and_native(BENCH_MAPPING, None, monkeypatch)
    record = json.loads(json_record(3))
    first = compiled.events[0].fast(record, PROVENANCE, NOW).patient.pseudonyms["mrn"]
    with monkeypatch.context() as patch:
        patch.setenv("CGTHUB_PSEUDONYM_KEY", base64.urlsafe_b64encode(b"\x01" * 32).decode())
        hub_settings.get_settings.cache_clear()
        try:
            second = compiled.events[0].fast(record, PROVENANCE, NOW).patient.pseudonyms["mrn"]
            assert second != first and second == pseudonymize("mrn", record["patient"]["mrn"])
        finally:
            hub_settings.get_settings.cache_clear()
    assert compiled.events[0].fast(record, PROVENANCE, NOW).patient.pseudonyms["mrn"] == first


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_both_sha256_compressions_give_hashlibs_digest(data):
    """The CPU's SHA extensions serve where the module's self-check found them; either way the
    digest is SHA-256's, at every length around the block and padding edges."""
    for size in {len(data), 55, 56, 63, 64, 65, 119, 120, 128}:
        chunk = (data * 3)[:size] if data else bytes(size)
        assert _vm.sha256(chunk, False) == _vm.sha256(chunk, True) == hashlib.sha256(chunk).digest()
    assert _vm.sha256_backend() in ("cpu", "portable")


def _mapped(mapper: Any, payload: bytes) -> Any:
    try:
        events = mapper.map(payload, raw_id=7, checksum="c" * 64, received_at=NOW)
    except Exception as exc:  # the same rejection, in the same words, is the point
        return ("rejected", type(exc).__name__, str(exc))
    return [(e, e.model_dump_json(), _fields_set(e)) for e in events]


def _reference(path: Path, market: str | None) -> Any:
    os.environ["CGTHUB_MAPPING_FASTPATH"] = "0"
    try:
        return registry.compile_file(path, market)
    finally:
        del os.environ["CGTHUB_MAPPING_FASTPATH"]


JSON_FILES = [p for p in MAPPING_FILES if registry.load(p).spec.format == "json"]


@pytest.mark.parametrize("market", [None, "DE"])
@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_map_of_a_whole_json_payload_in_c_gives_the_reference_outcome(path, market):
    """`map` hands a JSON payload to the C runner first (`native.runner`): decode, conditions,
    provenance and builds; whatever it answers must be what the reference path answers."""
    compiled, reference = registry.compile_file(path, market), _reference(path, market)
    payloads = [f.read_bytes() for f in fixtures.inputs(path)] or [json_record(5)]
    answered = 0
    for payload in [*payloads, b"{}", b"[]", b"not json", b'{"status": "DRAFT"}']:
        assert _mapped(compiled, payload) == _mapped(reference, payload)
        if compiled._run is not None:
            answered += compiled._run(payload, 7, "c" * 64, NOW) is not None
    if path == BENCH_MAPPING:
        assert compiled._run is not None and answered == 1  # the record itself, not the odd ones


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), LEAVES | st.just(...)), min_size=1, max_size=3))
def test_map_of_mutated_payloads_in_c_gives_the_reference_outcome(changes):
    payload = json.dumps(_mutated(2, changes)).encode()
    assert _mapped(_RUNNER_PAIR[0], payload) == _mapped(_RUNNER_PAIR[1], payload)


_RUNNER_PAIR = (registry.compile_file(BENCH_MAPPING), _reference(BENCH_MAPPING, None))


# ---- the runner's scanner: the record orjson makes, along the paths the rules read -------------

JSON_KEYS = st.sampled_from(["a", "b", "id", "é", "a.b", ""]) | st.text(max_size=3)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=12),  # lone surrogates too
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_KEYS, inner, max_size=5),
    max_leaves=25,
)
PATHS = st.lists(st.lists(JSON_KEYS, min_size=1, max_size=3).map(tuple), max_size=5).map(tuple)


def _reads(record: Any, paths: tuple[tuple[str, ...], ...]) -> dict[tuple[str, ...], Any]:
    """What a build's chained reads find in orjson's dict for each path, as the scanner is to
    answer: OP_HOLD's `.get` of an object (None past anything else), then OP_READ's `.get`."""

    def read(path: tuple[str, ...]) -> Any:
        node = record
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    return {path: read(path) for path in paths}


def _orjson_answer(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "refused"


def _encoded(value: Any, style: int) -> bytes:
    """One JSON text of `value` in one of the shapes partners send: compact, spaced, indented; with
    non-ASCII escaped or not; with lone surrogates written raw (not valid UTF-8) or escaped."""
    text = json.dumps(
        value,
        ensure_ascii=style == 1,
        indent=2 if style == 3 else None,
        separators=(",", ":") if style == 0 else None,
    )
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=1500, deadline=None)
@given(value=st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=6), style=st.integers(0, 3), paths=PATHS)
def test_the_scanner_reads_what_orjson_reads_along_the_paths(value, style, paths):
    payload = _encoded(value, style)
    scanned, decoded = _vm.scan(payload, paths), _orjson_answer(payload)
    if scanned is not None:  # None: unsure, and orjson decodes the payload
        assert decoded != "refused" and scanned == _reads(decoded, paths)


@settings(max_examples=3000, deadline=None)
@given(
    value=st.dictionaries(JSON_KEYS, JSON_VALUES, min_size=1, max_size=6),
    paths=PATHS,
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2), st.binary(min_size=1, max_size=2)), max_size=3),
)
def test_the_scanner_never_accepts_a_payload_orjson_refuses(value, paths, edits):
    payload = bytearray(_encoded(value, 2))
    for at, kind, data in edits:  # a byte changed, dropped or put in; or the text cut short
        at %= len(payload) + 1
        if kind == 0:
            payload[at : at + 1] = data[:1]
        elif kind == 1:
            del payload[at : at + 1]
        else:
            payload[at:at] = data
    payload = bytes(payload)
    scanned, decoded = _vm.scan(payload, paths), _orjson_answer(payload)
    if decoded == "refused" or not isinstance(decoded, dict):
        assert scanned is None
    elif scanned is not None:
        assert scanned == _reads(decoded, paths)


A, B, AB, ABC = ("a",), ("b",), ("a", "b"), ("a", "b", "c")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a": 1, "a": {"b": 2}}', {A: {"b": 2}, B: None, AB: 2}),  # a repeated key: the last one counts
        (b'{"a": {"b": 2}, "a": "x"}', {A: "x", B: None, AB: None}),
        (b'{"b": {"a": 1}, "a": {"b": {"c": 3}}}', {A: {"b": {"c": 3}}, B: {"a": 1}, AB: {"c": 3}}),
        (b' {"a": -0, "b": -0.0} ', {A: 0, B: -0.0, AB: None}),
        (b'{"a": "\\u00e9\\n\\"\\/", "b": "\xc3\xa9\xf0\x9f\x98\x80"}', {A: 'é\n"/', B: "é😀", AB: None}),
        (
            b'{"a": [1, {"b": null}, [true, false]], "b": 123456789012345678}',
            {A: [1, {"b": None}, [True, False]], B: 123456789012345678, AB: None},
        ),
        (b'{"x": {"y": 1}, "b": {"z": 0.1}}', {A: None, B: {"z": 0.1}, AB: None}),
    ],
)
def test_the_scanner_reads_json_as_orjson_does(payload, expected):
    scanned = _vm.scan(payload, (A, B, AB))
    assert scanned == expected == _reads(orjson.loads(payload), (A, B, AB))
    if expected[B] == 0.0:
        assert str(scanned[B]) == "-0.0"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a": {"b": {"c": 1}, "z": 2}}', 1),
        (b'{"a": {"b": {"c": 1}}, "a": {"z": 2}}', None),  # met again: what was read below it is gone
        (b'{"a": {"b": {"c": 1}}, "a": 5}', None),
        (b'{"a": {"b": {"c": 1}, "b": []}}', None),
        (b'{"a": {"b": 7}}', None),
        (b'{"q": {"a": {"b": {"c": 1}}}}', None),
    ],
)
def test_a_path_below_an_object_reads_what_the_chained_reads_find(payload, expected):
    assert _vm.scan(payload, (ABC,)) == {ABC: expected} == _reads(orjson.loads(payload), (ABC,))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": 1e5}',  # an exponent
        b'{"a": 1234567890123456789}',  # past 18 characters: orjson's own rules for big numbers
        b'{"a": "\\ud83d\\ude00"}',  # surrogate escapes, paired or not
        b'{"\\u0061": 1}',  # an escaped key
        b"[" * 200 + b"]" * 200,
        b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}",  # deeper than the scanner goes
        b"\xef\xbb\xbf{}",  # a byte order mark
    ],
)
def test_the_scanner_leaves_to_orjson_what_it_is_not_sure_of(payload):
    assert _vm.scan(payload, (("a",),)) is None


def test_the_runner_reads_the_paths_its_rules_read_and_orjson_serves_the_rest():
    """The paths come from the builds' own steps (and the conditions), so no rule reads a key the
    scanner dropped; a payload the scanner leaves still maps, decoded by orjson."""
    compiled, reference = _RUNNER_PAIR
    rule = registry.load(BENCH_MAPPING).spec.events[0]
    read = {tuple(f.source.split(".")) for f in rule.fields.values()} | {tuple(c.source.split(".")) for c in rule.when}
    assert set(compiled._run.reads) == read
    record = json.loads(json_record(3))
    record["note"] = "d\u00e9j\u00e0 \\ud83d"  # non-ASCII and a backslash: read by the scanner
    record["unread"] = [{"deep": 1e300}]  # an exponent where nothing reads: orjson decodes this one
    for payload in (json.dumps(record).encode(), orjson.dumps(record)):
        assert _mapped(compiled, payload) == _mapped(reference, payload)
        assert compiled._run(payload, 7, "c" * 64, NOW) is not None


def test_a_rule_that_reads_the_record_otherwise_has_it_decoded_whole(tmp_path):
    text = BENCH_MAPPING.read_text().replace("reason: {from: note}", "reason: {from: \"join(' ', [note, status])\"}")
    path = tmp_path / "crm" / "order_record" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    compiled = registry.compile_file(path)
    assert compiled._run is not None and compiled._run.reads is None
    assert (
        compiled.map(json_record(3), raw_id=7, checksum="c" * 64, received_at=NOW)[0].reason == "first order ENROLLED"
    )
