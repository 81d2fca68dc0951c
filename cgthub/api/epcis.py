"""An order's chain of custody as a GS1 EPCIS 2.0 JSON-LD document, verifiable offline.

Each custody-relevant ledger entry becomes one EPCIS event: what (the apheresis unit's DIN, the
product lot and bags), when (eventTime), where (readPoint, bizLocation), why (bizStep, disposition),
who (sourceList / destinationList parties), and temperature as sensor reports. Manufacturing is a
TransformationEvent from the DIN to the lot; packing into and unpacking from a dry shipper are
AggregationEvents. Identifiers are URNs under `urn:cgthub:`.

The document also carries the order's ledger (`cgthub:ledger`: every entry's body, recorded time
and hashes). `verify_ledger` recomputes the chain with SHA-256 alone, so a consumer can check that
the custody events agree with the ledger without access to the hub. Anyone can recompute those
hashes, so that alone does not show who made the document: the API signs each export with the hub's
Ed25519 key (`cgthub.custody_signing`), which a consumer checks against the public key they pinned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cgthub.ledger import GENESIS
from cgthub.lifecycle import OrderProjection, effective_events, project
from cgthub.model import CanonicalEvent, Direction, EventType
from cgthub.tables import LedgerEntry

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
NAMESPACE = "urn:cgthub:epcis:"
HASH_RULE = (
    "entryHash = sha256_hex(canonical_json({'prev': prevHash, 'order': orderId, 'seq': seq, "
    "'recorded_at': recordedAt, 'body': body})); canonical_json = sorted keys, separators (',', ':'), "
    "UTF-8 unescaped; the first prevHash is 64 zeros and the last entryHash is the head"
)

# event type -> (EPCIS type, action, bizStep, disposition). Events not listed carry no custody.
_EVENTS: dict[EventType, tuple[str, str, str, str]] = {
    EventType.APHERESIS_COLLECTED: ("ObjectEvent", "ADD", "collecting", "active"),
    EventType.SHIPMENT_PICKED_UP: ("ObjectEvent", "OBSERVE", "shipping", "in_transit"),
    EventType.SHIPMENT_IN_TRANSIT: ("ObjectEvent", "OBSERVE", "transporting", "in_transit"),
    EventType.SHIPMENT_CUSTOMS_HOLD: ("ObjectEvent", "OBSERVE", "holding", "unavailable"),
    EventType.SHIPMENT_DELIVERED: ("ObjectEvent", "OBSERVE", "arriving", "in_progress"),
    EventType.TEMPERATURE_EXCURSION: ("ObjectEvent", "OBSERVE", "sensor_reporting", "non_conformant"),
    EventType.MATERIAL_RECEIVED_AT_CMO: ("ObjectEvent", "OBSERVE", "receiving", "in_progress"),
    EventType.MANUFACTURING_STARTED: ("TransformationEvent", "", "commissioning", "in_progress"),
    EventType.QC_STARTED: ("ObjectEvent", "OBSERVE", "inspecting", "in_progress"),
    EventType.PRODUCT_OOS: ("ObjectEvent", "OBSERVE", "inspecting", "non_conformant"),
    EventType.PRODUCT_RELEASED: ("ObjectEvent", "OBSERVE", "inspecting", "conformant"),
    EventType.OOS_RELEASED_UNDER_EXCEPTION: ("ObjectEvent", "OBSERVE", "inspecting", "conformant"),
    EventType.OOS_TERMINATED: ("ObjectEvent", "DELETE", "destroying", "destroyed"),
    EventType.PRODUCT_RECEIVED_AT_SITE: ("ObjectEvent", "OBSERVE", "receiving", "in_progress"),
    EventType.INFUSED: ("ObjectEvent", "DELETE", "dispensing", "dispensed"),
    EventType.CUSTODY_SCANNED: ("ObjectEvent", "OBSERVE", "inspecting", "conformant"),  # non_conformant: no match
}
_PRODUCT_STAGE = {
    EventType.QC_STARTED,
    EventType.PRODUCT_OOS,
    EventType.PRODUCT_RELEASED,
    EventType.OOS_RELEASED_UNDER_EXCEPTION,
    EventType.OOS_TERMINATED,
    EventType.PRODUCT_RECEIVED_AT_SITE,
    EventType.INFUSED,
}


def urn(kind: str, value: str) -> str:
    return f"urn:cgthub:{kind}:{quote(value, safe='-._~*')}"


def _uri(value: str, kind: str) -> str:
    """A custody field as given by a partner: kept when it is already a URI, else put under our URNs."""
    if value.startswith(("urn:", "https://", "http://")):
        return value
    return urn(kind, value)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _offset(value: datetime) -> str:
    delta = value.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def build_document(
    order: OrderProjection, entries: Sequence[LedgerEntry], *, order_id: str, head: str, created: datetime
) -> dict[str, Any]:
    """The EPCIS 2.0 document of one order from its projection and ledger entries (in seq order)."""
    decoded = [(entry, CanonicalEvent.model_validate_json(entry.body)) for entry in entries]
    alive = {e.key for e in effective_events(event for _, event in decoded)}
    by_key = {event.key: entry for entry, event in decoded}
    events: list[dict[str, Any]] = []
    for event in sorted((ev for _, ev in decoded if ev.key in alive), key=lambda e: (e.occurred_at, by_key[e.key].seq)):
        built = _event(order, event, by_key[event.key])
        if built is not None:
            events.extend(_with_shipper(order, event, built))
    return {
        "@context": [EPCIS_CONTEXT, {"cgthub": NAMESPACE}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _time(created),
        "instanceIdentifier": f"{order_id}:{len(entries)}:{head[:16]}",
        "epcisBody": {"eventList": events},
        "cgthub:ledger": {
            "orderId": order_id,
            "length": len(entries),
            "head": head,
            "hashRule": HASH_RULE,
            "entries": [
                {
                    "seq": entry.seq,
                    "recordedAt": entry.recorded_at.isoformat(),
                    "prevHash": entry.prev_hash,
                    "entryHash": entry.entry_hash,
                    "body": entry.body,
                }
                for entry in entries
            ],
        },
    }


def _event(order: OrderProjection, event: CanonicalEvent, entry: LedgerEntry) -> dict[str, Any] | None:
    spec = _EVENTS.get(event.event_type)
    if spec is None:
        return None
    kind, action, biz_step, disposition = spec
    custody = event.custody
    if custody and custody.biz_step:
        biz_step = custody.biz_step
    if custody and custody.disposition:
        disposition = custody.disposition
    out: dict[str, Any] = {
        "type": kind,
        "eventID": f"urn:cgthub:ledger:{quote(order.order_id, safe='-._~')}:{entry.seq}",
        "eventTime": _time(event.occurred_at),
        "eventTimeZoneOffset": _offset(event.occurred_at),
        "recordTime": _time(entry.recorded_at),
    }
    what = _what(order, event)
    if kind == "TransformationEvent":
        out["inputEPCList"] = [urn("din", d) for d in (order.dins or [])] or [urn("order", order.order_id)]
        outputs = _product_epcs(order, event)
        if outputs:
            out["outputEPCList"] = outputs
        out["transformationID"] = urn("transformation", order.order_id)
    else:
        out["action"] = action
        out["epcList"] = what
    out["bizStep"] = biz_step
    out["disposition"] = disposition
    place, party = _where(order, event)
    if custody and custody.read_point:
        out["readPoint"] = {"id": _uri(custody.read_point, "location")}
    elif place:
        out["readPoint"] = {"id": place}
    if custody and custody.biz_location:
        out["bizLocation"] = {"id": _uri(custody.biz_location, "location")}
    elif place:
        out["bizLocation"] = {"id": place}
    if event.shipment:
        out["bizTransactionList"] = [{"type": "bol", "bizTransaction": urn("shipment", event.shipment.shipment_id)}]
    sources, destinations = _parties(order, event, custody, party)
    if sources:
        out["sourceList"] = sources
    if destinations:
        out["destinationList"] = destinations
    sensors = _sensors(event)
    if sensors:
        out["sensorElementList"] = sensors
    out["cgthub:eventType"] = event.event_type.value
    out["cgthub:source"] = f"{event.source_system.value}:{event.source_event_id}"
    out["cgthub:ledgerSeq"] = entry.seq
    out["cgthub:entryHash"] = entry.entry_hash
    return out


def _with_shipper(order: OrderProjection, event: CanonicalEvent, built: dict[str, Any]) -> list[dict[str, Any]]:
    """A pickup packs the material into the dry shipper and a delivery unpacks it: AggregationEvents
    around the ObjectEvent, so the custody chain says which container carried which unit."""
    kind = event.event_type
    if event.shipment is None or kind not in (EventType.SHIPMENT_PICKED_UP, EventType.SHIPMENT_DELIVERED):
        return [built]
    view = order.shipments.get(event.shipment.shipment_id)
    shipper = event.shipment.shipper_id or (view.shipper_id if view else None)
    if not shipper:
        return [built]
    packing = kind is EventType.SHIPMENT_PICKED_UP
    aggregation: dict[str, Any] = {
        "type": "AggregationEvent",
        "eventID": f"{built['eventID']}:{'packing' if packing else 'unpacking'}",
        "eventTime": built["eventTime"],
        "eventTimeZoneOffset": built["eventTimeZoneOffset"],
        "recordTime": built["recordTime"],
        "parentID": urn("shipper", shipper),
        "childEPCs": built["epcList"],
        "action": "ADD" if packing else "DELETE",
        "bizStep": "packing" if packing else "unpacking",
        "disposition": "container_closed" if packing else "container_open",
    }
    for field in ("readPoint", "bizLocation", "bizTransactionList"):
        if field in built:
            aggregation[field] = built[field]
    for field in ("cgthub:eventType", "cgthub:source", "cgthub:ledgerSeq", "cgthub:entryHash"):
        aggregation[field] = built[field]
    return [aggregation, built] if packing else [built, aggregation]


def _product_epcs(order: OrderProjection, event: CanonicalEvent) -> list[str]:
    lot = (event.material.lot if event.material else None) or order.lot
    bags = list(event.material.bag_ids) if event.material and event.material.bag_ids else list(order.bag_ids)
    return ([urn("lot", lot)] if lot else []) + [urn("bag", b) for b in bags]


def _what(order: OrderProjection, event: CanonicalEvent) -> list[str]:
    if event.custody and event.custody.what:
        return list(dict.fromkeys(_uri(w, "item") for w in event.custody.what))
    product_stage = event.event_type in _PRODUCT_STAGE or (
        event.shipment is not None and _direction(order, event) is Direction.TO_SITE
    )
    if product_stage:
        epcs = _product_epcs(order, event)
        if epcs:
            return epcs
    dins = [event.material.din] if event.material and event.material.din else list(order.dins)
    return [urn("din", d) for d in dins if d] or [urn("order", order.order_id)]


def _direction(order: OrderProjection, event: CanonicalEvent) -> Direction:
    if event.shipment and event.shipment.direction:
        return event.shipment.direction
    known = order.shipments.get(event.shipment.shipment_id) if event.shipment else None
    if known is not None and known.direction:
        return Direction(known.direction)
    return Direction.TO_CMO


def _where(order: OrderProjection, event: CanonicalEvent) -> tuple[str | None, str | None]:
    """(location URN, party URN) where the event happened, from what the order knows."""
    site = urn("site", order.site) if order.site else None
    cmo = urn("cmo", order.cmo) if order.cmo else None
    kind = event.event_type
    if event.shipment is not None:
        courier = urn("courier", event.shipment.courier) if event.shipment.courier else None
        to_site = _direction(order, event) is Direction.TO_SITE
        if kind is EventType.SHIPMENT_PICKED_UP:
            return (cmo if to_site else site), courier
        if kind is EventType.SHIPMENT_DELIVERED:
            return (site if to_site else cmo), courier
        return None, courier
    if kind in (EventType.APHERESIS_COLLECTED, EventType.PRODUCT_RECEIVED_AT_SITE, EventType.INFUSED):
        return site, site
    return cmo, cmo


def _parties(
    order: OrderProjection, event: CanonicalEvent, custody: Any, party: str | None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    sources: list[dict[str, str]] = []
    destinations: list[dict[str, str]] = []
    if custody and custody.possessing_party:
        destinations.append({"type": "possessing_party", "destination": _uri(custody.possessing_party, "party")})
    if custody and custody.owning_party:
        destinations.append({"type": "owning_party", "destination": _uri(custody.owning_party, "party")})
    if destinations or event.shipment is None:
        return sources, destinations
    site = urn("site", order.site) if order.site else None
    cmo = urn("cmo", order.cmo) if order.cmo else None
    origin, target = (cmo, site) if _direction(order, event) is Direction.TO_SITE else (site, cmo)
    if event.event_type is EventType.SHIPMENT_PICKED_UP:
        if origin:
            sources.append({"type": "possessing_party", "source": origin})
        if party:
            destinations.append({"type": "possessing_party", "destination": party})
    elif event.event_type is EventType.SHIPMENT_DELIVERED:
        if party:
            sources.append({"type": "possessing_party", "source": party})
        if target:
            destinations.append({"type": "possessing_party", "destination": target})
    return sources, destinations


def _sensors(event: CanonicalEvent) -> list[dict[str, Any]]:
    """Temperature as EPCIS sensor reports: the logger's range, and each excursion as an alarm."""
    shipment = event.shipment
    metadata: dict[str, Any] = {}
    if shipment and shipment.shipper_id:
        metadata["deviceID"] = urn("shipper", shipment.shipper_id)
    reports: list[dict[str, Any]] = []
    temperature = shipment.temperature if shipment else None
    if temperature and (temperature.min_c is not None or temperature.max_c is not None):
        report: dict[str, Any] = {"type": "Temperature", "uom": "CEL"}
        if temperature.min_c is not None:
            report["minValue"] = temperature.min_c
        if temperature.max_c is not None:
            report["maxValue"] = temperature.max_c
        reports.append(report)
    for excursion in temperature.excursions if temperature else ():
        reports.append(
            {
                "type": "Temperature",
                "exception": "ALARM_CONDITION",
                "time": _time(excursion.started_at),
                "value": excursion.extreme_c,
                "uom": "CEL",
            }
        )
    extreme = event.attributes.get("extreme_c")
    if not reports and event.event_type is EventType.TEMPERATURE_EXCURSION and isinstance(extreme, int | float):
        reports.append(
            {
                "type": "Temperature",
                "exception": "ALARM_CONDITION",
                "time": _time(event.occurred_at),
                "value": float(extreme),
                "uom": "CEL",
            }
        )
    if not reports:
        return []
    element: dict[str, Any] = {"sensorReport": reports}
    if metadata:
        element["sensorMetadata"] = metadata
    return [element]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def not_a_custody_document(document: Any) -> str | None:
    """Why `document` is not a custody document at all, or None when it has the shape of one.

    Asked before any hash is checked: a FHIR bundle or an empty object is the wrong file, not a
    tampered ledger, and saying so sends the reader to the right fix.
    """
    if not isinstance(document, dict):
        return f"it is a JSON {type(document).__name__}, not an object"
    if document.get("resourceType"):
        return f"it is a FHIR {document['resourceType']}, not an EPCIS document"
    if document.get("type") != "EPCISDocument":
        return 'it has no "type": "EPCISDocument"'
    ledger = document.get("cgthub:ledger")
    if not isinstance(ledger, dict) or not isinstance(ledger.get("entries"), list):
        return "it carries no cgthub:ledger with entries"
    return None


def verify_ledger(document: dict[str, Any]) -> list[str]:
    """Problems found recomputing the document's ledger chain; empty when it verifies.

    Needs nothing but the document: each entry's hash is recomputed from its body, the entries must
    chain from the genesis hash to the stated head, and every custody event must cite an entry.
    """
    ledger = document.get("cgthub:ledger") or {}
    order_id = ledger.get("orderId")
    problems: list[str] = []
    prev = GENESIS
    hashes: set[str] = set()
    for position, entry in enumerate(ledger.get("entries") or [], start=1):
        if entry.get("seq") != position:
            problems.append(f"entry {position}: sequence says {entry.get('seq')}")
        if entry.get("prevHash") != prev:
            problems.append(f"entry {position}: does not link to the previous entry")
        material = _canonical(
            {
                "prev": entry.get("prevHash"),
                "order": order_id,
                "seq": entry.get("seq"),
                "recorded_at": entry.get("recordedAt"),
                "body": entry.get("body"),
            }
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        if digest != entry.get("entryHash"):
            problems.append(f"entry {position}: content does not match its hash")
        prev = str(entry.get("entryHash"))
        hashes.add(prev)
    if prev != ledger.get("head"):
        problems.append("the last entry is not the stated head")
    for event in document.get("epcisBody", {}).get("eventList", []):
        if event.get("cgthub:entryHash") not in hashes:
            problems.append(f"event {event.get('eventID')} cites no ledger entry")
    if not problems:
        problems = _events_unlike_the_ledger(document)
    return problems


def _events_unlike_the_ledger(document: dict[str, Any]) -> list[str]:
    """Each custody event compared with the one its ledger entries make: an event edited while its
    entry hash was kept (a temperature, a place, a time), one added or one left out is found."""
    ledger = document["cgthub:ledger"]
    entries: list[LedgerEntry] = []
    for position, entry in enumerate(ledger["entries"], start=1):
        try:
            recorded = datetime.fromisoformat(str(entry.get("recordedAt")))
            CanonicalEvent.model_validate_json(entry.get("body") or "")
        except ValueError:
            return [f"entry {position}: its body is not an event the hub records"]
        entries.append(
            LedgerEntry(
                seq=entry["seq"],
                recorded_at=recorded,
                prev_hash=entry["prevHash"],
                entry_hash=entry["entryHash"],
                body=entry["body"],
            )
        )
    order_id = str(ledger.get("orderId"))
    state = project(order_id, (CanonicalEvent.model_validate_json(e.body) for e in entries))
    made = build_document(state, entries, order_id=order_id, head=str(ledger.get("head")), created=datetime.now(UTC))
    expected = {event["eventID"]: event for event in made["epcisBody"]["eventList"]}
    given = document.get("epcisBody", {}).get("eventList", [])
    problems = [
        f"event {event.get('eventID')} does not say what its ledger entry says"
        for event in given
        if expected.get(event.get("eventID")) != event
    ]
    named = {event.get("eventID") for event in given}
    problems += [f"event {event_id} of the ledger is missing" for event_id in expected if event_id not in named]
    return problems
