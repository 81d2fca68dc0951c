"""`cgthub verify ORDER --din ... --step bedside`: check a scanned label against its order.

The same check as the API's `POST /verify` (`cgthub.scan_verification`): the scan is recorded in the
order's ledger as a custody event, and a no-match holds the order and opens a critical alert.
Exit 0 on a match, 3 on a no-match (the order is now on hold), 1 when the scan cannot be judged.
"""

from __future__ import annotations

from datetime import datetime

import typer

from cgthub import scan_verification
from cgthub.cli.common import CliError, console, open_session
from cgthub.scan_verification import Scan, Step
from cgthub.settings import get_settings

NO_MATCH = 3


def verify(
    order: str = typer.Argument(..., help="the hub's order id (ORD-...)"),
    step: Step = typer.Option(..., "--step", help="where in the order's life the label is scanned"),
    din: str | None = typer.Option(None, "--din", help="the DIN as scanned (=W12342600012300) or printed"),
    coi: str | None = typer.Option(None, "--coi", help="the CoI id on the label"),
    site: str | None = typer.Option(None, "--site", help="where: the site or CMO (default: the step's own)"),
    location: str | None = typer.Option(None, "--location", help="where inside it: a room, a bay"),
    operator: str | None = typer.Option(None, "--operator", help="who scanned (default: CGTHUB_OPERATOR)"),
    scanned_at: datetime | None = typer.Option(None, "--at", help="when, with offset (default: now)"),
    scan_id: str | None = typer.Option(None, "--scan-id", help="the scanner's id for the scan: a resend counts once"),
) -> None:
    """Check a scanned DIN and/or CoI id against an order, and record the scan in its ledger."""
    who = operator or get_settings().operator.strip()
    if not who:
        raise CliError("who scanned? no --operator given and CGTHUB_OPERATOR is not set", "pass --operator YOUR_ID")
    if scanned_at is not None and scanned_at.tzinfo is None:
        raise CliError("--at needs an offset", "e.g. 2026-03-30T09:15:00+02:00")
    scan = Scan(
        order_id=order,
        step=step,
        scanned_by=f"operator:{who}",
        din=din,
        coi_id=coi,
        site=site,
        location=location,
        scanned_at=scanned_at,
        scan_id=scan_id,
    )
    with open_session() as session:
        try:
            result = scan_verification.verify(session, scan)
        except scan_verification.OrderNotFound as exc:
            raise CliError(str(exc), "`cgthub orders list` shows the order ids") from exc
        except scan_verification.ScanRefused as exc:
            raise CliError(exc.message) from exc
    checked = " and ".join(result.checked)
    if result.match:
        console.print(f"MATCH: {checked} scanned at {step.value} belong to order {order} (ledger #{result.ledger_seq})")
        return
    console.print(
        f"NO MATCH: the {', '.join(result.mismatched)} scanned at {step.value} does not belong to order {order}; "
        f"the order is on hold and alert #{result.alert_id} is open (ledger #{result.ledger_seq}). "
        "Do not proceed until the bag is identified."
    )
    raise typer.Exit(NO_MATCH)
