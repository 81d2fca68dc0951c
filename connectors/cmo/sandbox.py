"""A CMO on loopback: manufacturing capacity and slot reservations, a sequenced event feed in the
shape of mappings/cmo/batch_event fixtures, status notifications with idempotency keys, and the
nightly batch-record CSV export (mappings/cmo/batch_record) written into a drop directory.

Capacity is counted per CMO site, therapy and day (clean-room suites): `GET /api/v1/capacity`
publishes it, `POST /api/v1/slots` reserves one place (409 when the day is full; the same
Idempotency-Key answers the same reservation again, full day or not), and
`POST /api/v1/slots/{reservationId}/release` gives it back (idempotent per key; a place is never
given back twice). Unless a test or the demo
sets a day's capacity (`POST /sandbox/capacity`), weekdays have 0-2 places, from a fixed pattern,
and weekends none.
"""

from __future__ import annotations

import csv
import random
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from connectors.common.sandbox import FaultConfig, FaultInjector

MAX_RANGE_DAYS = 366
SlotKey = tuple[str, str, date]  # (cmo, therapy, day)


def default_capacity(cmo: str, therapy: str, day: date) -> int:
    """The sandbox's standing plan: 0-2 places on a weekday, none at weekends (same every run)."""
    if day.weekday() >= 5:
        return 0
    return (day.toordinal() * 7 + sum(map(ord, cmo + therapy))) % 3


CSV_COLUMNS = ["batch_id", "order_reference", "coi_id", "din", "lot", "step", "step_time", "result"]


class CmoState:
    def __init__(self, api_key: str, faults: FaultConfig) -> None:
        self.api_key, self.faults = api_key, faults
        self.random = random.Random(faults.seed + 3)
        self.events: list[dict[str, Any]] = []
        self.slots: dict[str, dict[str, Any]] = {}  # reservations by Idempotency-Key
        self.releases: dict[str, dict[str, Any]] = {}  # releases by Idempotency-Key
        self.capacity: dict[SlotKey, int] = {}  # days whose capacity was set (else default_capacity)
        self.booked: dict[SlotKey, int] = {}
        self.refused: int = 0  # reservations answered 409
        self.cmos: tuple[str, ...] = ()  # the CMO sites whose capacity it publishes
        self.therapies: tuple[str, ...] = ()
        self.standing_plan = True
        self.notifications: dict[str, dict[str, Any]] = {}
        self.batch_records: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def add_event(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            seq = len(self.events) + 1
            stored = {"messageId": f"CMO-MSG-{seq:06d}", "seq": seq, **event}
            self.events.append(stored)
            return stored

    def places(self, key: SlotKey) -> int:
        if key in self.capacity:
            return self.capacity[key]
        return default_capacity(*key) if self.standing_plan else 0

    def export(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"batch_records_{datetime.now(UTC):%Y%m%d%H%M%S%f}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.batch_records)
        self.batch_records = []
        return path


CMO_SITES = ("CMO-NJ", "CMO-LEI", "CMO-EAST")
THERAPIES = ("CART-19", "CART-BCMA")


def create_app(
    *,
    api_key: str = "cmo-key",
    faults: FaultConfig | None = None,
    cmos: tuple[str, ...] = CMO_SITES,
    therapies: tuple[str, ...] = THERAPIES,
    standing_plan: bool = True,
) -> Any:
    """`standing_plan=False`: no capacity but what is set through /sandbox/capacity (for tests)."""
    faults = faults or FaultConfig.from_env()
    state = CmoState(api_key, faults)
    state.cmos, state.therapies, state.standing_plan = cmos, therapies, standing_plan
    app = FastAPI(title="CMO sandbox")

    def authorize(authorization: str | None) -> None:
        if authorization != f"ApiKey {state.api_key}":
            raise HTTPException(401, "missing or wrong API key")

    @app.get("/api/v1/capacity")
    def capacity(
        from_: date = Query(alias="from"),
        to: date = Query(),
        therapy: str | None = None,
        cmo: str | None = None,
        authorization: str | None = Header(None),
    ) -> dict[str, Any]:
        """Places per CMO site, therapy and day in [from, to]: capacity, booked, available."""
        authorize(authorization)
        if to < from_ or (to - from_).days > MAX_RANGE_DAYS:
            raise HTTPException(422, f"from..to must be a range of at most {MAX_RANGE_DAYS} days")
        cmos = [cmo] if cmo else list(state.cmos)
        therapies = [therapy] if therapy else list(state.therapies)
        items = []
        with state.lock:
            day = from_
            while day <= to:
                for site in cmos:
                    for kind in therapies:
                        key = (site, kind, day)
                        places, taken = state.places(key), state.booked.get(key, 0)
                        items.append(
                            {
                                "cmo": site,
                                "therapy": kind,
                                "date": day.isoformat(),
                                "capacity": places,
                                "booked": taken,
                                "available": max(places - taken, 0),
                            }
                        )
                day += timedelta(days=1)
        return {"items": items}

    @app.post("/api/v1/slots")
    async def book_slot(
        request: Request, authorization: str | None = Header(None), idempotency_key: str = Header(...)
    ) -> Any:
        """Reserve one place on a day: {cmo, therapy, slotDate, orderReference, hubOrderId}."""
        authorize(authorization)
        body = await request.json()
        with state.lock:
            if idempotency_key in state.slots:
                return state.slots[idempotency_key]
            try:
                key = (str(body["cmo"]), str(body["therapy"]), date.fromisoformat(str(body["slotDate"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise HTTPException(422, f"cmo, therapy and slotDate (YYYY-MM-DD) are required: {exc}") from exc
            taken = state.booked.get(key, 0)
            if taken >= state.places(key):
                state.refused += 1
                return JSONResponse(
                    {"error": "slot_full", "message": f"no place left at {key[0]} for {key[1]} on {key[2]}"},
                    status_code=409,
                )
            state.booked[key] = taken + 1
            slot = {
                "reservationId": f"RSV-{len(state.slots) + 1:05d}",
                "cmo": key[0],
                "therapy": key[1],
                "slotDate": key[2].isoformat(),
                "orderReference": body.get("orderReference"),
                "hubOrderId": body.get("hubOrderId"),
                "confirmed": True,
            }
            state.slots[idempotency_key] = slot
            return slot

    @app.post("/api/v1/slots/{reservation_id}/release")
    async def release_slot(
        reservation_id: str, authorization: str | None = Header(None), idempotency_key: str = Header(...)
    ) -> Any:
        """Give a reserved place back: the day has it free again. The same Idempotency-Key answers the
        same release; a reservation released already is not released twice (404 for one unknown)."""
        authorize(authorization)
        with state.lock:
            if idempotency_key in state.releases:
                return state.releases[idempotency_key]
            slot = next((s for s in state.slots.values() if s["reservationId"] == reservation_id), None)
            if slot is None:
                return JSONResponse(
                    {"error": "not_found", "message": f"no reservation {reservation_id}"}, status_code=404
                )
            if slot["confirmed"]:
                key = (slot["cmo"], slot["therapy"], date.fromisoformat(slot["slotDate"]))
                state.booked[key] = max(state.booked.get(key, 0) - 1, 0)
                slot["confirmed"], slot["releasedAt"] = False, datetime.now(UTC).isoformat()
            answer = {"reservationId": reservation_id, "released": True, "releasedAt": slot["releasedAt"]}
            state.releases[idempotency_key] = answer
            return answer

    @app.get("/api/v1/events")
    def events(after: int = 0, limit: int = 200, authorization: str | None = Header(None)) -> dict[str, Any]:
        authorize(authorization)
        with state.lock:
            page = [e for e in state.events if e["seq"] > after][:limit]
        last = page[-1]["seq"] if page else after
        if faults.duplicate_rate and page and state.random.random() < faults.duplicate_rate:
            page = [*page, page[0]]
        if faults.reorder:
            page = state.random.sample(page, len(page))
        return {"items": page, "next": last}

    @app.post("/api/v1/notifications")
    async def notify(
        request: Request, authorization: str | None = Header(None), idempotency_key: str = Header(...)
    ) -> Any:
        authorize(authorization)
        state.notifications.setdefault(idempotency_key, await request.json())
        return {"accepted": True}

    @app.post("/sandbox/events")
    async def sandbox_event(request: Request) -> dict[str, Any]:
        return state.add_event(await request.json())

    @app.post("/sandbox/capacity")
    async def sandbox_capacity(request: Request) -> dict[str, Any]:
        """Set days' capacity: [{cmo, therapy, date, capacity}] (what the CMO's planners publish)."""
        rows = await request.json()
        with state.lock:
            for row in rows:
                state.capacity[(str(row["cmo"]), str(row["therapy"]), date.fromisoformat(str(row["date"])))] = int(
                    row["capacity"]
                )
        return {"set": len(rows)}

    @app.post("/sandbox/batch_records")
    async def sandbox_batch_records(request: Request) -> dict[str, Any]:
        """Steps the CMO's MES records for its nightly export (rows in the export's CSV columns)."""
        rows = await request.json()
        with state.lock:
            state.batch_records.extend({column: str(row.get(column) or "") for column in CSV_COLUMNS} for row in rows)
            return {"pending": len(state.batch_records)}

    @app.post("/sandbox/export")
    async def sandbox_export(request: Request) -> dict[str, Any]:
        """The nightly export: what was recorded since the last one, as a CSV file in the drop directory."""
        directory = Path((await request.json())["directory"])
        with state.lock:
            rows = len(state.batch_records)
            path = state.export(directory) if rows else None
        return {"file": str(path) if path else None, "rows": rows}

    served = FaultInjector(app, faults)
    served.sandbox_state = state
    return served
