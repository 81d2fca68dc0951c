"""`cgthub api`: serve the order transparency API, manage its keys, operate webhooks, print the schema."""

from __future__ import annotations

import errno
import json
import socket
import threading

import typer
from rich.table import Table

from cgthub.cli.common import CliError, console, console_err, open_session

app = typer.Typer(help="Order transparency API: serve, keys, webhooks, OpenAPI schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (bearer tokens, stored hashed).", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook deliveries from the outbox.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")


# Clear of Airflow's API server and UI (8080 under `make up` and docker compose), the MLLP
# listener (2575) and the partner sandboxes (8701-8705).
DEFAULT_PORT = 8088


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="port (0: any free port)"),
    webhooks: bool = typer.Option(True, "--webhooks/--no-webhooks", help="deliver webhooks from this process"),
    workers: int = typer.Option(1, min=1, max=32, help="uvicorn worker processes"),
) -> None:
    """Run the API with uvicorn (and, by default, the webhook delivery loop in a thread)."""
    import uvicorn

    from cgthub.api import webhooks as delivery
    from cgthub.api.http_protocol import GuardedHttpProtocol
    from cgthub.store import database_url

    url = database_url()
    with open_session(readonly=True):
        pass  # fail early, with a useful message, when the database is missing or not migrated
    from cgthub.custody_signing import signing_key_state

    signing_key_state()  # a malformed CGTHUB_CUSTODY_SIGNING_KEY: named before any worker starts
    listening = _listening_socket(host, port)
    bound_port = listening.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    console_err.print(f"serving the API on http://{shown_host}:{bound_port} (docs at /docs)")
    # A client has CGTHUB_API_HEADER_TIMEOUT seconds to send a request's head (slowloris). Not uvicorn's
    # limit_concurrency: it counts open connections, so an attacker's unfinished heads would have
    # everyone else answered 503 until their deadline (tests/test_red_team_api.py's 2,000 connections).
    stop = threading.Event()
    if webhooks:
        threading.Thread(target=delivery.run_forever, args=(url, stop), name="cgthub-webhooks", daemon=True).start()
    try:
        # The bound socket itself goes to uvicorn, not its fd: uvicorn opens an fd as a Unix socket,
        # so asyncio would leave Nagle on for TCP and every small answer waits for a delayed ACK.
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config(
                "cgthub.api:create_app",
                factory=True,
                workers=workers,
                access_log=False,
                http=GuardedHttpProtocol,
            )
            Multiprocess(config, sockets=[listening]).run()
        else:
            from cgthub import runtime
            from cgthub.api import create_app

            served = create_app(url)
            runtime.tune_gc()  # after start-up: collector pauses stay out of the latency tail
            uvicorn.Server(uvicorn.Config(served, access_log=False, http=GuardedHttpProtocol)).run(sockets=[listening])
    finally:
        stop.set()
        listening.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    """The API's socket, bound here rather than by uvicorn: a taken port is then one clear line, not
    uvicorn's logged error and exit."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", "check --host") from exc
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        listening.close()
        taken = exc.errno == errno.EADDRINUSE
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            "another process has that port (Airflow takes 8080 under `make up`): choose another --port, "
            "or --port 0 for any free one"
            if taken
            else "choose another --port or --host",
        ) from exc
    listening.set_inheritable(True)  # uvicorn's worker processes accept on it too
    return listening


@app.command()
def openapi(output: str = typer.Option("-", "--output", "-o", help="file to write, - for stdout")) -> None:
    """Print the OpenAPI schema (docs/openapi.json is this output, committed)."""
    from cgthub.api import create_app

    text = json.dumps(create_app("sqlite://").openapi(), indent=2, sort_keys=True) + "\n"
    if output == "-":
        typer.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        console.print(f"wrote {output}")


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@app.command("verify-custody")
def verify_custody(
    path: str = typer.Argument(..., help="an EPCIS document saved from GET /orders/{id}/custody"),
    public_key: str | None = typer.Option(
        None,
        "--public-key",
        help="PEM file of the hub's pinned public key(s) (GET /custody/keys or `cgthub api custody-key`)",
    ),
) -> None:
    """Check a custody document offline: every ledger hash recomputed, the chain unbroken to its head, and
    with --public-key the hub's Ed25519 signature under a key you pinned (without it, exit 0 with a
    warning: only internal consistency, which the document's holder could have recomputed)."""
    from cgthub.api.epcis import not_a_custody_document, verify_ledger
    from cgthub.custody_signing import NotAPublicKey, load_public_keys, signature_problems

    pinned = None
    if public_key is not None:
        try:
            with open(public_key, encoding="utf-8") as handle:
                pinned = load_public_keys(handle.read())
        except (OSError, ValueError, NotAPublicKey) as exc:
            raise CliError(
                f"cannot use {public_key} as the pinned key: {exc}",
                "save the public_key_pem of GET /custody/keys (or `cgthub api custody-key`) to a file",
            ) from exc
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", "save the body of GET /orders/{id}/custody to a file") from exc
    wrong_file = not_a_custody_document(document)
    if wrong_file:
        raise CliError(
            f"{path} is not a custody document: {wrong_file}",
            "save the body of GET /orders/{id}/custody (an EPCIS 2.0 document with the order's ledger) and check that",
        )
    unsigned = signature_problems(document, pinned) if pinned is not None else []
    problems = unsigned or verify_ledger(document)
    ledger = document.get("cgthub:ledger") or {}
    if problems:
        for problem in problems:
            console.print(f"[red]problem:[/] {problem}")
        if unsigned:
            raise CliError("the document is not signed by the hub under a pinned key: refused")
        raise CliError(f"{len(problems)} problem(s): the document does not match an untampered ledger")
    entries = len(ledger.get("entries") or [])
    console.print(f"verified: order {ledger.get('orderId')}, {entries} ledger entries, head {ledger.get('head')}")
    if pinned is None:
        console.print(
            "[yellow]warning:[/] not authenticated: only the document's internal consistency was checked, "
            "and its holder could have re-made it with recomputed hashes; pass --public-key with the hub's "
            "pinned key to check its signature"
        )
    else:
        console.print(f"signed by the hub: key {document['cgthub:signature']['keyId']} (pinned)")


@app.command("custody-key")
def custody_key() -> None:
    """Print the public key custody exports are signed with (PEM), for consumers to pin."""
    from cgthub.custody_signing import published_keys

    current = published_keys()[0]
    console_err.print(f"key id {current.key_id} (Ed25519), signing since {current.first_used}")
    typer.echo(current.public_key_pem, nl=False)


@keys_app.command("create")
def create_key(
    name: str = typer.Option(..., help="who the key is for, e.g. 'Site US-SITE-1 liaison dashboard'"),
    scope: list[str] = typer.Option(..., "--scope", help="status:read, timeline:read, custody:read, admin"),
    site: list[str] = typer.Option([], "--site", help="treatment site(s) the key may see"),
    cmo: list[str] = typer.Option([], "--cmo", help="CMO(s) whose batches the key may see"),
    market: list[str] = typer.Option([], "--market", help="market(s) (country codes) the key may see"),
    all_data: bool = typer.Option(False, "--all-data", help="every order (sponsor-wide consumers)"),
    force: bool = typer.Option(
        False, "--force", help="accept sites, CMOs or markets the site registry (config/sites.yaml) does not list"
    ),
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from cgthub.api.auth import InvalidKeyRequest
    from cgthub.api.auth import create_key as create

    if not force:
        _refuse_unknown_scope(_split(site), _split(cmo), _split(market))
    with open_session() as session:
        try:
            row, token = create(
                session,
                name=name,
                scopes=_split(scope),
                sites=_split(site),
                cmos=_split(cmo),
                markets=_split(market),
                all_data=all_data,
            )
        except InvalidKeyRequest as exc:
            raise CliError(str(exc), "see `cgthub api keys create --help`") from exc
    console.print(f"key {row.id} created for {name!r}; scopes {', '.join(row.scopes)}")
    console.print("store it now, it is not shown again:")
    typer.echo(token)


def _refuse_unknown_scope(sites: list[str], cmos: list[str], markets: list[str]) -> None:
    """A key scoped to a site the registry does not know sees nothing: say so before it is made."""
    from cgthub.sites import registry

    known = registry().sites
    given = {
        "site": (sites, sorted(known)),
        "CMO": (cmos, sorted({s.cmo for s in known.values() if s.cmo})),
        "market": (markets, sorted({s.market for s in known.values()})),
    }
    for what, (values, listed) in given.items():
        unknown = [v for v in values if v not in listed]
        if unknown:
            raise CliError(
                f"unknown {what} {', '.join(unknown)}: the site registry knows {', '.join(listed)}",
                "correct it, add the site to config/sites.yaml, or pass --force for one not listed yet",
            )


@keys_app.command("list")
def list_keys() -> None:
    """Every key: id, name, scopes, data scope, created, revoked (never the secret)."""
    from cgthub.api.auth import list_keys as all_keys

    with open_session(readonly=True) as session:
        rows = all_keys(session)
    table = Table(title=f"{len(rows)} API keys")
    for col in ("id", "name", "scopes", "data scope", "created", "revoked"):
        table.add_column(col)
    for row in rows:
        data = (
            "all orders"
            if row.all_data
            else "; ".join(
                f"{label} {', '.join(values)}"
                for label, values in (("sites", row.sites), ("CMOs", row.cmos), ("markets", row.markets))
                if values
            )
        )
        table.add_row(
            row.id,
            row.name,
            ", ".join(row.scopes),
            data,
            row.created_at.isoformat(timespec="seconds"),
            row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_key(key_id: str = typer.Argument(..., help="the key id (the part after cgt_)")) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from cgthub.api.auth import revoke

    with open_session() as session:
        if not revoke(session, key_id):
            raise CliError(f"no API key {key_id}", "list keys with `cgthub api keys list`")
    console.print(f"key {key_id} revoked")


@app.command("access-log")
def access_log(
    key: str | None = typer.Option(None, help="only this key id"),
    order: str | None = typer.Option(None, help="only requests about this order"),
    limit: int = typer.Option(50, min=1, max=10_000, help="most recent rows"),
) -> None:
    """Who asked the API for what, and what they got (most recent first)."""
    from sqlalchemy import select

    from cgthub.api.tables import ApiAccess

    with open_session(readonly=True) as session:
        query = select(ApiAccess).order_by(ApiAccess.id.desc()).limit(limit)
        if key:
            query = query.where(ApiAccess.key_id == key)
        if order:
            query = query.where(ApiAccess.order_id == order)
        rows = list(session.scalars(query))
    table = Table(title=f"{len(rows)} API requests")
    for col in ("at", "key", "request", "order", "status", "client"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row.at.isoformat(timespec="seconds"),
            row.key_id or "(none)",
            f"{row.method} {row.path}",
            row.order_id or "",
            str(row.status_code),
            row.client or "",
        )
    console.print(table)


@webhooks_app.command("run")
def run_webhooks(once: bool = typer.Option(False, help="one round (fan out + deliver what is due), then exit")) -> None:
    """Fan the change feed out to subscriptions and deliver due messages (a loop unless --once)."""
    from cgthub.api import webhooks
    from cgthub.store import database_url

    url = database_url()
    with open_session(readonly=True):
        pass
    if once:
        report = webhooks.pump(url)
        console.print(f"delivered {report.delivered}, failed {report.failed}, dead {report.dead}")
        return
    webhooks.run_forever(url, threading.Event())


@webhooks_app.command("dead")
def dead_letters(limit: int = typer.Option(100, min=1, max=10_000)) -> None:
    """Webhook messages that gave up, with the last error."""
    from cgthub import outbox
    from cgthub.api.webhooks import KIND

    with open_session(readonly=True) as session:
        rows = outbox.messages(session, destination_kind=KIND, status=outbox.OutboxStatus.DEAD, limit=limit)
    table = Table(title=f"{len(rows)} dead webhook messages")
    for col in ("id", "subscription", "key", "attempts", "last error"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row.id), row.destination_id, row.idempotency_key, str(row.attempts), row.last_error or "")
    console.print(table)


@webhooks_app.command("replay")
def replay(subscription: str | None = typer.Option(None, help="only this subscription's dead letters")) -> None:
    """Retry dead webhook messages (after the receiver is fixed)."""
    from cgthub.api import webhooks

    with open_session() as session:
        count = webhooks.replay(session, subscription)
    console.print(f"{count} dead message(s) queued again")
