"""The group commit waits for senders that answer at once, not for those on a schedule of their own.

A hospital interface sends a message, waits for its ACK, and sends the next when its system has
one: seconds later, not at once. Holding its message for the other connections' next messages
(the batch window) would only add the window to each of its ACKs."""

from __future__ import annotations

import socket
import threading
import time

from cgthub import ledger
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.store import session_scope
from connectors.hospital import simulator
from tests.factories import enrolment
from tests.test_hl7_listener import Running

WINDOW = 1.5  # long, so that a wait for it cannot hide in a slow commit


def _ack(sock: socket.socket, message: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(frame(message))
    decoder, got = FrameDecoder(), []
    while not got:
        block = sock.recv(65536)
        assert block, "the listener closed the connection without an ACK"
        got = [a for a in decoder.feed(block) if isinstance(a, bytes)]
    return got[0], time.monotonic() - started


def test_a_sender_on_its_own_schedule_is_not_held_for_the_batch_window(db_url):
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in (1, 2)])
    first, second = (next(simulator.feed(range(n, n + 1))) for n in (1, 2))
    with Running(db_url, batch_window=WINDOW) as running:
        with (
            socket.create_connection(("127.0.0.1", running.port), timeout=20) as sender,
            socket.create_connection(("127.0.0.1", running.port), timeout=20),  # a quiet interface
        ):
            deadline = time.monotonic() + 5
            while len(running.listener._connections) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            ack, waited = _ack(sender, first)
            assert ack_code(ack) == "AA"
            assert waited >= WINDOW * 0.9  # a new connection is waited for, as one that answers at once
            time.sleep(WINDOW + 0.1)  # the sender's own schedule: its next message comes later
            ack, waited = _ack(sender, second)
    assert ack_code(ack) == "AA"
    assert waited < WINDOW * 0.6, f"held {waited:.2f} s for a quiet connection's next message"


def _slow_commits(listener, seconds: float) -> None:
    """Each group commit takes `seconds` longer, as on a slow disk: the event loop reads nothing meanwhile."""
    commit = listener._commit

    def slow(messages):
        time.sleep(seconds)
        return commit(messages)

    listener._commit = slow


def _feeds(url: str, senders: int, patients_each: int) -> list[list[bytes]]:
    """For each sender the HL7 feed of its own patients (3 messages a patient), enrolled."""
    patients = range(1, senders * patients_each + 1)
    with session_scope(url) as s:
        ledger.append_many(s, [enrolment(n) for n in patients])
    return [[m for n in patients[k::senders] for m in simulator.feed(range(n, n + 1))] for k in range(senders)]


def _group(listener, since: tuple[int, int]) -> float:
    """Messages per group commit since (messages, batches) were `since`."""
    messages, batches = listener.stats.messages - since[0], listener.stats.batches - since[1]
    return messages / batches


def test_senders_that_fell_behind_are_grouped_while_each_commit_outlasts_the_window(db_url):
    """8 interfaces of one interface engine first send on a schedule of their own (so are not waited
    for), then fall behind it and send each message as soon as its ACK is back, the engine serving
    them one after the other, while each commit takes longer than the batch window. The time the
    listener spent committing, when it could read nothing, does not count against them: they are
    waited for again and grouped about 8 to a commit, not in alternating batches of 1 and 7."""
    senders, window = 8, 0.1
    feeds = _feeds(db_url, senders, 3)
    codes: list[str] = []
    with Running(db_url, batch_window=window) as running:
        _slow_commits(running.listener, 2 * window)
        marks: list[tuple[int, int]] = []
        caught_up = threading.Barrier(senders, action=lambda: marks.append(_stats(running.listener)))

        def sender(k: int, feed: list[bytes]) -> None:
            with socket.create_connection(("127.0.0.1", running.port), timeout=60) as sock:
                codes.append(ack_code(_ack(sock, feed[0])[0]))
                caught_up.wait(60)
                time.sleep(3 * window)  # its own schedule: the next message comes later
                for message in feed[1:]:  # and now it is behind it
                    codes.append(ack_code(_ack(sock, message)[0]))
                    time.sleep(k * window / 12)  # the engine turns to this connection after the others

        threads = [threading.Thread(target=sender, args=(k, feed)) for k, feed in enumerate(feeds)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        group = _group(running.listener, marks[0])
    assert codes == ["AA"] * senders * 9
    assert group >= 6.0, f"{group:.1f} messages per commit"


def _slow_reads(listener, seconds: float) -> None:
    """Reading what came on a connection takes `seconds` longer, as on a busy core."""
    read_frames = listener._read_frames

    def slow(decoder, data):
        time.sleep(seconds)
        return read_frames(decoder, data)

    listener._read_frames = slow


def test_64_senders_waiting_for_their_acks_are_grouped_into_large_commits(db_url):
    """64 interfaces of one interface engine each send their next message as soon as the engine
    has turned to them after its ACK came back, all within a batch window. Reading the 64 frames
    takes longer than the window, but each came within a window of the one before: the group
    commit waits for them as long as they keep coming, so they share one commit, not scattered
    over several each paying a commit's fixed cost."""
    senders, window = 64, 0.08
    feeds = _feeds(db_url, senders, 2)
    codes: list[str] = []
    with Running(db_url, batch_window=window, max_connections=senders, max_connections_per_address=senders) as running:
        _slow_commits(running.listener, 0.5)
        _slow_reads(running.listener, window / 16)
        ready = threading.Barrier(senders)

        def sender(k: int, feed: list[bytes]) -> None:
            with socket.create_connection(("127.0.0.1", running.port), timeout=60) as sock:
                ready.wait(60)
                for message in feed:
                    time.sleep(k * window / 100)  # the engine turns to this connection after the others
                    codes.append(ack_code(_ack(sock, message)[0]))

        threads = [threading.Thread(target=sender, args=(k, feed)) for k, feed in enumerate(feeds)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        group = _group(running.listener, (0, 0))
    assert codes == ["AA"] * senders * 6
    assert group >= 46, f"{group:.1f} messages per commit"  # 6 rounds of 64 in at most 8 commits


def _stats(listener) -> tuple[int, int]:
    return listener.stats.messages, listener.stats.batches
