"""Custody as EPCIS 2.0 (validated against GS1's schema, verifiable offline) and the FHIR R4 bundle."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from cgthub import cli
from cgthub.api.epcis import verify_ledger
from cgthub.model import (
    Custody,
    Direction,
    EventType,
    Shipment,
    SourceSystem,
    TemperatureExcursion,
    TemperatureSummary,
)
from tests import api_server
from tests.factories import T0, din, event, happy_path

api = api_server.api

SCHEMA_DIR = Path(__file__).parent / "data" / "epcis"
SCHEMA_SHA256 = "70b7ecb60eb605c6edd230761557763e4d470333510d28619291476de635bf20"


@pytest.fixture(scope="module")
def epcis_validator() -> jsonschema.Draft7Validator:
    raw = (SCHEMA_DIR / "EPCIS-JSON-Schema.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "the vendored GS1 schema was edited"
    schema = json.loads(raw)
    jsonschema.Draft7Validator.check_schema(schema)
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    assert {"uri", "date-time"} <= set(checker.checkers), "format checkers missing (rfc3986/rfc3339 validators)"
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def _order_with_cold_chain(n: int = 1) -> list:
    """The happy path, plus a temperature log on the outbound leg and an excursion on the way back."""
    events = happy_path(n)
    logger = TemperatureSummary(min_c=-190.5, max_c=-160.0, readings=288)
    out = Shipment(
        shipment_id=f"SHP-{n}-OUT", courier="cryo", direction=Direction.TO_CMO, shipper_id="DS-77", temperature=logger
    )
    events[4] = events[4].model_copy(update={"shipment": out})  # delivered at the CMO, with the logger summary
    excursion = TemperatureSummary(
        min_c=-185.0,
        max_c=-140.0,
        readings=300,
        excursions=(
            TemperatureExcursion(
                started_at=T0 + timedelta(days=25, hours=5), ended_at=None, extreme_c=-140.0, limit_c=-150.0
            ),
        ),
    )
    back = Shipment(shipment_id=f"SHP-{n}-BACK", direction=Direction.TO_SITE, shipper_id="DS-78", temperature=excursion)
    events.append(
        event(
            EventType.TEMPERATURE_EXCURSION,
            n,
            at=T0 + timedelta(days=25, hours=5),
            system=SourceSystem.COURIER,
            shipment=back,
        )
    )
    events.append(
        event(
            EventType.SHIPMENT_IN_TRANSIT,
            n,
            at=T0 + timedelta(days=25, hours=2),
            system=SourceSystem.COURIER,
            shipment=Shipment(shipment_id=f"SHP-{n}-BACK"),
            custody=Custody(read_point="HUB-AMS-3", possessing_party="urn:example:courier:cryo", biz_step="departing"),
        )
    )
    return events


def test_custody_is_valid_epcis_2_and_tells_the_chain(api, epcis_validator):
    (order_id,) = api_server.build_orders(api.database_url, [_order_with_cold_chain()])
    response = api.client(api.key("custody:read")).get(f"/orders/{order_id}/custody")
    assert response.status_code == 200 and response.headers["content-type"] == "application/ld+json"
    document = response.json()
    errors = sorted(epcis_validator.iter_errors(document), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]

    events = document["epcisBody"]["eventList"]
    steps = [(e["type"], e["bizStep"], e["disposition"]) for e in events]
    assert steps[0] == ("ObjectEvent", "collecting", "active")
    assert ("ObjectEvent", "shipping", "in_transit") in steps
    assert ("ObjectEvent", "receiving", "in_progress") in steps
    assert ("ObjectEvent", "inspecting", "conformant") in steps
    assert ("ObjectEvent", "sensor_reporting", "non_conformant") in steps
    assert steps[-1] == ("ObjectEvent", "dispensing", "dispensed")

    unit = f"urn:cgthub:din:{din(1)}"
    assert events[0]["epcList"] == [unit] and events[0]["action"] == "ADD"
    assert events[0]["readPoint"] == {"id": "urn:cgthub:site:US-SITE-1"}
    (made,) = [e for e in events if e["type"] == "TransformationEvent"]
    assert made["inputEPCList"] == [unit] and made["outputEPCList"] == ["urn:cgthub:lot:LOT-00001"]
    assert made["bizLocation"] == {"id": "urn:cgthub:cmo:CMO-EAST"}

    pickup = next(e for e in events if e["bizStep"] == "shipping")
    assert pickup["sourceList"] == [{"type": "possessing_party", "source": "urn:cgthub:site:US-SITE-1"}]
    assert pickup["destinationList"] == [{"type": "possessing_party", "destination": "urn:cgthub:courier:cryo"}]
    assert pickup["bizTransactionList"] == [{"type": "bol", "bizTransaction": "urn:cgthub:shipment:SHP-1-OUT"}]

    packed, picked = events[1:3]  # the unit goes into the dry shipper as the courier takes it
    assert picked is pickup and packed["type"] == "AggregationEvent" and packed["action"] == "ADD"
    assert packed["parentID"] == "urn:cgthub:shipper:DS-77" and packed["childEPCs"] == [unit]
    unpacked = next(e for e in events if e.get("bizStep") == "unpacking")
    assert unpacked["action"] == "DELETE" and unpacked["bizLocation"] == {"id": "urn:cgthub:cmo:CMO-EAST"}
    arrived = next(e for e in events if e["bizStep"] == "arriving" and e["epcList"] == [unit])
    (logger,) = arrived["sensorElementList"]
    assert logger["sensorMetadata"] == {"deviceID": "urn:cgthub:shipper:DS-77"}
    assert logger["sensorReport"] == [{"type": "Temperature", "uom": "CEL", "minValue": -190.5, "maxValue": -160.0}]
    alarm = next(e for e in events if e["bizStep"] == "sensor_reporting")
    assert alarm["epcList"] == ["urn:cgthub:lot:LOT-00001"]  # on the way back it is the product that is at risk
    assert {"type": "Temperature", "exception": "ALARM_CONDITION", "value": -140.0, "uom": "CEL"}.items() <= (
        alarm["sensorElementList"][0]["sensorReport"][1].items()
    )
    explicit = next(e for e in events if e["bizStep"] == "departing")
    assert explicit["readPoint"] == {"id": "urn:cgthub:location:HUB-AMS-3"}
    assert explicit["destinationList"] == [{"type": "possessing_party", "destination": "urn:example:courier:cryo"}]


def test_custody_verifies_offline_and_tampering_is_found(api, tmp_path):
    (order_id,) = api_server.build_orders(api.database_url, [happy_path(4)])
    client = api.client(api.key("custody:read", "status:read"))
    document = client.get(f"/orders/{order_id}/custody").json()
    ledger = document["cgthub:ledger"]
    detail = client.get(f"/orders/{order_id}").json()
    assert ledger["head"] == detail["ledger"]["head"] and ledger["length"] == 13
    assert verify_ledger(document) == []

    edited = copy.deepcopy(document)
    body = json.loads(edited["cgthub:ledger"]["entries"][2]["body"])
    body["occurred_at"] = "2026-03-01T00:00:00Z"
    edited["cgthub:ledger"]["entries"][2]["body"] = json.dumps(body)
    assert verify_ledger(edited) == ["entry 3: content does not match its hash"]

    runner = CliRunner()
    saved, bad = tmp_path / "custody.json", tmp_path / "edited.json"
    saved.write_text(json.dumps(document))
    bad.write_text(json.dumps(edited))
    ok = runner.invoke(cli.app, ["api", "verify-custody", str(saved)])
    assert ok.exit_code == 0 and f"verified: order {order_id}, 13 ledger entries" in ok.output
    refused = runner.invoke(cli.app, ["api", "verify-custody", str(bad)])
    assert refused.exit_code == 1 and "entry 3: content does not match its hash" in refused.output

    dropped = copy.deepcopy(document)
    del dropped["cgthub:ledger"]["entries"][5]
    problems = verify_ledger(dropped)
    assert any("does not link" in p for p in problems) and any("cites no ledger entry" in p for p in problems)


def test_schema_check_is_not_vacuous(api, epcis_validator):
    (order_id,) = api_server.build_orders(api.database_url, [happy_path(5)])
    document = api.client(api.key("custody:read")).get(f"/orders/{order_id}/custody").json()
    broken = copy.deepcopy(document)
    del broken["epcisBody"]["eventList"][0]["eventTimeZoneOffset"]
    broken["epcisBody"]["eventList"][1]["bizStep"] = "urn:epcglobal:cbv:bizstep:not-a-step"
    broken["epcisBody"]["eventList"][2]["eventTime"] = "yesterday"
    assert len(list(epcis_validator.iter_errors(broken))) >= 3


def test_fhir_bundle_parses_with_fhir_resources(api):
    before_release = happy_path(6)[:7]  # manufacturing started: apheresis unit consumed, no lot yet
    infused, manufacturing = api_server.build_orders(api.database_url, [happy_path(7), before_release])
    client = api.client(api.key("custody:read"))

    response = client.get(f"/orders/{infused}/fhir")
    assert response.status_code == 200 and response.headers["content-type"] == "application/fhir+json"
    bundle = Bundle.model_validate(response.json())
    assert bundle.type == "collection"
    resources = {entry.resource.get_resource_type(): entry.resource for entry in bundle.entry}
    kinds = [entry.resource.get_resource_type() for entry in bundle.entry]
    assert kinds == ["ServiceRequest", "Task", "BiologicallyDerivedProduct", "BiologicallyDerivedProduct"]
    request, task = resources["ServiceRequest"], resources["Task"]
    assert request.status == "completed" and request.intent == "order"
    assert {(i.system, i.value) for i in request.identifier} >= {
        ("urn:cgthub:order", infused),
        ("urn:cgthub:crm:order", "CRM-00007"),
    }
    assert request.subject.identifier.value == "CHW123426000007"
    assert task.status == "completed" and task.businessStatus.coding[0].code == "infused"
    unit, product = (e.resource for e in bundle.entry[2:])
    assert unit.identifier[0].value == din(7) and unit.collection.collectedDateTime is not None
    assert product.identifier[0].value == "LOT-00007"
    assert product.parent[0].reference == bundle.entry[2].fullUrl

    ongoing = Bundle.model_validate(client.get(f"/orders/{manufacturing}/fhir").json())
    task = next(e.resource for e in ongoing.entry if e.resource.get_resource_type() == "Task")
    assert task.status == "in-progress" and task.code.text == "manufacturing"
    assert [e.resource.id for e in ongoing.entry] == ["order", "current-step", "apheresis-unit", "product"]
