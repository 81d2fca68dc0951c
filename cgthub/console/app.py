"""The order console: server-rendered pages for coordinators and QA, inside Airflow's API server.

Every page answers only to a signed-in Airflow user (see cgthub.console.auth) and reads only the
orders their role's data scope covers; the templates and the one stylesheet ship in this package,
so the console works with no internet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cgthub import decisions, quarantine
from cgthub.api.auth import Scope
from cgthub.api.errors import ApiError
from cgthub.console import actions, auth, board, detail, ops, timeline
from cgthub.decisions import Action, Signature
from cgthub.lifecycle import OrderStatus
from cgthub.model import EventType
from cgthub.release import summary as release_summary
from cgthub.store import database_url as configured_url
from cgthub.store import point_read_engine, session_scope

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["at"] = lambda at: "" if at is None else f"{ops.aware(at):%Y-%m-%d %H:%M}"
templates.env.filters["words"] = lambda text: str(text or "").replace("_", " ")

# Sent with every console answer (pages, refusals, the stylesheet). The pages need no script, so
# none may run; Airflow's UI frames the pages (same origin), nobody else may; order data is not
# cached and no console address (it names orders) goes to another site as a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'",
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

PAGES = (
    ("orders", "Orders board"),
    ("quarantine", "Quarantine"),
    ("partners", "Partner health"),
    ("mappings", "Mappings in force"),
)


def console_app(database_url: str | None = None) -> FastAPI:
    """The console as an app of its own, for the plugin to mount (at /cgthub/console)."""
    url = configured_url(database_url)
    app = FastAPI(title="cgthub console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        if request.method == "POST" and (foreign := auth.cross_site(request)):
            refusal = ApiError(403, "forbidden", f"a signature posted from another site ({foreign}) is refused")
            response: Response = await refused(request, refusal)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @contextmanager
    def reading() -> Iterator[Session]:
        with session_scope(url, readonly=True) as session:
            yield session

    @app.exception_handler(auth.SignInRequired)
    async def sign_in(request: Request, _exc: auth.SignInRequired) -> Response:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(auth.login_url(back), status_code=303)  # a path: no Host header in it

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> Response:
        user = getattr(request.state, "console_user", None)
        return page(request, user, "refused.html", {"status": exc.status, "message": exc.message}, exc.status)

    sign_ins = auth.SignIns()

    async def signed_in(request: Request) -> auth.ConsoleUser:
        user = await auth.console_user(request)
        request.state.console_user = user
        await run_in_threadpool(sign_ins.note, url, user, auth.request_token(request) or "")
        return user

    def page(
        request: Request, user: auth.ConsoleUser | None, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {"user": user, "pages": PAGES, "base": request.scope.get("root_path", ""), **context},
            status_code=status,
        )

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/orders", status_code=303)

    @app.get("/orders", response_class=HTMLResponse)
    def orders_board(
        request: Request,
        user: auth.ConsoleUser = Depends(signed_in),
        status: str | None = Query(None, max_length=32),
        market: str | None = Query(None, max_length=2),
        site: str | None = Query(None, max_length=64),
        therapy: str | None = Query(None, max_length=64),
        held: bool = False,
        at_risk: bool = False,
        has_alerts: bool = False,
        q: str | None = Query(None, max_length=200),
    ) -> HTMLResponse:
        """Most urgent first: what a coordinator looks at when the shift starts."""
        filters = board.BoardFilters(
            status=status or None,
            market=market or None,
            site=site or None,
            therapy=therapy or None,
            held=held,
            at_risk=at_risk,
            has_alerts=has_alerts,
            search=q or None,
        )
        started = time.perf_counter()
        with reading() as session:
            rows = board.board(session, user.principal, filters)
            choices = board.choices(session, user.principal)
        elapsed_ms = (time.perf_counter() - started) * 1000
        response = page(
            request,
            user,
            "orders.html",
            {
                "rows": rows,
                "filters": filters,
                "choices": choices,
                "statuses": [s.value for s in OrderStatus],
                "page_size": board.PAGE_SIZE,
            },
        )
        response.headers["Server-Timing"] = f"db;dur={elapsed_ms:.1f}"
        return response

    @app.get("/orders/{order_id}", response_class=HTMLResponse)
    async def order_page(request: Request, order_id: str, user: auth.ConsoleUser = Depends(signed_in)) -> HTMLResponse:
        """The order as a coordinator follows it: where it is against plan, who held it, what is open."""
        if not user.principal.has(Scope.STATUS_READ):
            raise ApiError(403, "forbidden", "your Airflow role does not grant reading order status")
        with point_read_engine(url).connect() as connection:
            shown = await detail.order_detail(connection, user.principal, order_id)
        now = detail.now()
        with reading() as session:
            events = detail.events(session, order_id)
            verified, problems = detail.ledger_state(session, order_id)
        holds = detail.holds(events)
        excursions = [
            timeline.Excursion(e.occurred_at, f"temperature excursion {e.occurred_at:%Y-%m-%d %H:%M}")
            for e in events
            if e.event_type is EventType.TEMPERATURE_EXCURSION
        ]
        planned = detail.planned(shown, now)
        actual = {m.milestone: m.at for m in shown["milestones"]}
        start = actual.get(OrderStatus.COLLECTED.value)
        deadline = None
        if start is not None:
            deadline = start + timedelta(days=detail.target_days(shown["market"]))
        at_risk = any(a.kind == "vein_to_vein_at_risk" for a in shown["alerts"])
        svg = timeline.render(
            planned=planned,
            actual=actual,
            holds=holds,
            excursions=excursions,
            deadline=deadline,
            at_risk=at_risk,
            now=now,
        )
        return page(
            request,
            user,
            "order.html",
            {
                "order": shown,
                "svg": svg,
                "custody": detail.custody_chain(events) if user.principal.has(Scope.CUSTODY_READ) else None,
                "holds": holds,
                "verified": verified,
                "problems": problems,
                "hub_hold": shown["on_hold"] and any(a.kind == "coi_discrepancy" for a in shown["alerts"]),
            },
        )

    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine_page(
        request: Request,
        user: auth.ConsoleUser = Depends(signed_in),
        stage: str | None = Query(None, max_length=16),
        partner: str | None = Query(None, max_length=32),
        status: str = Query("open", max_length=16),
        kind: str | None = Query(None, max_length=64),
    ) -> HTMLResponse:
        now = detail.now()
        if stage and stage not in {s.value for s in quarantine.Stage}:
            raise ApiError(422, "invalid_stage", "no such stage; the stages are listed in the filter")
        if status and status not in {s.value for s in quarantine.QuarantineStatus}:
            raise ApiError(422, "invalid_status", "no such status: open, replayed or discarded")
        with reading() as session:
            entries = ops.quarantine_list(session, user.principal, stage=stage, partner=partner, status=status)
        rows = [(e, ops.age(e.first_seen, now)) for e in entries if not kind or e.kind == kind]
        bulk = actions.bulk_filters({"stage": stage or "", "partner": partner or "", "kind": kind or ""})
        return page(
            request,
            user,
            "quarantine.html",
            {
                "rows": rows,
                "stage": stage or "",
                "partner": partner or "",
                "status": status,
                "kind": kind or "",
                "stages": [s.value for s in quarantine.Stage],
                "query": urlencode(bulk),
                "bulk": bulk,
            },
        )

    @app.get("/quarantine/{entry_id}", response_class=HTMLResponse)
    def quarantine_entry_page(
        request: Request, entry_id: int, user: auth.ConsoleUser = Depends(signed_in)
    ) -> HTMLResponse:
        if not actions.row_id(str(entry_id)):
            raise ApiError(404, "not_found", "no such quarantine entry")
        with reading() as session:
            view = ops.quarantine_entry(session, user.principal, entry_id)
            if view is None:
                raise ApiError(404, "not_found", f"no quarantine entry {entry_id} you may see")
            age = ops.age(view.entry.first_seen, detail.now())
            return page(request, user, "quarantine_entry.html", {"view": view, "age": age})

    @app.get("/partners", response_class=HTMLResponse)
    def partners_page(
        request: Request, user: auth.ConsoleUser = Depends(signed_in), partner: str | None = Query(None, max_length=32)
    ) -> HTMLResponse:
        may_read(user)
        with reading() as session:
            health = ops.partner_health(session, detail.now())
            letters = ops.dead_letters(session, partner) if user.principal.all_data else []
        return page(request, user, "partners.html", {"health": health, "letters": letters, "partner": partner})

    @app.get("/actions/{action}/{key}", response_class=HTMLResponse)
    def sign_form(
        request: Request,
        action: Action,
        key: str,
        user: auth.ConsoleUser = Depends(signed_in),
        message: list[int] | None = Query(None),
    ) -> HTMLResponse:
        """What the signer is about to sign, and the signature's fields."""
        if message and not all(actions.row_id(str(m)) for m in message):
            raise ApiError(422, "invalid_message", "a message id is a positive whole number")
        return signing_page(request, user, action, key, message, error=None, status=200)

    @app.post("/actions/{action}/{key}", response_class=HTMLResponse)
    async def sign(request: Request, action: Action, key: str, user: auth.ConsoleUser = Depends(signed_in)) -> Response:
        """Sign as the signed-in Airflow user, re-authenticated by their operator password."""
        form = await request.form()
        sent = [actions.row_id(str(v)) for v in form.getlist("message")]
        if not all(sent):  # dropping one would widen the replay to every dead letter of the partner
            raise ApiError(422, "invalid_message", "a message id is a positive whole number")
        message_ids = [n for n in sent if n] or None
        with reading() as session:
            subject = subject_or_refusal(session, user, action, key, request)
        if not form.get("shown_hash"):
            # The console signs what it showed: its form always carries the hash of that (the API and
            # the CLI may sign the current state; a console POST without it did not come from the page).
            error = "the form carries no hash of what was shown: open the signing page and sign from it"
            return signing_page(request, user, action, key, message_ids, error=error, status=422)
        try:
            signature = Signature(
                signer=user.name,
                password=str(form.get("password", "")),
                meaning=str(form.get("meaning", "")),
                reason_code=str(form.get("reason_code", "")),
                reason_text=str(form.get("reason_text", "")),
                shown_hash=str(form.get("shown_hash", "")),
            )
        except ValidationError as invalid:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in invalid.errors())
            return signing_page(request, user, action, key, message_ids, error=problems, status=422)
        try:
            result = await run_in_threadpool(
                decisions.run,
                url,
                actions.work(subject, signature, message_ids),
                signer=user.name,
                action=action,
                subject=key,
            )
        except decisions.DecisionError as refused:
            error = f"{refused.message}. {refused.hint}".strip()
            return signing_page(request, user, action, key, message_ids, error=error, status=refused.status)
        base = request.scope.get("root_path", "")
        joiner = "&" if "?" in subject.back else "?"
        signed = ",".join(str(r.decision_id) for r in result) if isinstance(result, list) else result.decision_id
        return RedirectResponse(f"{base}{subject.back}{joiner}signed={signed}", status_code=303)

    def may_read(user: auth.ConsoleUser) -> None:
        """Partner health and mappings are for roles the config lists (a role not listed sees nothing)."""
        if not user.principal.has(Scope.STATUS_READ):
            raise ApiError(403, "forbidden", "your Airflow role does not grant reading order status")

    def subject_or_refusal(
        session: Session, user: auth.ConsoleUser, action: Action, key: str, request: Request
    ) -> actions.Subject:
        try:
            return actions.subject_of(session, user, action, key, dict(request.query_params))
        except actions.NotOffered as refused:
            code = "forbidden" if refused.status == 403 else "not_found"
            raise ApiError(refused.status, code, refused.message) from refused

    def signing_page(
        request: Request,
        user: auth.ConsoleUser,
        action: Action,
        key: str,
        message_ids: list[int] | None,
        *,
        error: str | None,
        status: int,
    ) -> HTMLResponse:
        with reading() as session:
            subject = subject_or_refusal(session, user, action, key, request)
            try:
                shown = actions.preview(session, subject, message_ids)
            except decisions.DecisionError as missing:
                raise ApiError(missing.status, missing.code, missing.message) from missing
        state = quarantine.masked_details(shown.state)
        if action in (Action.RETRY_QUARANTINE, Action.DISCARD_QUARANTINE) and "reason" in shown.state:
            state["reason"] = shown.state["reason"]  # the entry's reason, in clear on the quarantine pages too
        context = {
            "action": action,
            "title": actions.BULK_TITLES[action] if subject.entry_ids else actions.TITLES[action],
            "subject": subject,
            "shown": shown,
            "state": state,
            "codes": actions.reason_codes(action),
            "meanings": [m.value for m in decisions.Meaning],
            "message_ids": message_ids or [],
            "error": error,
        }
        return page(request, user, "sign.html", context, status)

    @app.get("/mappings", response_class=HTMLResponse)
    def mappings_page(request: Request, user: auth.ConsoleUser = Depends(signed_in)) -> HTMLResponse:
        may_read(user)
        every_site = user.principal.all_data  # the diff quotes values from any site's archived payloads
        with reading() as session:
            mappings = ops.mappings_in_force(session if every_site else None)
            release = release_summary(session)  # the bundle in force in each environment
        context = {
            "mappings": mappings,
            "diff_payloads": ops.DIFF_PAYLOADS,
            "release": release,
            "compared": every_site,
        }
        return page(request, user, "mappings.html", context)

    return app
