"""One entry point for the hub's long-running services, for containers and `make up`.

    python -m cgthub.services mllp-listener      the hospital HL7 v2 MLLP listener (cgthub.hl7)
    python -m cgthub.services sandbox <partner>  a partner's declared sandbox (cgthub.partners)
    python -m cgthub.services feeder [--tick S]  the demo story's partner traffic, slice by slice
    python -m cgthub.services webhook-delivery   the API's webhook deliveries from the outbox
    python -m cgthub.services courier-webhook    the courier's signed webhooks (CGTHUB_COURIER_WEBHOOK_SECRET)

docker-compose.yml names these rather than each package's internals, so a container's command
stays valid when a package moves; a service whose package is not installed exits with a clear
message instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import threading

from cgthub import partners
from cgthub.settings import get_settings


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def mllp_listener() -> int:
    if not _installed("cgthub.hl7"):
        print("cgthub.hl7 (the MLLP listener) is not installed in this build", file=sys.stderr)
        return 2
    from cgthub.cli import main

    # Archive-only: ACK once committed to the raw archive; the HL7 inbox DAG maps and applies.
    sys.argv = ["cgthub", "hl7", "listen", "--archive-only", *sys.argv[2:]]
    main()
    return 0


def sandbox(partner: str, host: str, port: int) -> int:
    """Serve the sandbox a partner declares: its `create_app()` with uvicorn, or its own `serve()`."""
    module = partners.sandboxes()[partner].module
    if not _installed(module):
        print(f"{module} is not installed in this build", file=sys.stderr)
        return 2
    served = importlib.import_module(module)
    if hasattr(served, "serve"):  # not HTTP: the hospital's MLLP receiver
        served.serve(host, port)
        return 0
    import uvicorn

    uvicorn.run(served.create_app(), host=host, port=port, log_level="warning")
    return 0


def feeder(tick: float) -> int:
    from cgthub.up import _feed

    _feed(tick, threading.Event())
    return 0


def webhook_delivery(health_host: str, health_port: int) -> int:
    """The delivery loop, with /health, /health/ready and /metrics on a small HTTP port."""
    import signal

    from cgthub import health, metrics
    from cgthub.api import webhooks
    from cgthub.store import database_url

    url = database_url()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics.serve_http(health_host, health_port, lambda: health.report(url, listener_address=""))
    webhooks.run_forever(url, stop)
    return 0


def courier_webhook(host: str, port: int) -> int:
    """The courier webhook receiver, with /health and /health/ready beside its endpoint. Served here
    with its lifespan, it also applies every 30 s the webhooks it archived but held (503) while the
    live files were not the release bundle in force (connectors/courier/webhook.py)."""

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from cgthub import health, partners
    from cgthub.store import database_url

    declared = partners.registry().get("courier")
    if declared is None or declared.receiver is None:
        print("no registered partner named 'courier' declares a webhook receiver", file=sys.stderr)
        return 2
    url = database_url()
    missing = _no_hub_schema(url)
    if missing:  # it would answer 202 and quarantine every event as a database failure
        print(missing, file=sys.stderr)
        return 2
    app: FastAPI = partners.resolve(declared.receiver)(secret=get_settings().courier_webhook_secret, database_url=url)

    # response_model=None: the answer is built here, and the return annotation is a string under
    # `from __future__ import annotations` that FastAPI cannot resolve (the schema answered 500).
    @app.get("/health", response_model=None)
    def alive() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready", response_model=None)
    def ready() -> JSONResponse:
        is_ready, state = health.report(url, listener_address="")
        return JSONResponse(state, status_code=200 if is_ready else 503)

    from cgthub.api.http_protocol import GuardedHttpProtocol  # a courier's side is the internet's

    uvicorn.run(app, host=host, port=port, log_level="warning", http=GuardedHttpProtocol)
    return 0


def _no_hub_schema(url: str) -> str:
    """Why the hub's database cannot take payloads yet (no file, no schema), or ''."""
    from sqlalchemy import inspect

    from cgthub.errors import CgthubError
    from cgthub.store import check_database, get_engine, safe_url
    from cgthub.tables import RawMessage

    try:
        check_database(url)
        archived = inspect(get_engine(url)).has_table(RawMessage.__tablename__)
    except CgthubError as problem:
        return str(problem)
    if not archived:
        return f"the database {safe_url(url)} has no hub schema yet: run `cgthub db upgrade` first"
    return ""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cgthub.services", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="service", required=True)
    sub.add_parser("mllp-listener", help="hospital HL7 v2 over MLLP")
    box = sub.add_parser("sandbox", help="a partner sandbox")
    box.add_argument("partner", choices=tuple(partners.sandboxes()))
    box.add_argument("--host", default="127.0.0.1")
    box.add_argument("--port", type=int, default=0, help="default: 8701.. by partner")
    feed = sub.add_parser("feeder", help="demo partner traffic")
    feed.add_argument("--tick", type=float, default=30.0)
    delivery = sub.add_parser("webhook-delivery", help="webhook deliveries from the outbox")
    delivery.add_argument("--health-host", default="0.0.0.0")  # noqa: S104 - a container's probe port
    delivery.add_argument("--health-port", type=int, default=9101)
    courier = sub.add_parser("courier-webhook", help="the courier webhook receiver")
    courier.add_argument("--host", default="127.0.0.1")
    courier.add_argument("--port", type=int, default=8710)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The listener's own options (--host, --port) pass through to `cgthub hl7 listen`.
    args, _rest = parser().parse_known_args(argv)
    if args.service == "mllp-listener":
        return mllp_listener()
    if args.service == "sandbox":
        return sandbox(args.partner, args.host, args.port or partners.sandboxes()[args.partner].port)
    if args.service == "webhook-delivery":
        return webhook_delivery(args.health_host, args.health_port)
    if args.service == "courier-webhook":
        return courier_webhook(args.host, args.port)
    return feeder(args.tick)


if __name__ == "__main__":
    sys.exit(main())
