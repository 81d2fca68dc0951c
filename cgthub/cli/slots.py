"""`cgthub slots`: the CMO's manufacturing capacity, an order's feasible apheresis dates, booking one.

`show ORDER` lists the slot chains the order could be booked for (or its booking; `--reschedule`
the dates it could be moved to), `sync` reads the CMO's published capacity into the hub, `book
ORDER --date D` books one, `reschedule ORDER --date D` moves it and `cancel ORDER` cancels it, each
signed like every decision (see `cgthub.booking`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from cgthub import booking, decisions, slots
from cgthub.cli.common import CliError, console, open_session
from cgthub.cli.decisions import _MEANING, _REASON, _SIGNER, _STDIN, _TEXT, _show, _signature
from cgthub.decisions import Meaning
from cgthub.store import database_url

_Done = TypeVar("_Done", booking.Booked, booking.BookingChanged)
_Wanted = TypeVar("_Wanted", booking.BookingRequest, booking.RescheduleRequest)

app = typer.Typer(help="Manufacturing slots: feasible apheresis dates, capacity sync, booking.", no_args_is_help=True)


@app.command("show")
def show(
    order_id: str = typer.Argument(..., help="the hub's order id"),
    limit: int = typer.Option(20, "--limit", min=1, help="at most this many options, earliest first"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    reschedule: bool = typer.Option(False, "--reschedule", help="a booked order: the dates it could be moved to"),
) -> None:
    """The order's booked slot chain, or the apheresis dates it could be booked (or moved) for now."""
    with open_session(readonly=True) as session:
        existing = booking.booking_of(session, order_id)
        if existing is not None and not reschedule:
            done = booking.booked(existing)
            if as_json:
                print(done.model_dump_json(indent=1))
                return
            console.print(
                f"order {escape(order_id)} is booked: apheresis {done.apheresis_at.isoformat()} "
                f"at {escape(done.site)}, slot {done.slot_day} at {escape(done.cmo)} ({escape(done.cmo_reservation)}), "
                f"release {done.release_on}, at site {done.at_site_on}, infusion {done.infusion_on}; "
                f"signed by {escape(done.booked_by)}"
            )
            return
        try:
            if reschedule:
                options = booking.reschedule_options(session, order_id)[:limit]
            else:
                options = slots.options_for(session, order_id)[:limit]
        except slots.SchedulingError as exc:
            raise CliError(exc.message, exc.hint or None) from exc
    if as_json:
        print(json.dumps([o.as_dict() for o in options], indent=1))
        return
    if not options:
        raise CliError(
            f"no feasible slot chain for order {order_id} in the booking window",
            "sync the CMO's capacity (`cgthub slots sync`) or look at config/scheduling.yaml",
            exit_code=2,
        )
    table = Table("apheresis", "CMO", "slot day", "places", "release", "at site", "infusion", "v2v days", "quota left")
    for o in options:
        quota = "/".join("-" if q is None else str(q) for q in (o.site_quota_left, o.market_quota_left))
        table.add_row(
            o.apheresis_at.isoformat(timespec="minutes"),
            o.cmo,
            o.slot_day.isoformat(),
            str(o.places_left),
            o.release_on.isoformat(),
            o.at_site_on.isoformat(),
            o.infusion_on.isoformat(),
            str(o.vein_to_vein_days),
            quota,
        )
    console.print(table)


@app.command("sync")
def sync(days: int = typer.Option(0, "--days", min=0, help="days ahead (default: the horizon plus 30)")) -> None:
    """Read the CMO's published capacity into the hub."""
    try:
        stored = slots.sync(database_url(), days=days or None)
    except slots.SchedulingError as exc:
        raise CliError(exc.message, exc.hint or None) from exc
    console.print(f"{stored} slot days stored")


def _wanted(model: type[_Wanted], day: str, cmo: str | None) -> _Wanted:
    """The booking or move asked for on the command line, each option's mistake named."""
    try:
        when = date.fromisoformat(day)
    except ValueError as exc:
        raise CliError(f"--date {day!r} is not a date (YYYY-MM-DD)") from exc
    try:
        return model(apheresis_on=when, cmo=cmo)
    except ValidationError as exc:
        raise CliError(f"--cmo {cmo!r} is not a CMO id (letters, digits, '_', '.', '-'; at most 64)") from exc


@app.command("book")
def book(
    order_id: str = typer.Argument(..., help="the hub's order id"),
    day: str = typer.Option(..., "--date", help="the apheresis date (YYYY-MM-DD), one `slots show` offers"),
    cmo: str | None = typer.Option(None, "--cmo", help="the CMO, when several offer that date"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    stdin: bool = _STDIN,
) -> None:
    """Book a slot chain (signed): reserve the CMO's place, schedule the apheresis, tell the hospital."""
    wanted = _wanted(booking.BookingRequest, day, cmo)
    done = _signed(order_id, signer, meaning, reason, text, stdin, booking.run_booking, wanted)
    verb = "was already booked" if done.replayed else "booked"
    console.print(
        f"order {escape(order_id)} {verb}: apheresis {done.apheresis_at.isoformat()} at {escape(done.site)}, "
        f"slot {done.slot_day} at {escape(done.cmo)} ({escape(done.cmo_reservation)}), infusion {done.infusion_on}"
    )


def _changed(done: booking.BookingChanged) -> str:
    again = " (already done)" if done.replayed else ""
    was = f"apheresis {done.was_apheresis_on} at {escape(done.was_cmo)} ({escape(done.was_cmo_reservation)})"
    if done.booking is None:
        return f"order {escape(done.order_id)}'s booking is cancelled{again}: {was} released; it can be booked again"
    now = done.booking
    return (
        f"order {escape(done.order_id)} rescheduled{again}: {was} -> apheresis {now.apheresis_at.isoformat()} "
        f"at {escape(now.site)}, slot {now.slot_day} at {escape(now.cmo)} ({escape(now.cmo_reservation)}), "
        f"infusion {now.infusion_on}"
    )


def _signed(
    order_id: str,
    signer: str | None,
    meaning: Meaning,
    reason: str,
    text: str,
    stdin: bool,
    run: Callable[..., _Done],
    wanted: Any,
) -> _Done:
    """Show the order, take the signature, and `run` (booking.run_booking or run_change) with it."""
    try:
        with open_session(readonly=True) as session:
            preview = decisions.preview_order(session, order_id)
        _show(preview)
        signature = _signature(signer, meaning, reason, text, stdin, preview.shown_hash)
        return run(database_url(), order_id, wanted, signature)
    except (decisions.DecisionError, slots.SchedulingError) as exc:
        raise CliError(exc.message, exc.hint or None) from exc


@app.command("reschedule")
def reschedule(
    order_id: str = typer.Argument(..., help="the hub's order id"),
    day: str = typer.Option(..., "--date", help="the new apheresis date (YYYY-MM-DD), one `show --reschedule` offers"),
    cmo: str | None = typer.Option(None, "--cmo", help="the CMO, when several offer that date"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    stdin: bool = _STDIN,
) -> None:
    """Move a booking to another date (signed): the CMO's place moves, the courier is rebooked, the hospital told."""
    wanted = _wanted(booking.RescheduleRequest, day, cmo)
    console.print(_changed(_signed(order_id, signer, meaning, reason, text, stdin, booking.run_change, wanted)))


@app.command("cancel")
def cancel(
    order_id: str = typer.Argument(..., help="the hub's order id"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    stdin: bool = _STDIN,
) -> None:
    """Cancel a booking (signed): the CMO's place is given back, the courier's leg cancelled, the hospital told."""
    console.print(
        _changed(_signed(order_id, signer, meaning, reason, text, stdin, booking.run_change, booking.CancelRequest()))
    )
