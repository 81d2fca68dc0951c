"""One host cannot hold the MLLP listener's connections: at most `max_connections_per_address` open
from one address, the one over it closed on arrival (logged once a minute per address, counted),
while other hosts are served. Real sockets from distinct loopback addresses (127.0.0.2, .3: Linux
routes all of 127/8 to lo, so each is another peer address for the listener)."""

from __future__ import annotations

import logging
import socket

from prometheus_client import REGISTRY

from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from tests.test_hl7_listener import ORM, Running
from tests.test_hl7_listener_limits import closed_by_listener, wait_for

REFUSED_METRIC = "cgthub_mllp_connections_refused_per_address_total"


def connect_from(address: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))


def acknowledged(sock: socket.socket) -> str:
    """Send the ORM on `sock` and return its ACK's code."""
    sock.sendall(frame(ORM))
    decoder = FrameDecoder()
    while True:
        block = sock.recv(65536)
        assert block, "the listener closed the connection instead of answering"
        answers = list(decoder.feed(block))
        if answers:
            return ack_code(answers[0])


def refused_so_far() -> float:
    return REGISTRY.get_sample_value(REFUSED_METRIC) or 0.0


def test_one_address_over_its_cap_is_refused_at_once_while_another_host_is_served(db_url, caplog):
    caplog.set_level(logging.WARNING, "cgthub.hl7.connection_limits")
    counted_before = refused_so_far()
    with Running(db_url, apply=False, max_connections=20, max_connections_per_address=3) as running:
        listener = running.listener
        assert listener.health()[1]["limits"]["max_connections_per_address"] == 3
        noisy = [connect_from("127.0.0.2", running.port) for _ in range(3)]
        wait_for(lambda: listener.per_address.open["127.0.0.2"] == 3)
        over = [connect_from("127.0.0.2", running.port) for _ in range(20)]
        assert all(closed_by_listener(sock, timeout=2) for sock in over)
        other = connect_from("127.0.0.3", running.port)  # another hospital: served beside the noisy host
        assert acknowledged(other) == "AA"
        assert acknowledged(noisy[0]) == "AA"  # the ones let in are served as before
        noisy[1].close()  # a slot freed is the address's again
        wait_for(lambda: listener.per_address.open["127.0.0.2"] == 2)
        again = connect_from("127.0.0.2", running.port)
        assert acknowledged(again) == "AA"
        for sock in [*noisy, *over, other, again]:
            sock.close()
        wait_for(lambda: not listener.per_address.open)  # every connection's count released at its end
        refused = listener.per_address.refused
    assert refused == 20
    assert refused_so_far() - counted_before == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "cgthub.hl7.connection_limits"]
    assert len(lines) == 1, lines  # twenty refusals within the minute: one line
    assert "127.0.0.2" in lines[0] and "the limit per address is 3" in lines[0]


def test_the_default_cap_leaves_room_for_a_sites_senders_behind_one_nat(db_url):
    with Running(db_url, apply=False) as running:
        limits = running.listener.health()[1]["limits"]
        senders = [connect_from("127.0.0.2", running.port) for _ in range(limits["max_connections_per_address"])]
        try:
            assert limits["max_connections_per_address"] == 32
            assert all(acknowledged(sock) == "AA" for sock in senders)
            late = connect_from("127.0.0.2", running.port)
            assert closed_by_listener(late, timeout=2)
            late.close()
        finally:
            for sock in senders:
                sock.close()
