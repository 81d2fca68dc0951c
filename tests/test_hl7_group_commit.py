"""The group commit waits for senders that answer at once, not for those on a schedule of their own.

A hospital interface sends a message, waits for its ACK, and sends the next when its system has
one: seconds later, not at once. Holding its message for the other connections' next messages
(the batch window) would only add the window to each of its ACKs."""

from __future__ import annotations

import socket
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
