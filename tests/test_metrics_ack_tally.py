"""The listener's ACK series (`cgthub_hl7_acks`, `cgthub_hl7_ack_latency_seconds`) kept as plain
numbers (`metrics.AckTally`) are served exactly as prometheus_client's `Counter` and `Histogram`
serve the same observations: every series, label, bucket, count and sum, and the `_created` series."""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cgthub import metrics
from cgthub.hl7.ack import build_ack

_ORM = b"MSH|^~\\&|EPIC|US-HOU-02|CGTHUB|HUB|20260303112000||ORM^O01^ORM_O01|C1|P|2.5.1\rPID|1||X\r"
_LATENCIES = [0.0, 0.0004, 0.001, 0.0012, 0.0025, 0.003, 0.005, 0.009, 0.01, 0.02, 0.025, 0.049, 0.05, 0.07]
_LATENCIES += [0.1, 0.2, 0.25, 0.3, 0.5, 0.9, 1.0, 2.0, 2.5, 4.9, 5.0, 5.01, 60.0, -0.001, float("nan")]


def _library(acks: list[bytes], seconds: list[float]) -> bytes:
    """What prometheus_client's own objects serve for these ACKs (the listener's metrics before)."""
    registry = CollectorRegistry()
    counter = Counter(
        "cgthub_hl7_acks", "ACKs sent over MLLP, by acknowledgment code (MSA-1)", ["code"], registry=registry
    )
    histogram = Histogram(
        "cgthub_hl7_ack_latency_seconds",
        "From a frame's last byte to its ACK: queueing, group commit and answer",
        buckets=metrics.ACK_LATENCY_BUCKETS,
        registry=registry,
    )
    for code in ("AA", "AE", "AR"):
        counter.labels(code)
    for ack, s in zip(acks, seconds, strict=True):
        counter.labels(metrics.ack_code(ack)).inc()
        histogram.observe(s)
    return generate_latest(registry)


def _tally(acks: list[bytes], seconds: list[float]) -> bytes:
    registry = CollectorRegistry()
    tally = metrics.AckTally()
    registry.register(tally)
    for ack, s in zip(acks, seconds, strict=True):
        tally.observe(ack, s)
    return generate_latest(registry)


def _without_moments(text: bytes) -> str:
    """The exposition with each `_created` value (a moment) blanked; the series themselves kept."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 <moment>", text.decode())


def test_the_tally_serves_what_the_library_serves_for_every_code_and_bucket():
    codes = [b"AA", b"AE", b"AR", b"AA", b"AA", b"AE", b"XX"]
    acks = [build_ack(_ORM, code.decode(), "why" if code != b"AA" else "") for code in codes]
    acks += [b"MSH|no acknowledgment segment\r"]  # labelled "??" as ack_code reads it
    acks = (acks * 4)[: len(_LATENCIES)]
    served = _without_moments(_tally(acks, _LATENCIES))
    assert served == _without_moments(_library(acks, _LATENCIES))
    assert 'cgthub_hl7_acks_total{code="XX"}' in served and 'cgthub_hl7_acks_total{code="??"}' in served
    assert 'cgthub_hl7_ack_latency_seconds_bucket{le="0.001"} 4.0' in served  # 0, 0.0004, 0.001, -0.001
    assert "cgthub_hl7_ack_latency_seconds_count 28.0" in served  # NaN is in no bucket, as in the library


def test_before_any_ack_the_codes_and_buckets_are_served_at_zero():
    served = _without_moments(_tally([], []))
    assert served == _without_moments(_library([], []))
    assert 'cgthub_hl7_acks_total{code="AR"} 0.0' in served


def test_acks_observed_from_several_threads_are_all_counted():
    tally = metrics.AckTally()
    ack = build_ack(_ORM, "AA", "")

    def send() -> None:
        for _ in range(5000):
            tally.observe(ack, 0.003)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registry = CollectorRegistry()
    registry.register(tally)
    assert registry.get_sample_value("cgthub_hl7_acks_total", {"code": "AA"}) == 20000
    assert registry.get_sample_value("cgthub_hl7_ack_latency_seconds_bucket", {"le": "0.005"}) == 20000
