"""`cgthub sites`: the site registry (config/sites.yaml), its versions, and what waits for it."""

from __future__ import annotations

import typer
from rich.table import Table

from cgthub import qualification, requalify, sites
from cgthub.cli.common import CliError, console, open_session
from cgthub.release import ensure_release_in_force

app = typer.Typer(
    help="Treatment sites: markets, CMOs, HL7 senders, qualifications (config/sites.yaml).", no_args_is_help=True
)


def _registry() -> sites.SiteRegistry:
    try:
        return sites.registry()
    except sites.SiteRegistryError as exc:
        raise CliError(str(exc), "fix the file; every payload waits at stage `route` until it loads") from exc


def _period(q: sites.Qualification) -> str:
    start = "" if q.valid_from.year == 1 else str(q.valid_from)
    return f"{start}..{q.until or ''}"


@app.command("list")
def list_sites() -> None:
    """Each site with its market, CMO, HL7 sending facilities and therapies; exits 1 on a bad file."""
    registry = _registry()
    table = Table(title=f"{len(registry.sites)} sites ({sites.registry_path()}, {registry.label})")
    for column in ("site", "market", "CMO", "HL7 senders (MSH-4)", "qualified for"):
        table.add_column(column)
    for site_id, site in sorted(registry.sites.items()):
        qualified = ", ".join(f"{q.therapy} {_period(q)}" for q in site.qualified())
        table.add_row(site_id, site.market, site.cmo or "", ", ".join(site.facilities), qualified)
    console.print(table)


@app.command()
def show(site_id: str = typer.Argument(..., help="a site id, e.g. US-BOS-01")) -> None:
    """One site: its qualifications (therapy, from, until, basis) under the registry in force, and
    the newest judgements of its enrolments and orders with the registry version that gave each."""
    registry = _registry()
    site = registry.sites.get(site_id)
    if site is None:
        raise CliError(f"site {site_id} is not in the site registry ({registry.label})", "`cgthub sites list`")
    console.print(f"{site_id}: market {site.market}, CMO {site.cmo or '-'}, site registry {registry.label}")
    table = Table(title="qualifications")
    for column in ("therapy", "from", "until", "basis"):
        table.add_column(column)
    for q in site.qualified():
        table.add_row(q.therapy, "" if q.valid_from.year == 1 else str(q.valid_from), str(q.until or ""), q.basis)
    console.print(table)
    with open_session() as session:
        judged = qualification.judgements(session, site=site_id, limit=20)
        if not judged:
            return
        table = Table(title="newest judgements")
        for column in ("event", "therapy", "day", "verdict", "registry"):
            table.add_column(column)
        for j in judged:
            table.add_row(
                f"{j.source_system}:{j.source_event_id}",
                j.therapy or "any",
                str(j.day),
                "qualified" if j.qualified else "refused",
                f"v{j.registry_version or '-'} {j.registry_sha256[:12]}",
            )
        console.print(table)


@app.command()
def history() -> None:
    """Every content of the registry the hub judged by: version, SHA-256, when first used."""
    registry = _registry()
    with open_session() as session:
        rows = qualification.history(session)
        table = Table(title=f"site registry versions (in force now: {registry.label})")
        for column in ("version", "sha256", "first used", "in force"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                f"v{row.version}" if row.version else "unversioned",
                row.sha256[:12],
                row.first_loaded_at.isoformat(timespec="seconds"),
                "yes" if row.sha256 == registry.sha256 else "",
            )
    console.print(table)


@app.command()
def replay(system: str | None = typer.Option(None, help="only this partner, e.g. hl7, crm")) -> None:
    """Map again what waits for the registry: at stage `route` (an unknown site or sender) and at
    stage `qualify` (a site not qualified that day), once the registry is fixed."""
    ensure_release_in_force()  # a hub in a release environment maps only with the bundle promoted there
    with open_session() as session:
        released, still = requalify.replay_waiting(session, system=system)
    console.print(f"{released} payload(s) routed and applied, {still} still waiting for the site registry")
