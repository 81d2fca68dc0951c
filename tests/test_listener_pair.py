"""Two MLLP listeners on one PostgreSQL, as two hosts behind a load balancer run them.

Each listener is `cgthub hl7 listen --archive-only` in its own process (as the mllp-listener
container runs it); hospital connections are real loopback sockets waiting for each ACK; the HL7
inbox step is `partner_sync.apply_hl7_inbox`, run by two workers at once. Whatever the listeners
were sent, each message is applied once: one ledger entry per message, every chain verifies.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from cgthub import ledger, partner_sync, pipeline, store
from cgthub.devtools.samples import enrolment
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.store import session_scope
from cgthub.tables import Base, LedgerEntry, Order, RawMessage
from connectors.hospital import simulator

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PATIENTS = range(1, 41)
EVENTS_PER_PATIENT = 4  # what the HL7 mappings make of one patient's ORM, SIU and ORU


@pytest.fixture
def pg_url(pg_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    store.upgrade(pg_schema_url)
    with store.get_engine(pg_schema_url).begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    monkeypatch.setenv("CGTHUB_DATABASE_URL", pg_schema_url)
    with session_scope(pg_schema_url) as session:
        ledger.append_many(session, [enrolment(n) for n in PATIENTS])
    yield pg_schema_url


class Listener:
    def __init__(self, url: str) -> None:
        command = [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"]
        env = {**os.environ, "CGTHUB_DATABASE_URL": url, "COLUMNS": "200"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        line = self.process.stdout.readline().decode()
        self.port = int(re.search(r":(\d+) \(archive only\)", line).group(1))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[Listener, Listener]]:
    first, second = Listener(pg_url), Listener(pg_url)
    yield first, second
    first.stop()
    second.stop()


def _key(message: bytes) -> str:
    fields = message.split(b"\r")[0].split(b"|")
    return f"{fields[3].decode()}:{fields[9].decode()}"


def send(port: int, messages: list[bytes], acked: set[str] | None = None) -> list[str]:
    """One hospital connection: each message waits for its ACK. Stops quietly when the listener dies."""
    codes = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            decoder = FrameDecoder()
            for message in messages:
                sock.sendall(frame(message))
                answer: list[bytes] = []
                while not answer:
                    block = sock.recv(65536)
                    if not block:
                        return codes
                    answer = [a for a in decoder.feed(block) if isinstance(a, bytes)]
                codes.append(ack_code(answer[0]))
                if acked is not None and codes[-1] == "AA":
                    acked.add(_key(message))
    except OSError:
        pass
    return codes


def inbox_by_two_workers(url: str) -> None:
    """The HL7 inbox step on two workers at once, then once more for anything archived meanwhile."""
    with ThreadPoolExecutor(2) as pool:
        for report in pool.map(lambda _n: partner_sync.apply_hl7_inbox(database_url=url, limit=25), range(2)):
            assert not report["errors"], report["errors"]
    while partner_sync.apply_hl7_inbox(database_url=url)["payloads"]:
        pass


def assert_each_message_applied_once(url: str, messages: list[bytes], acked: set[str] | None = None) -> None:
    with session_scope(url) as session:
        left = session.scalar(select(func.count()).where(RawMessage.system == "hl7", RawMessage.status == "received"))
        assert left == 0
        entries = session.execute(
            select(LedgerEntry.source_event_id, func.count())
            .where(LedgerEntry.source_system == "hl7")
            .group_by(LedgerEntry.source_event_id)
        ).all()
        assert all(count == 1 for _event, count in entries)
        assert len(entries) == EVENTS_PER_PATIENT * len(PATIENTS)
        archived = dict(
            session.execute(
                select(RawMessage.dedupe_key, func.count())
                .where(RawMessage.system == "hl7")
                .group_by(RawMessage.dedupe_key)
            ).all()
        )
        assert archived == {_key(m): 1 for m in messages}, "each message archived once, whichever host took it"
        applied = set(
            session.scalars(select(RawMessage.dedupe_key).join(LedgerEntry, LedgerEntry.raw_id == RawMessage.id))
        )
        assert {_key(m) for m in messages} <= applied
        if acked is not None:
            assert acked <= applied
        statuses = set(session.scalars(select(Order.status).where(Order.id.is_not(None))))
        assert statuses == {"collected"}, statuses
        orders, problems = ledger.verify(session)
        assert orders == len(PATIENTS) and problems == []


def test_the_same_messages_sent_to_both_listeners_are_applied_once(pg_url, pair):
    messages = list(simulator.feed(PATIENTS))
    with ThreadPoolExecutor(4) as pool:
        # Each listener gets every message, from two connections at once (a retry through the other host).
        runs = [pool.submit(send, listener.port, messages) for listener in pair for _ in range(2)]
        codes = [future.result(120) for future in runs]
    assert all(c == ["AA"] * len(messages) for c in codes), [sorted(set(c)) for c in codes]
    inbox_by_two_workers(pg_url)
    assert_each_message_applied_once(pg_url, messages)


def test_one_orders_messages_spread_over_both_while_the_inbox_runs(pg_url, pair):
    messages = list(simulator.feed(PATIENTS))
    # Connection k of each host: every patient's ORM and ORU go to one listener, the SIU to the other.
    spread: list[list[bytes]] = [[], [], [], []]
    for i, message in enumerate(messages):
        patient, step = divmod(i, 3)
        host = (patient + (step == 1)) % 2
        spread[host * 2 + patient % 2].append(message)
    stop = threading.Event()

    def inbox_meanwhile() -> None:
        while not stop.is_set():
            inbox_by_two_workers(pg_url)
            time.sleep(0.05)

    worker = threading.Thread(target=inbox_meanwhile)
    worker.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            ports = [pair[0].port, pair[0].port, pair[1].port, pair[1].port]
            codes = list(pool.map(send, ports, spread))
    finally:
        stop.set()
        worker.join(60)
    assert all(set(c) == {"AA"} for c in codes) and sum(map(len, codes)) == len(messages)
    inbox_by_two_workers(pg_url)
    assert_each_message_applied_once(pg_url, messages)


def test_one_listener_killed_mid_stream_loses_nothing(pg_url, pair):
    survivor, doomed = pair
    messages = list(simulator.feed(PATIENTS))
    halves = [messages[0::2], messages[1::2]]
    acked: set[str] = set()
    with ThreadPoolExecutor(2) as pool:
        to_doomed = pool.submit(send, doomed.port, halves[0], acked)
        to_survivor = pool.submit(send, survivor.port, halves[1], acked)
        while len(acked) < len(messages) // 6:  # mid-stream: some of the doomed host's share is in
            time.sleep(0.01)
        doomed.kill()
        sent_to_doomed = to_doomed.result(60)
        assert to_survivor.result(120) == ["AA"] * len(halves[1])
    assert 0 < len(sent_to_doomed) < len(halves[0]), "the listener died mid-stream"
    # The load balancer sends the hospital's reconnect to the survivor; it resends from the first
    # message it holds no ACK for, and one more (the ACK in flight when the host died may be lost).
    resume = max(0, len(sent_to_doomed) - 1)
    assert send(survivor.port, halves[0][resume:], acked) == ["AA"] * len(halves[0][resume:])
    inbox_by_two_workers(pg_url)
    assert_each_message_applied_once(pg_url, messages, acked)


def test_two_inbox_workers_claim_disjoint_messages(pg_url, pair):
    """A worker that claimed messages holds them until it commits; another one takes the rest."""
    messages = list(simulator.feed(PATIENTS))
    assert send(pair[0].port, messages) == ["AA"] * len(messages)
    first_claimed, release = threading.Event(), threading.Event()
    claims: dict[str, list[int]] = {}

    def worker(name: str, limit: int, hold: bool) -> None:
        with session_scope(pg_url) as session:
            results = pipeline.process_pending(session, "hl7", partner_sync.mapper_for(session), limit=limit)
            claims[name] = [r.raw_id for r in results]
            if hold:
                first_claimed.set()
                release.wait(30)

    holder = threading.Thread(target=worker, args=("first", len(messages) // 2, True))
    holder.start()
    assert first_claimed.wait(60)
    other = threading.Thread(target=worker, args=("second", len(messages), False))
    other.start()
    other.join(15)  # without claiming, the second waits on the first's locks or applies its messages too
    release.set()
    holder.join(60)
    other.join(60)
    assert set(claims["first"]).isdisjoint(claims["second"])
    assert len(claims["first"]) + len(claims["second"]) == len(messages)
    assert_each_message_applied_once(pg_url, messages)
