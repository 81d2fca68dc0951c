"""The change feed over HTTP: `GET /events?after=CURSOR` pages through order_changes in feed order.

At-least-once and resumable: a consumer stores `next_cursor` after processing a page and resumes
from it; replaying a page after a crash gives the same events again, never skips one.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from cgthub import changes
from cgthub.api.auth import Principal, Scope
from cgthub.api.cursor import decode_feed_cursor, encode_feed_cursor
from cgthub.api.deps import authorized, read_session
from cgthub.api.errors import ERROR_RESPONSES
from cgthub.api.schemas import ChangePage
from cgthub.api.webhooks import change_payload
from cgthub.changes import FeedPosition, OrderChange

router = APIRouter(tags=["change feed"], responses=ERROR_RESPONSES)

MAX_PAGE = 1000


@router.get("/events", response_model=ChangePage, summary="Normalized status changes after a cursor")
def read_events(
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = Depends(read_session),
    after: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page; omit to start"),
    limit: int = Query(500, ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}"),
) -> Response:
    position = decode_feed_cursor(after) if after else FeedPosition()
    where = principal.data_filter(OrderChange.site, OrderChange.cmo, OrderChange.market)
    rows = changes.read_rows(session, position, limit, where=where)
    events: list[dict[str, Any]] = []
    for row in rows:
        position = changes.position(row)
        events.append(change_payload(row, encode_feed_cursor(position)))
    body = {"events": events, "next_cursor": after if not rows and after else encode_feed_cursor(position)}
    # Serialized here rather than through the response model: the feed is the hot path of consumers.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
