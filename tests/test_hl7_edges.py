"""HL7 feed edges the listener and file tests leave open: MSH-18 character sets over MLLP, AE/AR
ACKs that hl7apy accepts, a frame cut short on the wire, the hospital's address from its Airflow
connection, and the `cgthub hl7 ingest` command."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import ValidationError
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import archive, ledger, pipeline, quarantine
from cgthub.cli import app
from cgthub.hl7 import outbound
from cgthub.hl7.ack import ack_code, build_ack
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import END_BLOCK, START, frame
from cgthub.mapping import get_mapper
from cgthub.store import session_scope
from cgthub.tables import Order, RawMessage
from connectors.hospital import simulator
from connectors.hospital.receiver import HospitalReceiver
from tests.factories import enrolment
from tests.test_hl7_listener import ORM, SIU, Running, exchange

FIXTURES = Path(__file__).resolve().parent.parent / "mappings" / "hl7"
ADT = (FIXTURES / "ADT_A04" / "fixtures" / "registration.hl7").read_bytes()


def _latin1(adt: bytes, *, declared: bool) -> bytes:
    """The registration with an umlaut in the name, encoded as ISO 8859-1 (MSH-18 `8859/1` if declared)."""
    msh, rest = adt.split(b"\r", 1)
    fields = msh.split(b"|")
    fields += [b""] * (18 - len(fields))
    fields[17] = b"8859/1" if declared else b""
    fields[9] = b"LATIN1" + (b"D" if declared else b"U")
    text = (b"|".join(fields) + b"\r" + rest).decode().replace("Smithson", "Müller")
    return text.encode("latin-1")


def test_msh18_latin1_is_read_and_undeclared_latin1_is_refused(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url) as running:
        declared, undeclared = exchange(
            running.port, frame(_latin1(ADT, declared=True)) + frame(_latin1(ADT, declared=False)), 2
        )
    assert ack_code(declared) == "AA", declared
    assert ack_code(undeclared) == "AR" and b"utf-8" in undeclared.lower()
    assert b"M\xfcller" not in declared + undeclared and "Müller".encode() not in declared + undeclared
    with session_scope(db_url) as s:
        reasons = [e.reason for e in quarantine.list_entries(s)]
    assert len(reasons) == 1 and "utf-8" in reasons[0].lower() and "Müller" not in reasons[0]


def test_error_acks_validate_with_hl7apy_and_name_the_problem():
    for original, code, reason in (
        (ORM, "AE", "ORC-9 is not an HL7 date: 2026-13-45"),
        (SIU, "AR", "unsupported message type SIU^S99"),
    ):
        ack = build_ack(original, code, reason)
        parsed = parse_message(ack.decode(), find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
        assert parsed.validate()
        assert parsed.msa.msa_1.value == code and parsed.err.err_8.value == reason.replace("^", "\\S\\")
        assert parsed.msa.msa_2.value == parse_message(original.decode()).msh.msh_10.value
    # An unreadable message has no control id to echo: MSA-2 stays empty (hl7apy's only complaint).
    unreadable = parse_message(build_ack(b"not hl7 at all", "AR", "no MSH").decode(), find_groups=True)
    assert unreadable.msa.msa_1.value == "AR" and unreadable.err.err_3.to_er7().startswith("200^")
    try:
        unreadable.validate()
    except ValidationError as exc:
        assert "MSA_2" in str(exc)


def test_frames_cut_short_are_answered_archived_and_quarantined(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url) as running:
        cut, ok = exchange(running.port, START + ORM[:40] + frame(ORM), 2)
        # A client that vanishes mid-frame gets no answer, but what it sent is kept.
        with socket.create_connection(("127.0.0.1", running.port)) as vanishing:
            vanishing.sendall(START + SIU[:30])
        (later,) = exchange(running.port, frame(SIU), 1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_quarantined(db_url)) < 2:
            time.sleep(0.05)
    assert ack_code(cut) == "AR" and b"cut short" in cut
    assert ack_code(ok) == "AA" and ack_code(later) == "AA"
    reasons = " / ".join(_quarantined(db_url))
    assert "frame cut short by a new start block after 40 bytes" in reasons
    assert "the connection ended 30 bytes into a frame that never closed" in reasons
    with session_scope(db_url) as s:
        assert s.scalar(select(Order.status)) == "apheresis_scheduled"
        payloads = {archive.read(s, e.raw_id) for e in quarantine.list_entries(s)}
    assert payloads == {ORM[:40], SIU[:30]}


def _quarantined(url):
    with session_scope(url) as s:
        return [e.reason for e in quarantine.list_entries(s)]


def test_outbound_finds_the_hospital_through_its_airflow_connection(monkeypatch):
    payload = {"order_id": "ORD-1", "status": "released", "idempotency_key": "hl7:ORD-1:7", "refs": {}}
    with HospitalReceiver() as hospital:
        monkeypatch.setenv("AIRFLOW_CONN_HOSPITAL_MLLP", f"mllp://{hospital.host}:{hospital.port}")
        result = outbound.push(payload)
    assert result["control_id"] == "CGThl7ORD17" and len(hospital.received) == 1
    assert b"|CGThl7ORD17|" in hospital.received[0]


def test_cli_ingest_moves_files_and_reports_counts(db_url, tmp_path):
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in (1, 2)])
    feed = simulator.write_batch_file(tmp_path / "feed.hl7", list(simulator.feed(range(1, 3))), newline=b"\r\n")
    junk = tmp_path / "junk.hl7"
    junk.write_bytes(b"\x00\x01 not a message")
    result = CliRunner().invoke(app, ["hl7", "ingest", str(feed), str(junk)])
    assert "2 files, 7 messages: 6 accepted" in result.output, result.output
    # The operator is told which file failed (cgthub's entry point prints CliError with its hint).
    assert result.exit_code != 0 and "junk.hl7" in str(result.exception)
    assert (tmp_path / "done" / "feed.hl7.receipt.json").exists()
    assert (tmp_path / "failed" / "junk.hl7.receipt.json").exists()


def test_cli_listener_archive_only_acks_after_commit_and_stops_cleanly_on_sigterm(db_url):
    """`cgthub hl7 listen --archive-only`: AA once archived (status received), applied later by
    process_pending as the HL7 inbox DAG does, and SIGTERM finishes and exits 0."""
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"]
    listener = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert listener.stdout is not None
        line = listener.stdout.readline().decode()
        port = int(re.search(r":(\d+) \(archive only\)", line).group(1))  # type: ignore[union-attr]
        (ack,) = exchange(port, frame(ORM), 1)
        listener.send_signal(signal.SIGTERM)
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert ack_code(ack) == "AA" and listener.returncode == 0, err
    assert b"shutting down" in out
    with session_scope(db_url) as s:
        assert s.scalar(select(RawMessage.status).where(RawMessage.system == "hl7")) == "received"
        assert s.scalar(select(Order.status)) == "enrolled"
        results = pipeline.process_pending(s, "hl7", lambda item: get_mapper("hl7", item.kind))
    assert [r.appended for r in results] == [1]
    with session_scope(db_url) as s:
        assert s.scalar(select(Order.status)) == "apheresis_scheduled"


def test_no_ack_before_the_commit_and_ae_when_the_commit_fails(db_url, monkeypatch):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    release, failing = threading.Event(), threading.Event()
    commit = MllpListener._commit

    def held_commit(self, messages):
        release.wait(10)
        if failing.is_set():
            raise OSError("disk full")
        return commit(self, messages)

    monkeypatch.setattr(MllpListener, "_commit", held_commit)
    with Running(db_url) as running, socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        failing.set()
        sock.sendall(frame(ORM))
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # the transaction has not committed: no answer yet
        release.set()
        sock.settimeout(10)
        failed = sock.recv(65536)
        failing.clear()
        sock.sendall(frame(ORM))  # the hospital resends what was not acknowledged AA
        stored = sock.recv(65536)
    assert ack_code(failed[1:-2]) == "AE" and b"not stored, please resend" in failed
    assert ack_code(stored[1:-2]) == "AA"
    with session_scope(db_url) as s:
        assert s.scalar(select(RawMessage.receive_count)) == 1  # the failed attempt left nothing behind
        assert s.scalar(select(Order.status)) == "apheresis_scheduled"


def test_simulator_command_sends_n_patients_and_reports_the_acks(db_url, capsys):
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in (1, 2)])
    with Running(db_url) as running:
        simulator.main(["--patients", "2", "--port", str(running.port)])
    assert "sent 6 messages for 2 patients: 6 AA" in capsys.readouterr().out
    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(Order.status))) == ["collected", "collected"]


def test_concurrent_connections_each_get_their_own_acks_from_shared_group_commits(db_url):
    patients = range(1, 17)
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in patients])
    answers: dict[int, list[tuple[bytes, bytes]]] = {}

    def hospital_system(n: int, port: int) -> None:
        sent = list(simulator.feed(range(n, n + 1)))
        answers[n] = list(zip(sent, simulator.send_over_mllp("127.0.0.1", port, sent), strict=True))

    with Running(db_url) as running:
        threads = [threading.Thread(target=hospital_system, args=(n, running.port)) for n in patients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        stats = running.listener.stats
    assert sorted(answers) == list(patients)
    for pairs in answers.values():
        for message, ack in pairs:
            control_id = message.split(b"\r")[0].split(b"|")[9]
            assert ack_code(ack) == "AA" and f"\rMSA|AA|{control_id.decode()}\r".encode() in ack
    assert stats.messages == 48 and stats.batches < stats.messages  # connections shared transactions
    with session_scope(db_url) as s:
        assert list(set(s.scalars(select(Order.status)))) == ["collected"]


@pytest.fixture(scope="module")
def framing_listener(tmp_path_factory):
    """One listener (SQLite) for every fuzz example: it must survive them all."""
    from cgthub import store

    url = f"sqlite:///{tmp_path_factory.mktemp('framing') / 'framing.db'}"
    store.upgrade(url)
    with Running(url, idle_timeout=2) as running:
        yield running


_PIECES = st.lists(
    st.one_of(st.binary(max_size=60), st.just(START), st.just(END_BLOCK), st.just(frame(ORM)), st.just(ORM[:50])),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=_PIECES, close_early=st.booleans())
def test_fuzzed_framing_and_vanishing_senders_never_take_the_listener_down(framing_listener, parts, close_early):
    """Stray start and end blocks, half frames and senders that hang up mid-frame."""
    with socket.create_connection(("127.0.0.1", framing_listener.port), timeout=5) as sock:
        sock.sendall(b"".join(parts))
        if not close_early:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                sock.recv(65536)
    (ack,) = exchange(framing_listener.port, frame(SIU), 1)
    assert ack_code(ack) in ("AA", "AE")
