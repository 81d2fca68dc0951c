"""The mapping engine: shipped mappings pass their fixtures; bad files and bad payloads say why."""

import json
import re
import textwrap
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgthub import pipeline, quarantine
from cgthub.archive import Inbound
from cgthub.mapping import fixtures, registry
from cgthub.mapping.spec import MappingError, load
from cgthub.tables import Order

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize("found", registry.discover(), ids=lambda f: f.ref)
def test_every_shipped_mapping_passes_its_fixtures_and_reaches_every_rule(found):
    report = fixtures.check(registry.compile_file(found.path), found.path)
    assert report.problems == [] and report.unreached_rules == []
    assert [r for r in report.results if not r.ok] == []
    assert len(report.results) >= 1


def test_all_five_systems_have_mappings_and_crm_has_two_versions():
    found = registry.discover()
    assert {f.system for f in found} == {"crm", "erp", "hl7", "courier", "cmo"}
    assert [f.version for f in registry.versions("crm", "enrollment")] == [1, 2]
    assert registry.get_mapper("hl7", "OML^O21").mapping_id == "hl7/ORM^O01"  # via also_for
    assert registry.get_mapper("hl7", "ADT^A31").mapping_id == "hl7/ADT^A04"
    assert registry.get_mapper("hl7", "MFN^M02") is None


def _write(tmp_path, body, system="crm", kind="thing", version=1):
    path = tmp_path / system / kind / f"v{version}.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(body))
    return path


HEADER = """\
system: crm
kind: thing
version: 1
effective: 2026-01-01
change_note: test
format: json
events:
  - name: enrolled
    event_type: order.enrolled
    fields:
      source_event_id: {from: id}
      occurred_at: {from: at, transform: datetime}
"""


def test_yaml_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, HEADER + "      refs.crm_order_id: {from: id\n")
    with pytest.raises(MappingError, match=r"v1.yaml:14: not valid YAML"):
        load(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("      refs.crm_order_id: {from: id, transform: frobnicate}", "unknown transform 'frobnicate'"),
        ("      patient.nickname: {from: nick}", "patient.nickname"),
        ("      nonsense.field: {from: x}", "unknown canonical field 'nonsense.field'"),
        ("      refs.crm_order_id: {from: 'items[?', required: true}", "field 'refs.crm_order_id'"),
        ("      order.site: {from: site, map: nowhere}", "code map 'nowhere' is not defined"),
    ],
)
def test_compile_errors_name_file_line_and_rule(tmp_path, line, problem):
    path = _write(tmp_path, HEADER + line + "\n")
    try:
        mapper = registry.compile_file(path)
    except MappingError as exc:
        assert "v1.yaml:13" in str(exc) and "rule 'enrolled'" in str(exc) and problem in str(exc)
        return
    # A field the canonical model does not know is caught when the event is built.
    with pytest.raises(pipeline.PayloadRejected, match=problem):
        mapper.map(b'{"id": "1", "at": "2026-01-01T00:00:00Z", "nick": "Jo"}', raw_id=1, checksum="", received_at=NOW)


def test_bad_hl7_path_is_a_compile_error(tmp_path):
    body = HEADER.replace("format: json", "format: hl7").replace("{from: id}", "{from: PID-x}")
    with pytest.raises(MappingError, match=r"rule 'enrolled'.*'PID-x' is not an HL7 path"):
        registry.compile_file(_write(tmp_path, body))


def _crm(n, therapy="KYM-CD19", country="US", mrn="MRN00000042", coi=None):
    return json.dumps(
        {
            "id": f"CRM-{n:05d}",
            "status": "ENROLLED",
            "enrolledAt": "2026-03-02T09:00:00",
            "product": therapy,
            "site": {"id": f"{country}-SITE-1", "country": country},
            "patient": {"coiId": coi or f"CHW1234260000{n:02d}", "mrn": mrn, "postalPrefix": "021"},
        }
    ).encode()


def test_runtime_failure_quarantines_with_rule_source_and_masked_value_and_batch_goes_on(session):
    mapper = registry.get_mapper("crm", "enrollment", version=1)
    items = [
        Inbound("crm", "enrollment", "test", _crm(1), NOW),
        Inbound("crm", "enrollment", "test", _crm(2, coi="CH-SMITHSON-JOHANNA"), NOW),
        Inbound("crm", "enrollment", "test", _crm(3, therapy="KYM-CD22"), NOW),
        Inbound("crm", "enrollment", "test", _crm(4), NOW),
    ]
    results = pipeline.ingest_batch(session, items, lambda _i: mapper)
    assert [r.appended for r in results] == [1, 0, 0, 1]
    reasons = {e.raw_id: e for e in quarantine.list_entries(session)}
    bad_coi = reasons[results[1].raw_id]
    assert bad_coi.stage == "map" and "rule 'enrolled' field 'patient.coi_id' (from patient.coiId)" in bad_coi.reason
    assert "SMITHSON" not in bad_coi.reason and "<masked str, 19 chars>" in bad_coi.reason
    unknown = reasons[results[2].raw_id]
    assert "value 'KYM-CD22' is not in code map 'therapy'" in unknown.reason


def test_market_residency_drops_and_tokenizes_before_the_central_store(session):
    de = registry.get_mapper("crm", "enrollment", market="DE")
    us = registry.get_mapper("crm", "enrollment", market="US")
    payload = _crm(7, country="DE")
    assert us.map(payload, raw_id=None, checksum="", received_at=NOW)[0].attributes == {"postal_code": "021"}
    event = de.map(payload, raw_id=None, checksum="", received_at=NOW)[0]
    assert "postal_code" not in event.attributes
    orm = registry.get_mapper("hl7", "ORM^O01", market="DE")
    message = (
        b"MSH|^~\\&|KIS|DE-HD-01|CGTHUB|HUB|20260303112000||ORM^O01|HD1|P|2.5.1\r"
        b"PID|1||P-77^^^DE-HD-01^MR\rORC|NW|PL-DE-9|FL-DE-9|CRM-00007|SC||||20260303112000\rOBR|1|PL-DE-9||APH\r"
    )
    placer = orm.map(message, raw_id=None, checksum="", received_at=NOW)[0].refs.hospital_placer_order
    assert placer.startswith("psn:hospital_placer_order:") and "PL-DE-9" not in placer
    result = pipeline.ingest(session, system="crm", kind="enrollment", channel="t", payload=payload, mapper=de)
    order = session.get(Order, next(iter(result.order_ids)))
    assert "postal_code" not in json.dumps(order.projection)
    assert not [value for value in _plain_strings(order.projection) if "021" in value]


def _plain_strings(node):
    """Every string in a JSON tree but keyed tokens, hashes and the hub's own order ids, whose
    random hex may hold any digits."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _plain_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _plain_strings(value)
    elif (
        isinstance(node, str)
        and not node.startswith("psn:")
        and not re.fullmatch(r"[0-9a-f]{64}|ORD-[0-9A-F]{16}", node)
    ):
        yield node


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"[0-9]{14}", fullmatch=True) | st.datetimes().map(lambda d: d.strftime("%Y%m%d%H%M%S")))
def test_an_hl7_timestamp_to_the_second_reads_as_the_general_parser_reads_it(text):
    from zoneinfo import ZoneInfo

    from cgthub.mapping.transforms import TransformError, datetime_transform, parse_datetime

    zone = ZoneInfo("America/New_York")

    def outcome(read, value):
        try:
            return read(value)
        except TransformError as exc:
            return str(exc)

    # The transform's short cut against the general parser's regex path.
    assert outcome(datetime_transform(zone), text) == outcome(lambda v: parse_datetime(v, zone), f" {text} ")
