"""When an open group commit closes: the committer sleeps while the group is open and is woken when
it has all it waits for, not once per message (6 December). A connection the group waits for that
goes away completes the group as its message would; a shutdown closes it at once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from cgthub import ledger
from cgthub.hl7.ack import ack_code
from cgthub.store import session_scope
from connectors.hospital import simulator
from tests.factories import enrolment
from tests.test_hl7_group_commit import _ack
from tests.test_hl7_listener import Running

WINDOW = 3.0  # long, so that a group closed by its window cannot pass for one closed at once


def _wait_for_connections(running: Running, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(running.listener._connections) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(running.listener._connections) == count


def test_a_group_closes_when_the_connection_it_waits_for_goes_away(db_url):
    """A new connection is waited for (it may send at once); when it closes without sending, the
    open group has nothing more to wait for and is committed then, not a window later."""
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    message = next(simulator.feed(range(1, 2)))
    with Running(db_url, batch_window=WINDOW) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sender:
            quiet = socket.create_connection(("127.0.0.1", running.port), timeout=20)
            _wait_for_connections(running, 2)
            threading.Timer(0.3, quiet.close).start()
            ack, waited = _ack(sender, message)
    assert ack_code(ack) == "AA"
    assert 0.25 <= waited < WINDOW / 3, f"answered after {waited:.2f} s"


def test_a_shutdown_commits_and_answers_an_open_group_at_once(db_url):
    """A message in a group still waiting for another connection's is committed and answered AA when
    the listener stops, without the window's wait."""
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    message = next(simulator.feed(range(1, 2)))
    running = Running(db_url, batch_window=WINDOW)
    with running:
        with (
            socket.create_connection(("127.0.0.1", running.port), timeout=20) as sender,
            socket.create_connection(("127.0.0.1", running.port), timeout=20),  # waited for, sends nothing
        ):
            _wait_for_connections(running, 2)
            answered: list[tuple[bytes, float]] = []
            reader = threading.Thread(target=lambda: answered.append(_ack(sender, message)))
            reader.start()
            deadline = time.monotonic() + 5
            while running.listener._group_waiting is None and time.monotonic() < deadline:
                time.sleep(0.01)  # the message is in the open group
            assert running.listener._group_waiting is not None
            stopping = time.monotonic()
            asyncio.run_coroutine_threadsafe(running.listener.stop(), running.loop).result(WINDOW / 2)
            stopped = time.monotonic() - stopping
            reader.join(10)
    (ack, waited), *_ = answered
    assert ack_code(ack) == "AA"
    assert stopped < WINDOW / 3 and waited < WINDOW / 2, f"stopped after {stopped:.2f} s, answered after {waited:.2f} s"
    assert running.listener.stats.messages == 1 and running.listener.stats.batches == 1
