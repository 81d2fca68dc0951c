"""What a sender can make the MLLP listener hold is bounded, over real loopback sockets:
connections, time per frame (however slowly its bytes trickle), idle time and buffered bytes."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import pytest

from cgthub.hl7.ack import ack_code
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import END_BLOCK, START, frame
from tests.test_hl7_listener import ORM, Running, exchange


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the listener did not get there in time"
        time.sleep(0.01)


def closed_by_listener(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the listener closes `sock` (end of stream or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_connections_over_the_limit_are_closed_on_arrival_and_a_freed_slot_is_reused(db_url, caplog):
    caplog.set_level(logging.WARNING, "cgthub.hl7.listener")
    with Running(db_url, apply=False, max_connections=2) as running:
        first, second = connect(running.port), connect(running.port)
        wait_for(lambda: running.listener.stats.connections == 2)
        third = connect(running.port)
        started = time.monotonic()
        assert closed_by_listener(third, timeout=2)
        assert time.monotonic() - started < 1
        first.sendall(frame(ORM))  # the connections let in are served as before
        first.settimeout(5)
        assert ack_code(first.recv(65536)[1:-2]) == "AA"
        second.close()
        wait_for(lambda: len(running.listener._connections) == 1)
        (ack,) = exchange(running.port, frame(ORM), 1)
        first.close()
        third.close()
        stats = running.listener.stats
    assert ack_code(ack) == "AA"
    assert stats.refused_connections == 1 and stats.connections == 3
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and "the limit is 2" in refusals[0]
    assert "MRN" not in " ".join(refusals) and "Doe" not in " ".join(refusals)


def test_a_frame_trickled_byte_by_byte_is_closed_at_its_deadline(db_url):
    """Every byte used to reset the idle timeout: a sender dribbling one never finished the frame."""
    with Running(db_url, apply=False, idle_timeout=30, frame_timeout=1.0) as running:
        sock = connect(running.port)
        sock.settimeout(0.05)
        started, sent, closed = time.monotonic(), 0, False
        while time.monotonic() - started < 5:
            try:
                sock.sendall(ORM[sent : sent + 1] if sent else START)
                sent += 1
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            if closed:
                break
        elapsed = time.monotonic() - started
        sock.close()
        wait_for(lambda: running.listener.buffered_bytes == 0)
        stats = running.listener.stats
    assert closed and 1.0 <= elapsed < 2.5, f"closed={closed} after {elapsed:.2f} s"
    assert stats.frame_deadline_closed == 1 and stats.idle_closed == 0


def test_stray_bytes_outside_a_frame_do_not_keep_a_connection_open(db_url):
    with Running(db_url, apply=False, idle_timeout=1.0, frame_timeout=30) as running:
        sock = connect(running.port)
        sock.settimeout(0.1)
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < 5:
            try:
                sock.sendall(b"\r\n")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = True
        elapsed = time.monotonic() - started
        sock.close()
        stats = running.listener.stats
    assert closed and elapsed < 2.5 and stats.idle_closed == 1


def test_a_frame_sent_slowly_within_its_deadline_is_acknowledged(db_url):
    data = frame(ORM)
    pieces = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with Running(db_url, apply=False, idle_timeout=0.5, frame_timeout=3.0) as running:
        with connect(running.port) as sock:
            for piece in pieces:  # each pause is under the idle timeout, the whole under the frame deadline
                sock.sendall(piece)
                time.sleep(0.2)
            sock.settimeout(5)
            answer = sock.recv(65536)
    assert ack_code(answer[1:-2]) == "AA"


def test_bytes_held_across_connections_stay_under_the_cap_and_are_released(db_url):
    cap = 300_000
    head = ORM.rstrip(b"\r") + b"\rNTE|1||"
    partial = START + head + b"x" * (90_000 - len(head) - 1)  # 90,000 bytes of a frame that has not ended
    with Running(db_url, apply=False, max_message_bytes=100_000, max_buffered_bytes=cap) as running:
        listener = running.listener
        holders = [connect(running.port) for _ in range(3)]
        for sock in holders:
            sock.sendall(partial)
        wait_for(lambda: listener.buffered_bytes == 3 * 90_000)

        over = connect(running.port)
        over.sendall(partial)  # would take the listener to 360,000 bytes
        assert closed_by_listener(over)
        over.close()
        wait_for(lambda: listener.buffered_bytes == 3 * 90_000)
        assert listener.stats.buffer_cap_closed == 1
        assert listener.stats.peak_buffered_bytes <= cap

        holders[0].sendall(b"\r" + END_BLOCK)  # the first held frame ends: it is answered and let go
        holders[0].settimeout(5)
        assert ack_code(holders[0].recv(65536)[1:-2]) == "AA"
        wait_for(lambda: listener.buffered_bytes == 2 * 90_000)
        (ack,) = exchange(running.port, frame(ORM), 1)  # room again for a new sender
        assert ack_code(ack) == "AA"

        for sock in holders:
            sock.close()
        wait_for(lambda: listener.buffered_bytes == 0 and not listener._connections)
        assert listener.stats.peak_buffered_bytes <= cap


def test_a_buffer_cap_that_cannot_hold_one_message_is_refused():
    with pytest.raises(ValueError, match="buffer cap"):
        MllpListener(max_message_bytes=1_000_000, max_buffered_bytes=500_000)
