"""`POST /verify`: a label scanned at a handoff or the bedside, checked against its order.

The key needs the `scan:write` scope (or `admin`) and a data scope that covers the order's site: an
order outside it answers 404 exactly like one that does not exist. The answer is match or no match
and which identifier differed, never the order's own identifiers; every scan enters the order's
ledger, and a no-match holds the order and opens a critical alert (`cgthub.scan_verification`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from cgthub import scan_verification
from cgthub.api.auth import Principal, Scope
from cgthub.api.deps import WRITE_SESSION, authorized
from cgthub.api.errors import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiError, ErrorResponse, not_found
from cgthub.scan_verification import Scan, ScanResult, Step
from cgthub.tables import Order

router = APIRouter(
    tags=["scan verification"],
    responses=ERROR_RESPONSES
    | {
        404: NOT_FOUND_RESPONSE,
        409: {"model": ErrorResponse, "description": "Nothing on record to compare the scan with"},
    },
)
_CODE = "^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
# The DIN as a scanner sends it (`=`, 13 characters, two flag digits; the check character is not in
# the barcode) or as a person types it from the label (13, flags optional, the boxed check character).
_DIN = "^(=[A-Z][0-9A-Z]{4}[0-9]{10}|[A-Z][0-9A-Z]{4}[0-9]{8}([0-9]{2})?[0-9A-Z*]?)$"
_COI = "^CH[A-Z][0-9A-Z]{4}[0-9]{8}$"


class VerifyRequest(BaseModel):
    """One scan: the order, the step, what was scanned, and where."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"anyOf": [{"required": ["din"]}, {"required": ["coi_id"]}]}
    )

    order_id: str = Field(min_length=1, max_length=40, description="the hub's order id (ORD-...)")
    step: Step
    din: str | None = Field(
        default=None,
        pattern=_DIN,
        description="the ISBT 128 DIN as scanned (`=`, 13 characters, two flag digits) or typed from the label",
    )
    coi_id: str | None = Field(default=None, pattern=_COI, description="the CoI id on the label")
    site: str | None = Field(default=None, max_length=64, pattern=_CODE, description="where: site or CMO id")
    location: str | None = Field(default=None, max_length=64, pattern=_CODE, description="where inside it")
    operator: str | None = Field(default=None, max_length=64, pattern=_CODE, description="who scanned, per the site")
    scanned_at: AwareDatetime | None = Field(default=None, description="when (with offset); default: now")
    scan_id: str | None = Field(default=None, max_length=64, pattern=_CODE, description="a resend records it once")


class VerifyResult(ScanResult):
    """Match or no match, which identifier differed, the scan's place in the ledger, the hold."""


@router.post("/verify", response_model=VerifyResult, summary="Check a scanned label against its order")
def verify(
    body: VerifyRequest,
    principal: Principal = Depends(authorized(Scope.SCAN)),
    session: Session = WRITE_SESSION,
) -> VerifyResult:
    order = session.get(Order, body.order_id)
    if order is None or not principal.can_see(site=order.site, cmo=order.cmo, market=order.market):
        raise not_found()
    who = f"api_key:{principal.key_id}" + (f"/{body.operator}" if body.operator else "")
    scan = Scan(
        order_id=order.id,
        step=body.step,
        scanned_by=who,
        din=body.din,
        coi_id=body.coi_id,
        site=body.site,
        location=body.location,
        scanned_at=body.scanned_at,
        scan_id=body.scan_id,
    )
    try:
        result = scan_verification.verify(session, scan)
    except scan_verification.ScanRefused as exc:
        raise ApiError(409 if exc.code == "nothing_to_compare" else 422, exc.code, exc.message) from exc
    return VerifyResult(**result.model_dump())
