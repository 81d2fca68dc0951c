"""Prometheus metrics: what the listener counts as it goes, and what the database says at scrape time.

Two kinds of series, so that no number is counted twice across replicas:

- process-local counters and histograms of the MLLP listener (messages received, ACKs by code,
  ACK latency), served by the listener's own small HTTP port (`serve_http`);
- gauges read from the hub's database when Prometheus scrapes (quarantine depth by stage, outbox
  backlog and dead letters per partner, partner lag, last sync duration, open alerts by kind, the
  age of each long-running loop's last heartbeat, payloads archived but not applied yet per
  partner and the oldest one's age), served once, by the API's `/metrics`. Each is one indexed
  GROUP BY (or a read of a few rows), so a scrape stays cheap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from cgthub import health, heartbeat
from cgthub.heartbeat import Heartbeat
from cgthub.outbox import OutboxMessage, OutboxStatus
from cgthub.store import session_scope
from cgthub.sync_state import SyncState
from cgthub.tables import Alert, QuarantineEntry

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HL7_RECEIVED = Counter("cgthub_hl7_messages_received", "HL7 v2 messages received over MLLP (whole frames)")
ACK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ACK_CODES = ("AA", "AE", "AR")
# The buckets' `le` labels as the library writes them (its floatToGoString: repr for these bounds).
_ACK_LE = (*(repr(bound) for bound in ACK_LATENCY_BUCKETS), "+Inf")


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK the listener built (AA, AE or AR)."""
    at = ack.find(b"MSA|")
    return ack[at + 4 : at + 6].decode("ascii", "replace") if at >= 0 else "??"


class AckTally(Collector):
    """The ACKs sent, by code (`cgthub_hl7_acks`), and their latency (`cgthub_hl7_ack_latency_seconds`),
    as plain numbers under one lock, served as the series prometheus_client's `Counter` and
    `Histogram` would serve (every bucket, `_count`, `_sum` and `_created`). Every ACK the listener
    sends is observed: the library's two objects cost about 18,300 instructions an ACK (a lock per
    value, a Python call per step), more than building the ACK; this, about 6,800."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        now = time.time()
        # Present at zero from the start, so rate() and alerts see them: [code, count, created].
        self._by_code: dict[str, list[Any]] = {code: [code, 0.0, now] for code in _ACK_CODES}
        self._by_bytes = {code.encode(): counted for code, counted in self._by_code.items()}  # MSA-1 as sent
        self._buckets = [0.0] * (len(ACK_LATENCY_BUCKETS) + 1)  # the last: +Inf
        self._sum = 0.0
        self._created = now

    def observe(self, ack: bytes, seconds: float) -> None:
        at = ack.find(b"MSA|")
        code = ack[at + 4 : at + 6] if at >= 0 else b""
        slot = bisect_left(ACK_LATENCY_BUCKETS, seconds)  # the first bound not below it: its `le` bucket
        with self._lock:
            counted = self._by_bytes.get(code)
            if counted is None:  # not AA, AE or AR: labelled as `ack_code` reads it
                text = ack_code(ack)
                counted = self._by_code.get(text) or self._by_code.setdefault(text, [text, 0.0, time.time()])
                self._by_bytes[code] = counted
            counted[1] += 1.0
            if seconds == seconds:  # NaN is in no bucket (the library's `<=` never holds), only the sum
                self._buckets[slot] += 1.0
            self._sum += seconds

    def collect(self) -> Iterator[Metric]:
        # `_created` series as the library serves them (not with PROMETHEUS_DISABLE_CREATED_SERIES).
        created_series = bool(getattr(prometheus_metrics, "_use_created", True))
        with self._lock:
            codes = [tuple(counted) for counted in self._by_code.values()]
            buckets, total = list(self._buckets), self._sum
        acks = CounterMetricFamily(
            "cgthub_hl7_acks", "ACKs sent over MLLP, by acknowledgment code (MSA-1)", labels=["code"]
        )
        for code, count, created in codes:
            acks.add_metric([code], count, created=created if created_series else None)
        yield acks
        latency = Metric(
            "cgthub_hl7_ack_latency_seconds",
            "From a frame's last byte to its ACK: queueing, group commit and answer",
            "histogram",
        )
        seen = 0.0
        for le, count in zip(_ACK_LE, buckets, strict=True):
            seen += count
            latency.add_sample(latency.name + "_bucket", {"le": le}, seen)
        latency.add_sample(latency.name + "_count", {}, seen)
        latency.add_sample(latency.name + "_sum", {}, total)
        if created_series:
            latency.add_sample(latency.name + "_created", {}, self._created)
        yield latency


ACKS = AckTally()
REGISTRY.register(ACKS)


observe_ack = ACKS.observe  # the listener's call per ACK: the method itself, no wrapper's frame


class HubCollector(Collector):
    """Gauges computed from the hub's database at each scrape."""

    def __init__(self, database_url: str | None) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("cgthub_database_up", "1 when the hub's database answered this scrape")
        try:
            families = self._from_database()
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: the hub's database did not answer: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_database(self) -> list[GaugeMetricFamily]:
        quarantine = GaugeMetricFamily("cgthub_quarantine_open", "Open quarantine entries, by stage", labels=["stage"])
        backlog = GaugeMetricFamily(
            "cgthub_outbox_backlog",
            "Outbox messages not yet delivered (pending or retrying), by partner",
            labels=["partner"],
        )
        dead = GaugeMetricFamily(
            "cgthub_outbox_dead", "Outbox messages given up on (dead letters), by partner", labels=["partner"]
        )
        lag = GaugeMetricFamily(
            "cgthub_partner_lag_seconds", "Now minus the partner stream's watermark", labels=["partner", "stream"]
        )
        since = GaugeMetricFamily(
            "cgthub_partner_last_sync_age_seconds",
            "Now minus the partner stream's last sync",
            labels=["partner", "stream"],
        )
        duration = GaugeMetricFamily(
            "cgthub_partner_sync_duration_seconds",
            "How long the partner stream's last sync took (when its report says)",
            labels=["partner", "stream"],
        )
        alerts = GaugeMetricFamily("cgthub_alerts_open", "Open operator alerts, by kind", labels=["kind"])
        beats = GaugeMetricFamily(
            "cgthub_heartbeat_age_seconds",
            "Now minus a long-running loop's last heartbeat (the webhook delivery loop: service=webhook-delivery)",
            labels=["service"],
        )
        held = GaugeMetricFamily(
            "cgthub_held_payloads",
            "Payloads archived but not applied yet (status received), by partner: the HL7 inbox's backlog, "
            "courier webhooks held while the release was not in force",
            labels=["partner"],
        )
        held_age = GaugeMetricFamily(
            "cgthub_held_payload_oldest_age_seconds",
            "Now minus the arrival of the oldest payload archived but not applied yet, by partner",
            labels=["partner"],
        )
        now = datetime.now(UTC)
        with session_scope(self.database_url, readonly=True) as session:
            for stage, count in session.execute(
                select(QuarantineEntry.stage, func.count())
                .where(QuarantineEntry.status == "open")
                .group_by(QuarantineEntry.stage)
            ):
                quarantine.add_metric([stage], count)
            undelivered: dict[str, int] = {}
            given_up: dict[str, int] = {}
            for kind, status, count in session.execute(
                select(OutboxMessage.destination_kind, OutboxMessage.status, func.count())
                .where(
                    OutboxMessage.status.in_(
                        [OutboxStatus.PENDING.value, OutboxStatus.FAILED.value, OutboxStatus.DEAD.value]
                    )
                )
                .group_by(OutboxMessage.destination_kind, OutboxMessage.status)
            ):
                target = given_up if status == OutboxStatus.DEAD.value else undelivered
                target[kind] = target.get(kind, 0) + count
            for kind in sorted({*undelivered, *given_up}):
                backlog.add_metric([kind], undelivered.get(kind, 0))
                dead.add_metric([kind], given_up.get(kind, 0))
            for partner, stream, watermark, updated_at, seconds in session.execute(
                select(
                    SyncState.partner,
                    SyncState.stream,
                    SyncState.watermark,
                    SyncState.updated_at,
                    _report_duration(),
                )
            ):
                if watermark is not None:
                    lag.add_metric([partner, stream], max(0.0, (now - _aware(watermark)).total_seconds()))
                if updated_at is not None:
                    since.add_metric([partner, stream], max(0.0, (now - _aware(updated_at)).total_seconds()))
                if seconds is not None:
                    duration.add_metric([partner, stream], float(seconds))
            for kind, count in session.execute(
                select(Alert.kind, func.count()).where(Alert.status == "open").group_by(Alert.kind)
            ):
                alerts.add_metric([kind], count)
            for beat in session.scalars(select(Heartbeat)):
                beats.add_metric([beat.service], heartbeat.age_seconds(beat, now))
            for waiting in health.held_by_partner(session, now):  # what /health/ready's `held` reads
                held.add_metric([waiting.partner], waiting.waiting)
                held_age.add_metric([waiting.partner], waiting.oldest_seconds)
        return [quarantine, backlog, dead, lag, since, duration, alerts, beats, held, held_age]


def _report_duration() -> Any:
    """`last_report.duration_seconds`, read in SQL so a scrape never loads whole reports."""
    return SyncState.last_report["duration_seconds"].as_float()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def hub_registry(database_url: str | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(database_url))
    return registry


def exposition(*registries: CollectorRegistry) -> bytes:
    return b"".join(generate_latest(registry) for registry in registries)


def serve_http(
    host: str,
    port: int,
    health: Callable[[], tuple[bool, dict[str, Any]]],
    registries: tuple[CollectorRegistry, ...] = (REGISTRY,),
) -> ThreadingHTTPServer:
    """A small HTTP port beside a non-HTTP service: /metrics, /health (state) and /health/ready
    (503 while not ready), served from a daemon thread. Returns the server (its port, shutdown)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, exposition(*registries), CONTENT_TYPE)
            elif path in ("/health", "/health/ready"):
                ready, state = health()
                status = 503 if path == "/health/ready" and not ready else 200
                self._answer(status, json.dumps(state).encode(), "application/json")
            else:
                self._answer(404, b'{"error": "not found"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not logged
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="cgthub-metrics", daemon=True).start()
    return server
