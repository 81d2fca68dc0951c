"""What the API answers, as pydantic models: the OpenAPI schema is generated from these."""

from __future__ import annotations

from datetime import datetime

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from cgthub.lifecycle import OrderStatus


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderSummary(_Out):
    id: str
    therapy: str | None
    market: str | None
    site: str | None
    cmo: str | None
    status: OrderStatus = Field(description="normalized status; on_hold when held")
    on_hold: bool
    status_since: datetime | None
    last_event_at: datetime | None
    updated_at: datetime
    open_alerts: int


class OrderPage(_Out):
    orders: list[OrderSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Milestone(_Out):
    milestone: str
    at: datetime


class CoiSummary(_Out):
    """Chain of identity, without the patient: the COI id and the material ids bound to it."""

    coi_id: str | None
    dins: list[str]
    lot: str | None
    bag_count: int
    discrepancy: bool = Field(description="an open chain-of-identity discrepancy alert exists")


class AlertView(_Out):
    id: int
    kind: str
    severity: str
    message: str
    opened_at: datetime


class ShipmentSummary(_Out):
    shipment_id: str
    direction: str | None
    courier: str | None
    last_event: str | None
    last_event_at: datetime | None
    customs_hold: bool
    excursions: int


class LedgerHead(_Out):
    length: int
    head: str


class PatientView(_Out):
    """Keyed pseudonyms of the patient's identifiers (custody:read or admin keys only)."""

    pseudonyms: dict[str, str]


class OrderDetail(OrderSummary):
    stage: OrderStatus
    hold_reason: str | None
    milestones: list[Milestone]
    scheduled: dict[str, datetime]
    skipped_milestones: list[str]
    external_refs: dict[str, list[str]] = Field(description="each partner system's own ids for this order")
    coi: CoiSummary
    shipments: list[ShipmentSummary]
    alerts: list[AlertView]
    vein_to_vein_days: float | None
    released_under_exception: bool
    ledger: LedgerHead
    patient: PatientView | None = None


class TimelineEntry(_Out):
    seq: int
    event_type: str
    source_system: str
    source_event_id: str
    occurred_at: datetime
    received_at: datetime
    recorded_at: datetime
    mapping_id: str
    mapping_version: str
    raw_checksum: str | None
    supersedes: str | None
    effective: bool = Field(description="false when a later correction superseded this event")
    entry_hash: str
    prev_hash: str


class Timeline(_Out):
    order_id: str
    entries: list[TimelineEntry]


class ChangeEvent(_Out):
    cursor: str = Field(description="resume after this event with `after=<cursor>`")
    order_id: str
    status: OrderStatus
    previous_status: OrderStatus | None
    on_hold: bool
    changed: list[str]
    milestones: dict[str, datetime]
    status_since: datetime | None
    recorded_at: datetime


class ChangePage(_Out):
    events: list[ChangeEvent]
    next_cursor: str = Field(description="pass as `after` next time; unchanged when there was nothing new")


class SubscriptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl = Field(description="http(s) URL that receives POSTed change events")
    statuses: list[OrderStatus] = Field(default=[], max_length=20, description="only these statuses; empty = all")


class Subscription(_Out):
    id: str
    url: str
    statuses: list[OrderStatus]
    active: bool
    created_at: datetime
    delivery: dict[str, int] = Field(default={}, description="outbox messages per status")


class SubscriptionCreated(Subscription):
    secret: str = Field(description="HMAC-SHA256 key of the X-CGTHub-Signature header; shown only once")


class ReplayResult(_Out):
    replayed: int


class Health(_Out):
    status: str
