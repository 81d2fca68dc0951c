"""The canonical CGT order model: the one language every connector and mapping speaks.

Pydantic v2 models at the edge of the core. Patient identity is carried only as a chain-of-identity
id and pseudonyms (keyed HMACs); a model that would hold a clear MRN refuses to validate.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator
from pydantic_core import CoreSchema, core_schema

from cgthub.identifiers import normalize_din, validate_coi_id
from cgthub.jsontext import canonical_json, orjson_writes_it
from cgthub.pseudonym import is_pseudonym


class SourceSystem(str):
    """Which system an event came from: a declared partner's name (`cgthub.partners`) or the hub's own.

    Open, not an enum, so a partner added as one folder brings its own name; the canonical model
    checks only the name's form (the mapping spec checks it is declared), so events of a partner
    that has since left still read. It is stored as the plain text. One instance per name, so the
    built-in constants (`SourceSystem.HL7`) compare by `is` and `.value` reads as an enum member's did.
    """

    PATTERN: ClassVar[str] = r"^[a-z][a-z0-9_]{1,31}$"  # fits the ledger's source_system column
    CRM: ClassVar[SourceSystem]
    ERP: ClassVar[SourceSystem]
    HL7: ClassVar[SourceSystem]
    COURIER: ClassVar[SourceSystem]
    CMO: ClassVar[SourceSystem]
    HUB: ClassVar[SourceSystem]

    value: str  # the plain text, as stored and hashed
    _value_: str  # the same; the name an enum member's plain attribute had
    _interned: ClassVar[dict[str, SourceSystem]] = {}
    _form: ClassVar[re.Pattern[str]] = re.compile(PATTERN)

    def __new__(cls, name: str) -> SourceSystem:
        known = cls._interned.get(name)
        if known is not None:
            return known
        text = str(name)
        if not cls._form.match(text):
            raise ValueError(f"{text[:40]!r} is not a source system name (lower case, digits, _; 2-32 long)")
        made = super().__new__(cls, text)
        made.value = made._value_ = text
        if len(cls._interned) < _INTERNED_LIMIT:
            cls._interned[text] = made
        return made

    def __repr__(self) -> str:
        return f"SourceSystem({self.value!r})"

    def __reduce__(self) -> tuple[type[SourceSystem], tuple[str]]:
        return (SourceSystem, (self.value,))

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(pattern=cls.PATTERN),
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"),
        )


_INTERNED_LIMIT = 4096  # names are few; past this a name is still valid, just not shared
SourceSystem.CRM = SourceSystem("crm")
SourceSystem.ERP = SourceSystem("erp")
SourceSystem.HL7 = SourceSystem("hl7")
SourceSystem.COURIER = SourceSystem("courier")
SourceSystem.CMO = SourceSystem("cmo")
SourceSystem.HUB = SourceSystem("cgthub")


class EventType(StrEnum):
    """What happened to an order. The lifecycle decides what each one does to its status."""

    ORDER_ENROLLED = "order.enrolled"
    ORDER_UPDATED = "order.updated"
    SLOT_BOOKED = "slot.booked"
    APHERESIS_SCHEDULED = "apheresis.scheduled"
    APHERESIS_COLLECTED = "apheresis.collected"
    SHIPMENT_BOOKED = "shipment.booked"
    SHIPMENT_PICKED_UP = "shipment.picked_up"
    SHIPMENT_IN_TRANSIT = "shipment.in_transit"
    SHIPMENT_CUSTOMS_HOLD = "shipment.customs_hold"
    SHIPMENT_DELIVERED = "shipment.delivered"
    TEMPERATURE_EXCURSION = "shipment.temperature_excursion"
    MATERIAL_RECEIVED_AT_CMO = "cmo.material_received"
    MANUFACTURING_STARTED = "cmo.manufacturing_started"
    QC_STARTED = "cmo.qc_started"
    PRODUCT_RELEASED = "cmo.released"
    PRODUCT_OOS = "cmo.out_of_specification"
    OOS_RELEASED_UNDER_EXCEPTION = "cmo.released_under_exception"
    OOS_TERMINATED = "cmo.terminated"
    PRODUCT_RECEIVED_AT_SITE = "site.product_received"
    CUSTODY_SCANNED = "custody.scanned"  # a label scanned at a handoff or the bedside, checked against the order
    INFUSION_SCHEDULED = "infusion.scheduled"
    INFUSED = "infusion.completed"
    ORDER_ON_HOLD = "order.on_hold"
    ORDER_HOLD_RELEASED = "order.hold_released"
    ORDER_RESCHEDULED = "order.rescheduled"
    ORDER_CANCELLED = "order.cancelled"
    IDENTITY_UPDATED = "patient.identity_updated"
    RESULT_RECORDED = "result.recorded"
    ERP_SALES_ORDER_CREATED = "erp.sales_order_created"
    GOODS_MOVEMENT_POSTED = "erp.goods_movement_posted"


class Direction(StrEnum):
    TO_CMO = "to_cmo"
    TO_SITE = "to_site"


def _din(value: str) -> str:
    return normalize_din(value)


def _coi(value: str) -> str:
    return validate_coi_id(value)


Din = Annotated[str, AfterValidator(_din)]
CoiId = Annotated[str, AfterValidator(_coi)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    def __eq__(self, other: object) -> bool:
        """pydantic's answer, without its walk for two of one class: these models hold no private
        attributes, no extras (forbidden) and nothing but their fields in `__dict__`, so equal
        `__dict__`s are pydantic's only way to equal. pydantic compares the field names' key views
        when the values differ (about 18,000 instructions, callgrind): a canonical body compares an
        event's references with their default (`exclude_defaults`), twice an event on a CRM page."""
        if type(other) is type(self):
            return self.__dict__ == other.__dict__
        return super().__eq__(other)


class ExternalRefs(_Model):
    """Each partner's own id for the same order; any one of them finds the order in the hub."""

    crm_order_id: str | None = None
    erp_sales_order: str | None = None
    hospital_placer_order: str | None = None
    hospital_filler_order: str | None = None
    cmo_batch_id: str | None = None
    courier_shipment_ids: tuple[str, ...] = ()

    def pairs(self) -> list[tuple[str, str]]:
        """(kind, value) pairs, the keys of the order reference index."""
        # Written out from `__dict__` in the order of `_SINGLE_REFS` (an import-time check below holds
        # the two to the model's fields): asked several times for every event (qualification,
        # correlation); a loop over the names cost a sixth more, pairs built first and a generator twice.
        values = self.__dict__
        out = []
        if value := values["crm_order_id"]:
            out.append(("crm_order_id", value))
        if value := values["erp_sales_order"]:
            out.append(("erp_sales_order", value))
        if value := values["hospital_placer_order"]:
            out.append(("hospital_placer_order", value))
        if value := values["hospital_filler_order"]:
            out.append(("hospital_filler_order", value))
        if value := values["cmo_batch_id"]:
            out.append(("cmo_batch_id", value))
        if shipments := values["courier_shipment_ids"]:
            out += [("courier_shipment_id", sid) for sid in shipments]
        return out

    def merged(self, other: ExternalRefs) -> ExternalRefs:
        """These references completed by `other`'s (later events fill in, never blank out)."""
        ids = other.courier_shipment_ids
        if not any(self.__dict__.values()) and len(set(ids)) == len(ids):
            return other  # none yet (an order's first event): `other`'s as they are, already unique
        update: dict[str, object] = {}
        for name in _SINGLE_REFS:
            value = getattr(other, name)
            if value and value != getattr(self, name):
                update[name] = value
        if other.courier_shipment_ids and not set(other.courier_shipment_ids) <= set(self.courier_shipment_ids):
            update["courier_shipment_ids"] = tuple(
                dict.fromkeys([*self.courier_shipment_ids, *other.courier_shipment_ids])
            )
        return self.model_copy(update=update) if update else self


_SINGLE_REFS = ("crm_order_id", "erp_sales_order", "hospital_placer_order", "hospital_filler_order", "cmo_batch_id")
if tuple(ExternalRefs.model_fields) != (*_SINGLE_REFS, "courier_shipment_ids"):  # what `pairs` reads
    raise TypeError("ExternalRefs' fields are not _SINGLE_REFS and courier_shipment_ids: update both")


class PatientRef(_Model):
    """Who the material belongs to, without saying who the patient is.

    `pseudonyms` maps an identifier kind (mrn, hospital_patient_id, ...) to its keyed HMAC token.
    """

    coi_id: CoiId | None = None
    pseudonyms: dict[str, str] = Field(default_factory=dict)

    @field_validator("pseudonyms")
    @classmethod
    def _only_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, token in value.items():
            if not is_pseudonym(token):
                raise ValueError(f"patient identifier {kind!r} must be pseudonymized before it enters the hub")
        return value


class OrderDetails(_Model):
    therapy: str | None = None
    market: str | None = Field(default=None, description="ISO 3166-1 alpha-2 country of the treatment site")
    site: str | None = Field(default=None, description="treatment site id")
    cmo: str | None = None

    @field_validator("market")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 2 or not value.isalpha()):
            raise ValueError("market must be a two-letter country code")
        return value.upper() if value else value


class Material(_Model):
    """The apheresis unit (ISBT 128 DIN) and what is made from it (lot, bags)."""

    din: Din | None = None
    lot: str | None = None
    bag_ids: tuple[str, ...] = ()


class TemperatureExcursion(_Model):
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    extreme_c: float
    limit_c: float


class TemperatureSummary(_Model):
    min_c: float | None = None
    max_c: float | None = None
    readings: int = 0
    excursions: tuple[TemperatureExcursion, ...] = ()


class Shipment(_Model):
    shipment_id: str
    courier: str | None = None
    tracking_id: str | None = None
    direction: Direction | None = None
    shipper_id: str | None = None
    temperature: TemperatureSummary | None = None


class Custody(_Model):
    """The EPCIS dimensions of one handover: what, where, who, why (when is the event's occurred_at)."""

    what: tuple[str, ...] = ()
    read_point: str | None = None
    biz_location: str | None = None
    possessing_party: str | None = None
    owning_party: str | None = None
    biz_step: str | None = None
    disposition: str | None = None


class Provenance(_Model):
    """Which mapping made this event from which archived payload."""

    mapping_id: str
    mapping_version: str
    raw_id: int | None = None
    raw_checksum: str | None = None


AttributeValue = str | int | float | bool | None


class CanonicalEvent(_Model):
    """A status or custody event in canonical form, as a mapping produces it.

    Idempotent on (source_system, source_event_id). `supersedes` names the source_event_id of the
    same system that this event corrects (mapping replay appends corrections, never edits).
    """

    source_system: SourceSystem
    source_event_id: str = Field(min_length=1, max_length=200)
    event_type: EventType
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    order_id: str | None = None
    # One shared empty value, not a factory: it is frozen, and `to_json_dict` (exclude_defaults)
    # would call a factory for every event it writes, to compare against (~13,000 instructions).
    refs: ExternalRefs = ExternalRefs()
    patient: PatientRef | None = None
    order: OrderDetails | None = None
    material: Material | None = None
    shipment: Shipment | None = None
    custody: Custody | None = None
    scheduled_for: AwareDatetime | None = None
    reason: str | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    provenance: Provenance
    supersedes: str | None = None
    # The id the mapping's previous version gave this same event (its spec's `former_id`), so the
    # ledger and replay find what that version recorded. Not written or hashed: bodies stay as they were.
    former_id: str | None = Field(default=None, max_length=200, exclude=True)

    @property
    def key(self) -> tuple[str, str]:
        # `_value_`, the member's plain attribute: `.value` is a descriptor, dear on a path that
        # asks for every event's key several times
        return (self.source_system._value_, self.source_event_id)

    def reference_keys(self) -> list[tuple[str, str]]:
        """Partner references that find this event's order, including the shipment it is about."""
        keys = self.refs.pairs()
        if self.shipment and ("courier_shipment_id", self.shipment.shipment_id) not in keys:
            keys.append(("courier_shipment_id", self.shipment.shipment_id))
        return keys

    def all_keys(self) -> list[tuple[str, str]]:
        return self.reference_keys() + self.identity_keys()

    def identity_keys(self) -> list[tuple[str, str]]:
        """Chain-of-identity keys this event asserts about its order."""
        keys: list[tuple[str, str]] = []
        if self.patient and self.patient.coi_id:
            keys.append(("coi_id", self.patient.coi_id))
        if self.material and self.material.din:
            keys.append(("din", self.material.din))
        if self.material and self.material.lot:
            keys.append(("lot", self.material.lot))
        return keys

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)

    def canonical_body(self) -> str:
        """`canonical_json(self.to_json_dict())`, the text the ledger hashes. orjson writes it alike
        except for some floats and big integers, and an event holds floats only in its attributes and
        temperatures (tests/test_ledger.py holds that): when those two parts are ones orjson writes
        alike, its text is the canonical one, without looking through the rest of the event first."""
        data = self.to_json_dict()
        plain = not self.attributes and (self.shipment is None or self.shipment.temperature is None)
        if plain or orjson_writes_it((data.get("attributes"), data.get("shipment", {}).get("temperature"))):
            try:  # a big integer elsewhere (a raw id) or a lone surrogate: canonical_json's own fallback
                return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
            except orjson.JSONEncodeError:
                pass
        return canonical_json(data)
