"""The MLLP listener over real loopback sockets: framing, ACK after commit, resends, bad input."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from cgthub import ledger, quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.event_loop import new_listener_loop
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import END_BLOCK, START, FrameDecoder, Oversized, Truncated, frame
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order, RawMessage
from tests.factories import enrolment

FIXTURES = Path(__file__).resolve().parent.parent / "mappings" / "hl7"
ORM = (FIXTURES / "ORM_O01" / "fixtures" / "new_apheresis.hl7").read_bytes()
SIU = (FIXTURES / "SIU_S12" / "fixtures" / "apheresis_booked.hl7").read_bytes()
ORU = (FIXTURES / "ORU_R01" / "fixtures" / "collection_report.hl7").read_bytes()


class Running:
    """A listener on its own event loop in a thread, as `cgthub hl7 listen` runs it."""

    def __init__(self, url, **options):
        self.loop = new_listener_loop()  # the loop `cgthub hl7 listen` runs on (uvloop by default)
        self.listener = MllpListener("127.0.0.1", 0, database_url=url, **options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def port(self):
        return self.listener.port


def exchange(port, data, acks, *, chunks=None, timeout=10):
    """Send `data` (optionally in pieces) and read `acks` framed answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for piece in chunks or [data]:
            sock.sendall(piece)
            time.sleep(0.02)
        decoder, answers = FrameDecoder(), []
        while len(answers) < acks:
            block = sock.recv(65536)
            if not block:
                break
            answers.extend(decoder.feed(block))
        return answers


def _enrol(url):
    with session_scope(url) as s:
        ledger.append(s, enrolment(1))


def test_decoder_handles_split_joined_garbage_truncated_and_oversized():
    decoder = FrameDecoder(max_size=50)
    stream = b"noise" + frame(b"A") + frame(b"B")[:3]
    assert list(decoder.feed(stream)) == [b"A"]
    assert list(decoder.feed(frame(b"B")[3:] + b"\r\n")) == [b"B"]
    assert list(decoder.feed(START + b"partial" + frame(b"C"))) == [Truncated(7), b"C"]
    assert list(decoder.feed(frame(b"x" * 60) + frame(b"D"))) == [Oversized(60, 50), b"D"]
    big = list(decoder.feed(START + b"y" * 80))
    assert big == [Oversized(80, 50)] and list(decoder.feed(b"yy" + END_BLOCK + frame(b"E"))) == [b"E"]


def test_ack_after_commit_resend_is_idempotent_and_acks_validate(db_url):
    _enrol(db_url)
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(ORM), 1)
        (again,) = exchange(running.port, frame(ORM), 1)
    assert ack_code(ack) == "AA" and ack_code(again) == "AA"
    parsed = parse_message(ack.decode(), find_groups=False)
    assert parsed.msa.msa_2.value == "BOS0000101" and parsed.msh.msh_9.value == "ACK^O01^ACK"
    with session_scope(db_url) as s:
        assert s.scalar(select(Order.status)) == "apheresis_scheduled"
        assert s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_system == "hl7")) == 1
        assert s.scalar(select(RawMessage.receive_count).where(RawMessage.system == "hl7")) == 2


def test_several_frames_per_packet_split_frames_and_garbage(db_url):
    _enrol(db_url)
    data = b"\x00garbage" + frame(SIU) + b"\r\n" + frame(ORU)
    with Running(db_url) as running:
        acks = exchange(running.port, data, 2, chunks=[data[:40], data[40:]])
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        assert order.status == "collected" and order.projection["dins"] == ["W123426000001N"]


def test_bad_input_is_answered_archived_and_quarantined(db_url):
    no_msh = b"PID|1||MRN48213377^^^US-BOS-01^MR||Smithson^Johanna"
    unsupported = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303||MFN^M02|BOS9|P|2.5.1\rMFE|MAD|X\r"
    unknown_order = (
        ORM.replace(b"CRM-00001", b"CRM-99999").replace(b"PL-1001", b"PL-9999").replace(b"BOS0000101", b"B2")
    )
    bad_encoding = b"MSH|^~|&|EPIC|X|Y|Z|2026||ADT^A04|1|P|2.5\r"
    latin1 = "MSH|^~\\&|KIS|DE-HD-01|CGTHUB|HUB|20260303||ADT^A04|L1|P|2.5\rPID|1||X||Müller".encode("latin-1")
    with Running(db_url, max_message_bytes=4096) as running:
        acks = exchange(
            running.port, b"".join(frame(m) for m in (no_msh, unsupported, unknown_order, bad_encoding, latin1)), 5
        )
        (too_big,) = exchange(running.port, frame(b"MSH|^~\\&|" + b"X" * 5000), 1)
    codes = [ack_code(a) for a in acks]
    assert codes == ["AR", "AR", "AE", "AR", "AR"]
    assert b"does not start with an MSH" in acks[0] and b"unsupported message type MFN\\S\\M02" in acks[1]
    assert b"no order matches" in acks[2] and b"not valid utf-8" in acks[4]
    assert b"Smithson" not in b"".join(acks)
    assert ack_code(too_big) == "AR" and b"exceeds the limit of 4096 bytes" in too_big
    with session_scope(db_url) as s:
        stages = sorted(e.stage for e in quarantine.list_entries(s))
        archived = s.scalar(select(func.count()).select_from(RawMessage))
    assert stages == ["correlate", "map", "parse", "parse", "parse"] and archived == 5


def test_silent_client_is_closed_and_others_keep_working(db_url):
    _enrol(db_url)
    with Running(db_url, idle_timeout=0.3) as running:
        silent = socket.create_connection(("127.0.0.1", running.port))
        (ack,) = exchange(running.port, frame(ORM), 1)
        silent.settimeout(5)
        assert silent.recv(10) == b""  # closed by the listener
        silent.close()
        assert running.listener.stats.idle_closed >= 1
    assert ack_code(ack) == "AA"


def test_python_hl7_mllp_send_delivers_a_file_and_gets_an_ack_for_each(db_url, tmp_path):
    _enrol(db_url)
    messages = tmp_path / "messages.hl7"
    messages.write_bytes(ORM.replace(b"\r", b"\n") + SIU.replace(b"\r", b"\n") + ORU.replace(b"\r", b"\n"))
    mllp_send = Path(sys.executable).with_name("mllp_send")
    with Running(db_url) as running:
        run = subprocess.run(
            [str(mllp_send), "--loose", "--file", str(messages), "--port", str(running.port), "127.0.0.1"],
            capture_output=True,
            timeout=60,
            env=os.environ,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(b"MSA|AA|") == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=len(ORM)), flip=st.integers(0, 255))
def test_fuzzed_input_never_takes_the_listener_down(fuzz_listener, noise, cut, flip):
    mutated = bytearray(ORM)
    if cut < len(mutated):
        mutated[cut] = flip
    with socket.create_connection(("127.0.0.1", fuzz_listener.port), timeout=5) as sock:
        sock.sendall(noise + frame(bytes(mutated)) + noise[:10])
        sock.settimeout(5)
        try:
            sock.recv(65536)
        except TimeoutError:
            pass
    (ack,) = exchange(fuzz_listener.port, frame(SIU), 1)
    assert ack_code(ack) in ("AA", "AE")


@pytest.fixture(scope="module")
def fuzz_listener(tmp_path_factory):
    from cgthub import store

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    store.upgrade(url)
    with Running(url, idle_timeout=2) as running:
        yield running


def test_five_megabyte_message_bad_date_and_graceful_shutdown(db_url):
    _enrol(db_url)
    bad_date = (FIXTURES / "ORM_O01" / "fixtures" / "bad_date.hl7").read_bytes()
    huge = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303||ORM^O01|BIG|P|2.5.1\rNTE|1||" + b"x" * 5_000_000 + b"\r"
    running = Running(db_url)
    with running:
        (too_big,) = exchange(running.port, frame(huge), 1)
        (dated,) = exchange(running.port, frame(bad_date), 1)
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        sock.sendall(frame(ORM))  # in flight while the listener is asked to stop
        time.sleep(0.05)
    # Shutdown finished the in-flight message and answered it before closing.
    decoder, answers = FrameDecoder(), []
    while not answers:
        block = sock.recv(65536)
        assert block, "the connection closed before the in-flight message was acknowledged"
        answers = [a for a in decoder.feed(block) if isinstance(a, bytes)]
    sock.close()
    assert ack_code(too_big) == "AR" and b"exceeds the limit" in too_big
    assert ack_code(dated) == "AE" and b"ORC-9" in dated
    assert ack_code(answers[0]) == "AA"
    with session_scope(db_url) as s:
        assert s.scalar(select(Order.status)) == "apheresis_scheduled"
