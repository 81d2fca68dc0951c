"""`cgthub markets`: the markets resolved through their baseline (config/markets/), scaffolding a new
market like an existing one, and checking that every market can run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cgthub import market_check, markets, sites
from cgthub.cli.common import CliError
from cgthub.mapping import registry

app = typer.Typer(
    help="Markets: one baseline and its variants (config/markets/); show, new, check.", no_args_is_help=True
)


def _shown(path: Path) -> str:
    """A file as the user would type it: relative to the working folder when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resolved(market: str) -> tuple[markets.MarketConfig, markets.Provenance]:
    try:
        return markets.resolve_market(market, registry.markets_dir())
    except markets.MarketConfigError as exc:
        raise CliError(str(exc), "fix that file, then run `cgthub markets check`") from exc


@app.command("list")
def list_markets() -> None:
    """Each market with the files it resolves through, root first."""
    for market in markets.all_markets(registry.markets_dir()):
        try:
            chain = " -> ".join(p.name for p in markets.files_of(market, registry.markets_dir()))
        except markets.MarketConfigError as exc:
            chain = f"does not resolve: {exc}"
        typer.echo(f"{market}  {chain}")


@app.command()
def show(
    market: str = typer.Argument(..., help="e.g. DE"),
    as_json: bool = typer.Option(False, "--json", help="the resolved configuration and provenance as JSON"),
) -> None:
    """The market's resolved configuration, each value with the file and line it came from."""
    config, provenance = _resolved(market)
    values = _leaves(config.model_dump())
    if as_json:
        origins = {path: str(source) for path, source in provenance.items()}
        typer.echo(json.dumps({"config": config.model_dump(), "provenance": origins}, indent=2))
        return
    chain = " -> ".join(p.name for p in markets.files_of(market, registry.markets_dir()))
    typer.echo(f"market {config.market}: {chain}")
    width = max(len(f"{path} = {json.dumps(value)}") for path, value in values.items())
    for path, value in values.items():
        source = provenance.get(path)
        where = f"{_shown(source.path)}:{source.line}" if source else "(default)"
        typer.echo(f"  {f'{path} = {json.dumps(value)}':<{width}}  {where}")


def _leaves(value: object, at: str = "") -> dict[str, object]:
    """Dotted path -> value, for every scalar, list and empty mapping (the provenance's leaves)."""
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(_leaves(inner, f"{at}.{key}" if at else str(key)))
        return out
    return {at: value}


@app.command()
def new(
    market: str = typer.Argument(..., help="the new market's ISO country code, e.g. FR"),
    like: str = typer.Option(..., "--like", help="the market it starts from (its file says `extends: LIKE`)"),
) -> None:
    """Write <MARKET>.yaml extending LIKE into the markets folder the hub reads (CGTHUB_CONFIG_DIR's
    markets/, config/markets/ by default), with a checklist of what must be decided. An existing
    market is never overwritten (exit 2)."""
    name, parent = market.upper(), like.upper()
    folder = registry.markets_dir()
    if not markets.valid_name(name):
        raise CliError(f"{market!r} is not a market code", "two or three letters, e.g. FR")
    path = markets.market_path(name, folder)
    if path.exists():
        raise _exists(name, path)
    config, provenance = _resolved(parent)
    checklist = _checklist(name, parent, config, provenance)
    body = [
        f"# {name}: a market like {parent}. Everything not written here is {parent}'s",
        f"# (`cgthub markets show {name}` prints each value and the file it comes from).",
        "# A value written here replaces the inherited one: mappings merge key by key, a list",
        "# replaces the whole list, `null` removes an inherited value.",
        "#",
        "# To decide before the first order (then run `cgthub markets check`):",
        *[f"#   [ ] {line}" if not line.startswith(" ") else f"#       {line.strip()}" for line in checklist],
        f"market: {name}",
        f"extends: {parent}",
        "",
    ]
    try:
        with path.open("x", encoding="utf-8") as created:  # made now, or refused: never written over
            created.write("\n".join(body))
    except FileExistsError as exc:
        raise _exists(name, path) from exc
    typer.echo(f"wrote {_shown(path)} (extends {parent}); decide:")
    for line in checklist:
        typer.echo(f"  [ ] {line}" if not line.startswith(" ") else f"      {line.strip()}")


def _exists(name: str, path: Path) -> CliError:
    return CliError(
        f"market {name} exists already: {_shown(path)} (left as it is)",
        f"`cgthub markets show {name}` shows what it says; edit that file to change it",
        exit_code=2,
    )


def _checklist(name: str, parent: str, config: markets.MarketConfig, provenance: markets.Provenance) -> list[str]:
    """What the new market inherits, item by item, worded as the decision someone must take."""
    residency = config.residency
    pins = ", ".join(f"{feed}: {pin}" for feed, pin in config.mappings.items()) or "none"
    codes = "; ".join(f"{table}: {len(codes)} code(s)" for table, codes in config.code_maps.items()) or "none"
    target = config.deadlines.vein_to_vein_target_days
    try:
        registered = sorted(s for s, site in sites.registry().sites.items() if site.market == name)
    except sites.SiteRegistryError as exc:
        registered = [f"(the site registry does not load: {exc})"]
    return [
        f"residency: {parent}'s rules apply ({_from(provenance, 'residency.drop')}):",
        f"  drop {residency.drop or 'nothing'}; tokenize {residency.tokenize or 'nothing'};",
        f"  does {name}'s law ask the same? A list written here replaces {parent}'s whole list.",
        f"code maps: {codes}; add {name}'s local codes (products, reasons) under code_maps.",
        f"mapping pins: {pins}; pin here only what {name} must map differently.",
        f"language of outbound HL7 (MSH-19): {config.language!r} from {parent}; {name}'s hospitals may need another.",
        f"deadlines: vein-to-vein target {target if target is not None else 'from config/ops.yaml'} d; "
        f"{name}'s logistics may differ.",
        f"sites: add {name}'s treatment sites to {_shown(sites.registry_path())} with `market: {name}` "
        f"(cmo, facilities, therapies, qualifications); listed now: {', '.join(registered) or 'none'}.",
    ]


def _from(provenance: markets.Provenance, path: str) -> str:
    source = provenance.get(path)
    return f"{source.path.name}:{source.line}" if source else "default"


@app.command()
def check() -> None:
    """Every market resolves, its pins exist, the mappings in force pass their fixtures under its code
    maps and residency, and its residency names fields those mappings produce. Exits 1 otherwise."""
    reports = market_check.check_all()
    if not reports:
        raise CliError(f"no market files in {_shown(registry.markets_dir())}")
    for report in reports:
        if report.ok:
            typer.echo(
                f"{report.market}: ok ({' -> '.join(report.chain)}; {len(report.in_force)} mappings in force, "
                f"{report.fixtures_run} fixtures pass under its code maps and residency)"
            )
        else:
            typer.echo(f"{report.market}: {len(report.problems)} problem(s)", err=True)
            for problem in report.problems:
                typer.echo(f"  {problem}", err=True)
    failed = [r.market for r in reports if not r.ok]
    if failed:
        raise CliError(f"market(s) {', '.join(failed)} cannot run as configured", "fix what is named above")
