"""The change feed over HTTP: `GET /events?after=CURSOR` pages through order_changes in feed order.

At-least-once and resumable: a consumer stores `next_cursor` after processing a page and resumes
from it; replaying a page after a crash gives the same events again, never skips one.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from sqlalchemy import Text, cast
from sqlalchemy.orm import Session

from cgthub import changes
from cgthub.api.auth import Principal, Scope
from cgthub.api.cursor import decode_feed_cursor, encode_feed_cursor
from cgthub.api.deps import authorized, read_session
from cgthub.api.errors import ERROR_RESPONSES
from cgthub.api.schemas import ChangePage
from cgthub.changes import FeedPosition, OrderChange

router = APIRouter(tags=["change feed"], responses=ERROR_RESPONSES)

MAX_PAGE = 1000


# The JSON columns come back as their stored text and are spliced into the answer unparsed: the feed
# is the consumers' hot path, and parsing then re-serializing milestones doubled its cost.
_COLUMNS = (
    OrderChange.tx,
    OrderChange.id,
    OrderChange.order_id,
    OrderChange.status,
    OrderChange.previous_status,
    OrderChange.on_hold,
    OrderChange.status_since,
    OrderChange.recorded_at,
    cast(OrderChange.changed, Text).label("changed_json"),
    cast(OrderChange.milestones, Text).label("milestones_json"),
)


def _event_json(row: Any) -> str:
    head = _dumps(
        {
            "cursor": encode_feed_cursor(changes.position(row)),
            "order_id": row.order_id,
            "status": row.status,
            "previous_status": row.previous_status,
            "on_hold": bool(row.on_hold),
            "status_since": row.status_since.isoformat() if row.status_since else None,
            "recorded_at": row.recorded_at.isoformat(),
        }
    )
    return f'{head[:-1]},"changed":{row.changed_json},"milestones":{row.milestones_json}}}'


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@router.get("/events", response_model=ChangePage, summary="Normalized status changes after a cursor")
def read_events(
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = Depends(read_session),
    after: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page; omit to start"),
    limit: int = Query(500, ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}"),
) -> Response:
    position = decode_feed_cursor(after) if after else FeedPosition()
    where = principal.data_filter(OrderChange.site, OrderChange.cmo, OrderChange.market)
    rows, scanned = changes.scan(session, position, limit, where=where, columns=_COLUMNS)
    events = ",".join(_event_json(row) for row in rows)
    body = f'{{"events":[{events}],"next_cursor":{_dumps(encode_feed_cursor(scanned))}}}'
    return Response(body, media_type="application/json")
