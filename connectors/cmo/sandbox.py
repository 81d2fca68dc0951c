"""A CMO on loopback: slot booking, a sequenced event feed in the shape of
mappings/cmo/batch_event fixtures, status notifications with idempotency keys, and the nightly
batch-record CSV export (mappings/cmo/batch_record) written into a drop directory.
"""

from __future__ import annotations

import csv
import random
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request

from connectors.common.sandbox import FaultConfig, FaultInjector

CSV_COLUMNS = ["batch_id", "order_reference", "coi_id", "din", "lot", "step", "step_time", "result"]


class CmoState:
    def __init__(self, api_key: str, faults: FaultConfig) -> None:
        self.api_key, self.faults = api_key, faults
        self.random = random.Random(faults.seed + 3)
        self.events: list[dict[str, Any]] = []
        self.slots: dict[str, dict[str, Any]] = {}
        self.notifications: dict[str, dict[str, Any]] = {}
        self.batch_records: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def add_event(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            seq = len(self.events) + 1
            stored = {"messageId": f"CMO-MSG-{seq:06d}", "seq": seq, **event}
            self.events.append(stored)
            return stored

    def export(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"batch_records_{datetime.now(UTC):%Y%m%d%H%M%S%f}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.batch_records)
        self.batch_records = []
        return path


def create_app(*, api_key: str = "cmo-key", faults: FaultConfig | None = None) -> Any:
    faults = faults or FaultConfig.from_env()
    state = CmoState(api_key, faults)
    app = FastAPI(title="CMO sandbox")

    def authorize(authorization: str | None) -> None:
        if authorization != f"ApiKey {state.api_key}":
            raise HTTPException(401, "missing or wrong API key")

    @app.post("/api/v1/slots")
    async def book_slot(
        request: Request, authorization: str | None = Header(None), idempotency_key: str = Header(...)
    ) -> Any:
        authorize(authorization)
        if idempotency_key in state.slots:
            return state.slots[idempotency_key]
        body = await request.json()
        slot = {"batchId": f"B26-{len(state.slots) + 1:04d}", "slotStart": body.get("requestedDate"), "confirmed": True}
        state.slots[idempotency_key] = slot
        return slot

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
