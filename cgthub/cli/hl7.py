"""`cgthub hl7`: the hospital feed: MLLP listener and file-drop ingest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cgthub.cli.common import CliError, console, open_session, work_progress

if TYPE_CHECKING:
    from cgthub.errors import Rejection
    from cgthub.hl7.files import FileReport

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
    max_in_flight: int = typer.Option(
        32,
        min=1,
        help="messages of one connection awaiting a commit; what it sends beyond waits, read but unparsed, "
        "so a sender that never reads its ACKs cannot hold up the others",
    ),
    max_buffered_bytes: int = typer.Option(
        64 * 1024 * 1024,
        help="bytes held for unfinished frames and unanswered messages, all connections together; "
        "a read beyond it closes its connection unanswered (the sender resends)",
    ),
    metrics_port: int | None = typer.Option(
        None, help="serve /metrics, /health and /health/ready on this HTTP port (0: any free port)"
    ),
    metrics_host: str = typer.Option("127.0.0.1", help="address of the metrics port"),
    release_check_seconds: float = typer.Option(
        30.0,
        min=0.1,
        help="while applying, re-check every this many seconds that the live files are the release in force; "
        "if not, archive only (ACK once archived, apply nothing) and raise an alert until they are again",
    ),
) -> None:
    """Receive HL7 v2 over MLLP; ACK each message only after it is committed."""
    from cgthub.hl7.event_loop import new_listener_loop
    from cgthub.hl7.listener import MllpListener
    from cgthub.release_guard import ensure_release_in_force
    from cgthub.release_watch import ReleaseWatch
    from cgthub.runtime import tune_gc

    with open_session(readonly=True):
        pass  # the database exists and has the hub's schema: named now, not at the first message
    in_force = None
    if apply:  # archive-only maps nothing: the HL7 inbox DAG checks the release before it applies
        in_force = ensure_release_in_force()  # a hub in a release environment maps only with the bundle promoted there
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
            max_in_flight=max_in_flight,
            max_buffered_bytes=max_buffered_bytes,
        )
    except ValueError as exc:
        raise CliError(str(exc), "raise --max-buffered-bytes or lower --max-bytes") from exc
    # A running listener is held to the release too: a drift switches it to archive only (cgthub.release_watch).
    watch = ReleaseWatch(listener, every=release_check_seconds) if apply else None
    if watch is not None:
        watch.bundle = in_force

    async def run() -> None:
        try:
            bound_host, bound_port = await listener.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port") from exc
        mode = "apply" if apply else "archive only"
        console.print(f"listening for MLLP on {bound_host}:{bound_port} ({mode}), event loop {listener.event_loop}")
        served = None
        if metrics_port is not None:
            from cgthub.metrics import serve_http

            try:
                served = serve_http(metrics_host, metrics_port, watch.health if watch else listener.health)
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
        watching = asyncio.create_task(watch.run(stop)) if watch is not None else None
        await stop.wait()
        if watching is not None:
            await watching
        console.print("shutting down: finishing in-flight messages")
        await listener.stop()
        if served is not None:
            served.shutdown()
        console.print(f"done: {listener.stats}")

    # The loop CGTHUB_LISTENER_EVENT_LOOP names: uvloop by default (cgthub.hl7.event_loop).
    with asyncio.Runner(loop_factory=new_listener_loop) as runner:
        runner.run(run())


# What each rejection means to the person who ran the ingest.
_REASON_WORDS = {
    "unreadable": "no readable HL7 message",
    "unsupported_type": "unsupported message type",
    "payload_too_large": "too large",
    "route": "unknown site or sender",
    "qualify": "site not qualified",
    "mapping": "mapping failed",
    "validation": "invalid value",
    "correlate": "no matching order yet",
    "identity": "identity conflict",
    "conflict": "resent with other content (the first version stays applied)",
    "unapplied": "not applied",
    "not_stored": "not stored",
}


def _reasons(counts: Counter[Rejection], codes: frozenset[str]) -> str:
    """`2 unsupported message type, 1 no readable HL7 message` for the rejections answered with `codes`."""
    from cgthub.hl7.ack import ANSWERS

    named = [(n, _REASON_WORDS.get(r.value, r.value)) for r, n in counts.most_common() if ANSWERS[r][0] in codes]
    return ", ".join(f"{n} {words}" for n, words in named)


def _conflicts_next(report: FileReport) -> None:
    """What to do about resends that changed an event already applied (stage `conflict`, AE 205):
    neither a resend nor a replay settles them, a person decides which version is right."""
    from cgthub.errors import Rejection

    count = report.rejections[Rejection.CONFLICT]
    if count:
        console.print(
            f"{count} message(s) resent an event already applied with other content; each waits in "
            "quarantine: `cgthub quarantine list --stage conflict` lists them and `cgthub quarantine show ID` "
            "names the fields that differ. Check them with the sender, then `cgthub quarantine retry ID` "
            "applies the new version as a correction, or `cgthub quarantine discard ID` keeps the first"
        )


def _not_read(lines: list[str]) -> None:
    """Drop-folder files left alone or set aside (cgthub.drop_folder), a line each: name and rule."""
    for line in lines:
        console.print(f"not ingested: {line}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(
        ..., exists=True, help="HL7 files or batch files, or folders of them (every file in each)"
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="ingest the files of subfolders too"),
    batch: int = typer.Option(500, min=1, max=10_000, help="messages archived and applied per transaction"),
) -> None:
    """Ingest HL7 files; each is deleted once archived, a receipt left in done/ or failed/ beside it.

    Every message is archived. One quarantined (AE) waits in the quarantine for someone to act; one
    rejected (AR) will never be applied as sent (unreadable, or a type no mapping handles)."""
    from cgthub.hl7.files import files_in, ingest_paths
    from cgthub.release_guard import ensure_release_in_force
    from cgthub.runtime import tune_gc
    from cgthub.settings import get_settings

    found = files_in(list(paths), recursive=recursive)
    files = found.ready
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        raise CliError(
            f"cannot read {', '.join(map(str, unreadable))}: permission denied", "check the files' owner and mode"
        )
    if not files and not found.skipped:
        raise CliError(f"no files in {', '.join(map(str, paths))}", "pass --recursive to ingest subfolders' files")
    get_settings().pseudonym_key  # noqa: B018  a bad key is named before any file is touched
    get_settings().archive_key  # noqa: B018
    with open_session(readonly=True):
        pass  # the database exists and has the hub's schema
    ensure_release_in_force()  # a hub in a release environment maps only with the bundle promoted there
    _not_read(found.skipped)
    if not files:
        return
    tune_gc()
    # The summary below counts each outcome. As it was afterwards: run in-process (a test, a notebook),
    # the pipeline's warnings must not stay silenced for what runs next.
    pipeline_log = logging.getLogger("cgthub.pipeline")
    level_before = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        with work_progress("ingesting HL7 files", total=len(files), unit="messages") as bar:

            def advanced(report: FileReport) -> None:
                bar.advance_to(report.files, count=report.messages)

            report = ingest_paths(files, batch=batch, progress=advanced)
    finally:
        pipeline_log.setLevel(level_before)
    seconds = time.monotonic() - started
    rejected = _reasons(report.rejections, frozenset({"AR"}))
    quarantined = _reasons(report.rejections, frozenset({"AE"}))
    console.print(
        f"{report.files} file{'' if report.files == 1 else 's'}, "
        f"{report.messages} message{'' if report.messages == 1 else 's'}: {report.accepted} accepted, "
        f"{report.errors} quarantined (AE{': ' + quarantined if quarantined else ''}), "
        f"{report.rejected} rejected (AR{': ' + rejected if rejected else ''}) "
        f"in {seconds:.1f} s ({report.messages / max(seconds, 1e-6):.0f} messages/s)"
    )
    _conflicts_next(report)
    _not_read(report.skipped)
    if report.kept_files:
        raise CliError(
            f"some messages of {', '.join(report.kept_files)} could not be archived; the files stay where they are",
            "ingest them again once the database is healthy (what was archived counts as a duplicate)",
        )
    if report.failed_files:
        raise CliError(
            f"every message of {', '.join(report.failed_files)} was rejected "
            f"({_reasons(report.failed_reasons, frozenset({'AR'}))}); receipts in failed/",
            "`cgthub quarantine list` shows each message and why; "
            "an unsupported type needs a mapping under mappings/hl7/",
        )
