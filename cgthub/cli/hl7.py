"""`cgthub hl7`: the hospital feed: MLLP listener and file-drop ingest."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import typer
from rich.progress import Progress

from cgthub.cli.common import CliError, console
from cgthub.runtime import tune_gc

app = typer.Typer(help="Hospital HL7 v2 feed (MLLP, batch files).", no_args_is_help=True)


@app.command()
def listen(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(2575, help="TCP port (0: any free port)"),
    apply: bool = typer.Option(
        True,
        "--apply/--archive-only",
        help="map and apply in the ACK's transaction, or ACK once archived and let the HL7 inbox DAG apply",
    ),
    max_bytes: int = typer.Option(1024 * 1024, min=1, help="largest message accepted"),
    idle_timeout: float = typer.Option(
        300.0, min=0.001, help="seconds a connection with no frame under way stays open (stray bytes do not count)"
    ),
    frame_timeout: float = typer.Option(
        60.0, min=0.001, help="seconds a frame may take from its start block to its end, however its bytes trickle"
    ),
    max_connections: int = typer.Option(128, min=1, help="connections open at once; more are closed on arrival"),
    max_buffered_bytes: int = typer.Option(
        64 * 1024 * 1024,
        help="bytes held for unfinished frames and unanswered messages, all connections together; "
        "a read beyond it closes its connection unanswered (the sender resends)",
    ),
    metrics_port: int | None = typer.Option(
        None, help="serve /metrics, /health and /health/ready on this HTTP port (0: any free port)"
    ),
    metrics_host: str = typer.Option("127.0.0.1", help="address of the metrics port"),
) -> None:
    """Receive HL7 v2 over MLLP; ACK each message only after it is committed."""
    from cgthub.hl7.listener import MllpListener

    tune_gc()
    try:
        listener = MllpListener(
            host,
            port,
            apply=apply,
            max_message_bytes=max_bytes,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
            max_connections=max_connections,
            max_buffered_bytes=max_buffered_bytes,
        )
    except ValueError as exc:
        raise CliError(str(exc), "raise --max-buffered-bytes or lower --max-bytes") from exc

    async def run() -> None:
        try:
            bound_host, bound_port = await listener.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port") from exc
        console.print(f"listening for MLLP on {bound_host}:{bound_port} ({'apply' if apply else 'archive only'})")
        served = None
        if metrics_port is not None:
            from cgthub.metrics import serve_http

            try:
                served = serve_http(metrics_host, metrics_port, listener.health)
            except OSError as exc:
                raise CliError(
                    f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}",
                    "choose another --metrics-port",
                ) from exc
            console.print(f"metrics and health on http://{metrics_host}:{served.server_address[1]}/metrics")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        console.print("shutting down: finishing in-flight messages")
        await listener.stop()
        if served is not None:
            served.shutdown()
        console.print(f"done: {listener.stats}")

    asyncio.run(run())


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="HL7 files or batch files"),
    batch: int = typer.Option(500, min=1, max=10_000),
) -> None:
    """Ingest HL7 files; each is deleted once archived, a receipt left in done/ or failed/ beside it."""
    from cgthub.hl7.files import ingest_paths

    tune_gc()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ingesting HL7 files", total=None)
        report = ingest_paths(list(paths), batch=batch, progress=lambda n: progress.advance(task, n))
    console.print(
        f"{report.files} files, {report.messages} messages: {report.accepted} accepted, "
        f"{report.errors} archived but quarantined (AE), {report.rejected} rejected (AR)"
    )
    if report.kept_files:
        raise CliError(
            f"some messages of {', '.join(report.kept_files)} could not be archived; the files stay where they are",
            "ingest them again once the database is healthy (what was archived counts as a duplicate)",
        )
    if report.failed_files:
        raise CliError(f"no readable message in {', '.join(report.failed_files)} (receipt in failed/)", None)
