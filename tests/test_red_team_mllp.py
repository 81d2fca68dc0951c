"""Red team of the MLLP listener, over real loopback sockets as `cgthub hl7 listen` runs it: poison
values, a sender that names another site's order or reuses its control id, slow and silent
connections. Each row of docs/red-team.md that concerns the listener is one of these tests.

Whatever comes, the listener answers AE/AR with a reason (or closes a connection that abuses the
framing), keeps what it received archived and quarantined, stays up for other senders, and
repeats no patient identifier in an ACK or a log line.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import statistics
import threading
import time

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import func, select

from cgthub import quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.inbound import MAX_SEGMENTS
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order, RawMessage
from tests.factories import PATIENTS
from tests.hub_log import hub_log
from tests.test_hl7_listener import ORM, Running, _enrol, exchange
from tests.test_hl7_listener_limits import connect, wait_for
from tests.test_residency_live import US_POSTAL, _crm_record, _enrol_through_crm, _orders
from tests.test_residency_live import _orm as _site_orm

PHI = [p[key].encode() for p in PATIENTS for key in ("mrn", "birth_date")] + [b"Smithson", b"Johanna"]


def _orm(control: bytes, *, old: bytes = b"BOS0000101") -> bytes:
    return ORM.replace(old, control)


def _no_phi(*texts: bytes | str) -> None:
    joined = b"".join(t.encode() if isinstance(t, str) else t for t in texts)
    for clear in PHI:
        assert clear not in joined, clear


def _timed(port: int, message: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    (ack,) = exchange(port, frame(message), 1, timeout=60)
    return ack, time.monotonic() - started


@pytest.mark.parametrize("apply", [True, False], ids=["apply", "archive-only"])
def test_nul_bytes_are_refused_archived_and_quarantined_on_both_stores(db_url, caplog, apply):
    """A NUL in MSH-9, MSH-10 or MSH-4 could not even be archived on PostgreSQL (its text columns
    refuse NUL): the sender was told AE 'not stored, please resend', forever, and nothing was kept.
    Under --archive-only (what compose runs) as when applying."""
    caplog.set_level(logging.INFO)
    _enrol(db_url)
    poisons = [
        _orm(b"NUL1").replace(b"ORM^O01^ORM_O01", b"ORM^O0\x001"),  # MSH-9
        _orm(b"NU\x00L2"),  # MSH-10
        _orm(b"NUL3").replace(b"|US-BOS-01|CGTHUB", b"|US-BOS\x00-01|CGTHUB"),  # MSH-4
        _orm(b"NUL4").replace(b"Smithson", b"Smith\x00son"),  # PID-5
    ]
    with hub_log(level=logging.INFO) as logged, Running(db_url, apply=apply) as running:
        acks = exchange(running.port, b"".join(frame(p) for p in poisons) + frame(ORM), len(poisons) + 1)
    # The capture is not empty: applying, each poison's quarantine is logged (the lines that must
    # name no patient); archive-only logs no quarantine, so there the listener's own line.
    assert "MLLP listener on 127.0.0.1" in logged.text, logged.text
    if apply:
        assert logged.text.count("which HL7 v2 does not allow") == len(poisons), logged.text
    assert [ack_code(a) for a in acks] == ["AR"] * len(poisons) + ["AA"]
    assert all(b"is a NUL, which HL7 v2 does not allow" in a for a in acks[:-1])
    assert all(b"\x00" not in a for a in acks)
    _no_phi(*acks, logged.text, caplog.text)
    with session_scope(db_url) as s:
        archived = s.scalar(select(func.count()).select_from(RawMessage))
        stages = [e.stage for e in quarantine.list_entries(s)]
        assert s.scalar(select(Order.status)) == ("apheresis_scheduled" if apply else "enrolled")
    assert archived == len(poisons) + 1 and stages == ["parse"] * len(poisons)


def test_a_flood_of_tiny_segments_is_refused_unparsed_and_other_senders_are_not_held(db_url):
    """A megabyte of 4-byte segments was parsed whole, twice (once more to build its ACK): about a
    second a frame, during which every other sender's ACK waited (0.02 s alone, 1.0-1.4 s beside it)."""
    _enrol(db_url)
    flood = (_orm(b"FLOOD") + b"ZZZ\r" * 260_000)[: 1024 * 1024 - 8]
    with Running(db_url) as running:
        stop = threading.Event()
        answered: list[bytes] = []

        def attack() -> None:
            while not stop.is_set():
                answered.extend(exchange(running.port, frame(flood), 1, timeout=60))

        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        wait_for(lambda: bool(answered), timeout=30)
        latencies = []
        for n in range(6):
            ack, took = _timed(running.port, _orm(f"OK{n}".encode()))
            assert ack_code(ack) in ("AA", "AE")
            latencies.append(took)
        stop.set()
        attacker.join(60)
    assert ack_code(answered[0]) == "AR" and f"more than {MAX_SEGMENTS} segments".encode() in answered[0]
    assert b"MSA|AR|FLOOD" in answered[0]  # its MSH is still read, so the sender can match the answer
    assert statistics.median(latencies) < 0.6, latencies
    with session_scope(db_url) as s:
        (entry, *_) = quarantine.list_entries(s)
        assert entry.stage == "parse" and "segments" in entry.reason


def test_the_ack_repeats_the_senders_msh_bounded_and_cannot_break_its_own_fields(db_url):
    """Senders choose their separators: with '!' as the field separator a '|' in MSH-4 or MSH-10
    was repeated raw and shifted the ACK's fields; a 5,000-character control id, a control
    character or an escape character in the trigger went back as sent."""
    odd = _orm(b"ODD|1").replace(b"|", b"!").replace(b"!US-BOS-01!", b"!US-BOS-01|X!")
    odd = odd.replace(b"ODD!1", b"ODD|1")
    long_control = _orm(b"C" * 5000)
    control_char = _orm(b"CTL\x01\x1b[2J")
    escaped_trigger = _orm(b"ESC1").replace(b"ORM^O01^ORM_O01", b"ORM^O01\\E\\")
    messages = [odd, long_control, control_char, escaped_trigger]
    with Running(db_url) as running:
        acks = exchange(running.port, b"".join(frame(m) for m in messages), len(messages))
    for ack in acks:
        msh, _msa = ack.split(b"\r")[:2]
        assert msh.count(b"|") == 11, msh  # MSH-1 to MSH-12, nothing shifted
        assert not [b for b in ack if b < 0x20 and b != 0x0D], ack
        parsed = parse_message(ack.decode(), find_groups=False)
        assert parsed.msh.msh_9.msh_9_1.value == "ACK"
        assert len(parsed.msa.msa_2.value) <= 199
    assert acks[0].split(b"\r")[1] == b"MSA|AE|ODD\\F\\1"  # its facility US-BOS-01|X is not registered
    assert b"|ACK^O01^ACK|" in acks[3]


def test_poison_values_are_answered_with_a_reason_and_the_listener_keeps_serving(db_url, caplog):
    caplog.set_level(logging.INFO)
    _enrol(db_url)
    cases = {
        "only separators": (b"|||^^^~~~\\\\\\&&&|||", "AR", b"does not start with an MSH"),
        "MSH-2 with a truncation character": (_orm(b"TRUNC").replace(b"^~\\&|", b"^~\\&#|"), "AA", b""),
        "other separators throughout": (
            _orm(b"SEPS").replace(b"|", b"!").replace(b"^", b"*").replace(b"!SEPS!", b"!SEPS!"),
            "AA",
            b"",
        ),
        "CR as the field separator": (b"MSH\r^~\\&\rEPIC\rUS-BOS-01\r", "AR", b"not an HL7 v2 message"),
        "invalid UTF-8": (_orm(b"UTF").replace(b"Smithson", b"Smith\xff\xfeson"), "AR", b"not valid utf-8"),
        "MSH-18 says ASCII, bytes are UTF-8": (
            _orm(b"ASCII").replace(b"UNICODE UTF-8", b"ASCII").replace(b"Smithson", "Smíthson".encode()),
            "AR",
            b"not valid ascii",
        ),
        "invalid hex escape": (_orm(b"HEX").replace(b"Smithson", b"Smith\\XZZ\\son"), "AA", b""),
        "300,000 repetitions": (
            _orm(b"REPS").replace(b"MRN48213377^^^US-BOS-01^MR", b"~" * 300_000),
            "AE",
            b"required value is missing",
        ),
        "unknown MSH-4": (_orm(b"FAC").replace(b"|US-BOS-01|CGTHUB", b"|NOWHERE-99|CGTHUB"), "AE", b"NOWHERE-99"),
    }
    with hub_log(level=logging.INFO) as logged, Running(db_url) as running:
        acks = {name: _timed(running.port, message)[0] for name, (message, _c, _w) in cases.items()}
        (after,) = exchange(running.port, frame(_orm(b"AFTER")), 1)
        assert running.listener._committer is not None and not running.listener._committer.done()
    for name, (_m, code, words) in cases.items():
        assert ack_code(acks[name]) == code, (name, acks[name])
        assert words in acks[name], (name, acks[name])
    assert ack_code(after) == "AA"
    # the capture is not empty: the poisons' quarantines are logged (the lines that must name no patient)
    assert logged.text.count("quarantined raw #") >= 6 and "sending facility 'NOWHERE-99'" in logged.text, logged.text
    _no_phi(*acks.values(), logged.text, caplog.text)
    with session_scope(db_url) as s:
        archived = s.scalar(select(func.count()).select_from(RawMessage))
        stages = sorted(e.stage for e in quarantine.list_entries(s))
    assert archived == len(cases) + 1
    assert stages == ["parse", "parse", "parse", "parse", "route", "validate"]


def test_ten_megabytes_in_one_frame_is_refused_while_another_sender_is_served(db_url):
    _enrol(db_url)
    huge = frame(_orm(b"HUGE") + b"NTE|1||" + b"x" * 10_000_000 + b"\r")
    with Running(db_url) as running:
        result: list[bytes] = []
        sender = threading.Thread(target=lambda: result.extend(exchange(running.port, huge, 1, timeout=60)))
        sender.start()
        ack, took = _timed(running.port, _orm(b"BESIDE"))
        sender.join(60)
        peak = running.listener.stats.peak_buffered_bytes
    assert ack_code(ack) == "AA" and took < 5
    assert ack_code(result[0]) == "AR" and b"exceeds the limit of 1048576 bytes" in result[0]
    assert peak < 3 * 1024 * 1024  # the frame was dropped as it came, not held whole


def test_idle_connections_and_senders_that_pipeline_without_reading_hold_nobody_else(db_url):
    """Four senders each pipeline 40,000 frames of one byte and never read an ACK; thirty more
    connect and say nothing. Each connection used to queue every frame of a 64 KiB read (13,000)
    ahead of everyone: another sender's ACK took over 60 s. Now each has at most `max_in_flight`
    messages awaiting a commit (2.0 s on a shared machine, the junk going through at about 300 a
    second), and what they make the listener hold stays small."""
    _enrol(db_url)
    # 35 connections from 127.0.0.1: the cap per address is tests/test_mllp_connections_per_address.py's
    with Running(db_url, idle_timeout=30.0, max_connections=64, max_connections_per_address=64) as running:
        listener = running.listener
        idle = [connect(running.port) for _ in range(30)]
        deaf: list[socket.socket] = []
        junk = frame(b"X") * 40_000

        def pipeline() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", running.port))
            deaf.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(junk)

        senders = [threading.Thread(target=pipeline, daemon=True) for _ in range(4)]
        for sender in senders:
            sender.start()
        queued: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                queued.append(listener._queue.qsize())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wait_for(lambda: listener.stats.messages > 500, timeout=30)
        ack, took = _timed(running.port, _orm(b"LIVE"))
        sampling.set()
        sampler.join(5)
        held = listener.stats.peak_buffered_bytes
        for sock in [*idle, *deaf]:
            sock.close()
        for sender in senders:
            sender.join(30)
    assert ack_code(ack) == "AA"
    assert took < 15, f"{took:.1f} s behind the pipelining senders"
    assert held < 2 * 1024 * 1024
    assert listener.max_in_flight == 32 and max(queued) <= 4 * 32 + 1  # 32 a connection awaiting a commit, at most


def test_a_sender_reusing_another_sites_control_id_for_that_sites_order_changes_nothing(db_url, monkeypatch):
    """Heidelberg sends Boston's order under Boston's MSH-10: AE, Boston's order untouched, and
    Boston's own resend under that id is still its duplicate, applied once."""
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(1, "US-BOS-01", "US", US_POSTAL)])
    boston = _site_orm(1, "US-BOS-01", crm="CRM-00001", placer="PL-1001", control="B1")
    intruder = _site_orm(1, "DE-HD-01", crm="CRM-00001", placer="PL-1001", control="B1", mrn="MRN99999999")
    with Running(db_url) as running:
        (first,) = exchange(running.port, frame(boston), 1)
        (stolen,) = exchange(running.port, frame(intruder), 1)
        (again,) = exchange(running.port, frame(boston), 1)
    assert [ack_code(a) for a in (first, stolen, again)] == ["AA", "AE", "AA"]
    order = _orders(db_url)["CRM-00001"]
    assert order.id.encode() not in stolen and b"US-BOS-01" not in stolen and b"CRM-00001" not in stolen
    assert (order.site, order.status, order.on_hold) == ("US-BOS-01", "apheresis_scheduled", False)
    with session_scope(db_url) as s:
        hl7_events = s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_system == "hl7"))
        (entry,) = quarantine.list_entries(s)
        receive_counts = sorted(s.scalars(select(RawMessage.receive_count).where(RawMessage.system == "hl7")))
    assert hl7_events == 1 and entry.stage in ("identity", "conflict")
    assert receive_counts == [1, 2]  # Boston's message twice, Heidelberg's once: two keys, not one


def test_one_sites_control_id_does_not_preempt_another_sites_message(db_url, monkeypatch):
    """Heidelberg orders for its own patient under control id B1; Boston's own order under B1 later
    is a different message from a different sender, and is applied: HL7 mappings v2 scope each event
    id by the sending facility (`<MSH-4>|<MSH-10>#order`)."""
    _enrol_through_crm(
        db_url,
        monkeypatch,
        [_crm_record(1, "US-BOS-01", "US", US_POSTAL), _crm_record(2, "DE-HD-01", "DE", "691zx")],
    )
    heidelberg = _site_orm(2, "DE-HD-01", crm="CRM-00002", placer="PLDE2", control="B1")
    boston = _site_orm(1, "US-BOS-01", crm="CRM-00001", placer="PL-1001", control="B1")
    with Running(db_url) as running:
        acks = exchange(running.port, frame(heidelberg) + frame(boston), 2)
    orders = _orders(db_url)
    assert orders["CRM-00002"].status == "apheresis_scheduled"
    assert [ack_code(a) for a in acks] == ["AA", "AA"], acks[1]
    assert orders["CRM-00001"].status == "apheresis_scheduled"


def test_a_parse_error_does_not_quote_the_message(db_url, caplog):
    """The parser named a bad segment by its first characters and bad separators by the five after
    'MSH': a line broken inside a patient's name sent them back in the ACK, and into the quarantine
    reason and the log."""
    caplog.set_level(logging.INFO)
    broken_line = _orm(b"BROKEN").replace(b"||Smithson^Johanna||", b"||Smithson\rJo hanna||")
    smith = b"MSHSmith|x|y\rPID|1||" + PATIENTS[0]["mrn"].encode()
    quoted = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|2026||ADT^A04|Q1|P|2.5\rO'Brien|x"
    with hub_log(level=logging.INFO) as logged, Running(db_url) as running:
        acks = exchange(running.port, frame(broken_line) + frame(smith) + frame(quoted), 3)
    # the capture is not empty: the three quarantines are logged (the lines that must quote nothing)
    assert logged.text.count("quarantined raw #") == 3 and "segment does not begin" in logged.text, logged.text
    assert [ack_code(a) for a in acks] == ["AR", "AR", "AR"]
    assert b"segment does not begin with a segment name" in acks[0] and b"five distinct separators" in acks[1]
    with session_scope(db_url) as s:
        reasons = " ".join(e.reason for e in quarantine.list_entries(s))
    for leaked in (b"Jo ", b"Smith", b"O'B"):
        assert leaked not in b"".join(acks) and leaked.decode() not in reasons
        assert leaked.decode() not in logged.text + caplog.text
