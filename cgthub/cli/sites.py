"""`cgthub sites`: the site registry (config/sites.yaml) and what waits for it."""

from __future__ import annotations

import typer
from rich.table import Table

from cgthub import routing, sites
from cgthub.cli.common import CliError, console, open_session
from cgthub.release import ensure_release_in_force

app = typer.Typer(help="Treatment sites: markets, CMOs, HL7 senders (config/sites.yaml).", no_args_is_help=True)


@app.command("list")
def list_sites() -> None:
    """Each site with its market, CMO, HL7 sending facilities and therapies; exits 1 on a bad file."""
    try:
        registry = sites.registry()
    except sites.SiteRegistryError as exc:
        raise CliError(str(exc), "fix the file; every payload waits at stage `route` until it loads") from exc
    table = Table(title=f"{len(registry.sites)} sites ({sites.registry_path()})")
    for column in ("site", "market", "CMO", "HL7 senders (MSH-4)", "therapies"):
        table.add_column(column)
    for site_id, site in sorted(registry.sites.items()):
        table.add_row(site_id, site.market, site.cmo or "", ", ".join(site.facilities), ", ".join(site.therapies))
    console.print(table)


@app.command()
def replay(system: str | None = typer.Option(None, help="only this partner, e.g. hl7, crm")) -> None:
    """Map again what waits at stage `route` (an unknown site or sender), once the registry knows it."""
    ensure_release_in_force()  # a hub in a release environment maps only with the bundle promoted there
    with open_session() as session:
        released, still = routing.replay_unrouted(session, system=system)
    console.print(f"{released} payload(s) routed and applied, {still} still waiting for the site registry")
