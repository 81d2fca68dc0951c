"""Nothing ACKed is lost when the listener dies: SIGKILL mid-stream under `--archive-only`.

`cgthub hl7 listen --archive-only` runs as a process of its own on the test's database. Senders
stream messages, each waiting for its ACK (one sends two frames per write, as some engines do);
the listener is SIGKILLed mid-stream and started again, and each sender reconnects and resends what
was not ACKed, as an interface engine does. The HL7 inbox DAG's step (`apply_hl7_inbox`) runs while
the stream flows, while the listener is down and after each trial. At the end every message ACKed
AA must have been applied (a ledger entry made from its archived row) and every chain must verify.

Each listener is forked from one process that imported the hub once: the command line it runs is the
deployed one (`cgthub.cli.main`, `hl7 listen --archive-only`), without paying the imports again at
each of the twenty restarts.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from cgthub import ledger
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.partner_sync import apply_hl7_inbox
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from tests.factories import enrolment

pytestmark = pytest.mark.slow

TRIALS = 10
ORDERS_PER_TRIAL = 12  # an ORM^O01 and an SIU^S12 each: 24 messages a trial
SENDERS = 4

# Imports the hub once, then forks a listener for each line `hl7 listen ...` it reads on stdin.
ZYGOTE = textwrap.dedent(
    """
    import os, signal, sys, threading
    import cgthub.cli, cgthub.hl7.listener, cgthub.hl7.inbound
    assert threading.active_count() == 1, "forking is safe only with no other thread"
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed listeners are reaped by the kernel
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sys.argv = ["cgthub", *line.split()]
            try:
                cgthub.cli.main()
            finally:
                os._exit(0)
        print(f"pid {pid}", flush=True)
    """
)


def hl7_message(n: int, kind: str, trial: int) -> bytes:
    """An ORM (order placed) or SIU (collection booked) for order n, with a control id of its own."""
    pid = f"PID|1||MRN{n:08d}^^^US-BOS-01^MR~CHW123426{n:06d}^^^COI^PN||Doe^Jane||19700101|F"
    control = f"{kind}{trial:02d}{n:06d}"
    if kind == "ORM":
        body = (
            f"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303112000||ORM^O01|{control}|P|2.5.1\r{pid}\r"
            f"ORC|NW|PL-{n}|FL-{n}|CRM-{n:05d}|SC||||20260303112000\r"
            f"OBR|1|PL-{n}|FL-{n}|APH^Apheresis collection^L|||20260309080000\r"
        )
    else:
        body = (
            f"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260304090000||SIU^S12|{control}|P|2.5.1\r"
            f"SCH|APT-{n}|||||^Apheresis|||||||||||||||||||BOOKED|PL-{n}\r{pid}\rRGS|1\r"
            f"AIS|1||APH^Apheresis collection|20260309080000\r"
        )
    return body.encode()


def control_id(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[9].decode()


def acked_id(ack: bytes) -> str:
    msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA|"))
    return msa.split(b"|")[2].decode()


class Listeners:
    """`cgthub hl7 listen --archive-only` processes on one port, started and SIGKILLed at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        env = dict(os.environ, CGTHUB_ENV="dev")
        self.zygote = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.pid: int | None = None
        self.started = 0

    def start(self) -> None:
        assert self.zygote.stdin is not None and self.zygote.stdout is not None
        self.zygote.stdin.write(f"hl7 listen --archive-only --host 127.0.0.1 --port {self.port}\n")
        self.zygote.stdin.flush()
        line = ""
        while not line.startswith("pid "):
            line = self.zygote.stdout.readline()
            assert line, "the listener launcher died"
        self.pid = int(line.split()[1])
        self.started += 1
        wait_for(self._accepts, 30)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(self.pid), 10)
        self.pid = None

    def close(self) -> None:
        if self.pid is not None:
            self.kill()
        assert self.zygote.stdin is not None
        self.zygote.stdin.close()
        self.zygote.wait(10)


def _alive(pid: int | None) -> bool:
    try:
        os.kill(pid or 0, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Sender(threading.Thread):
    """An interface engine's connection: sends, waits for the ACKs, resends what was not ACKed."""

    def __init__(self, port: int, messages: list[bytes], per_write: int) -> None:
        super().__init__(daemon=True)
        self.port, self.messages, self.per_write = port, messages, per_write
        self.codes: dict[str, str] = {}
        self.writes: dict[str, int] = {}  # times each message was written to a listener
        self.acked = 0

    def run(self) -> None:
        todo = list(self.messages)
        sock: socket.socket | None = None
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            batch = todo[: self.per_write]
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                sock.sendall(b"".join(frame(m) for m in batch))
                for message in batch:
                    self.writes[control_id(message)] = self.writes.get(control_id(message), 0) + 1
                answers = self._read(sock, len(batch))
            except OSError:  # the listener went away: reconnect and send again what was not ACKed
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.02)
                continue
            for message, answer in zip(batch, answers, strict=True):
                assert acked_id(answer) == control_id(message)
                self.codes[control_id(message)] = ack_code(answer)
                self.acked += ack_code(answer) == "AA"
            del todo[: len(batch)]
        if sock is not None:
            sock.close()

    @staticmethod
    def _read(sock: socket.socket, count: int) -> list[bytes]:
        decoder, answers = FrameDecoder(), []
        while len(answers) < count:
            block = sock.recv(65536)
            if not block:
                raise ConnectionResetError("closed before every ACK came")
            answers.extend(a for a in decoder.feed(block) if isinstance(a, bytes))
        return answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigkill_mid_stream_loses_no_acked_message(db_url, request):
    rng = random.Random(17)
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in range(1, TRIALS * ORDERS_PER_TRIAL + 1)])
    listeners = Listeners(free_port())
    senders: list[Sender] = []
    inbox_runs = 0
    try:
        listeners.start()
        for trial in range(TRIALS):
            orders = range(trial * ORDERS_PER_TRIAL + 1, (trial + 1) * ORDERS_PER_TRIAL + 1)
            stream = [hl7_message(n, kind, trial) for n in orders for kind in ("ORM", "SIU")]
            group = [Sender(listeners.port, stream[i::SENDERS], per_write=2 if i == 0 else 1) for i in range(SENDERS)]
            senders.extend(group)
            for sender in group:
                sender.start()
            kill_at = rng.randint(len(stream) // 4, len(stream) * 3 // 4)

            def acked(group: list[Sender] = group) -> int:
                return sum(sender.acked for sender in group)

            wait_for(lambda: acked() >= kill_at // 2, 60)
            apply_hl7_inbox(database_url=db_url)  # the inbox DAG runs beside the listener
            wait_for(lambda: acked() >= kill_at, 60)
            listeners.kill()
            apply_hl7_inbox(database_url=db_url)  # and while it is down
            listeners.start()
            for sender in group:
                sender.join(120)
                assert not sender.is_alive(), "a sender never got its ACKs"
            apply_hl7_inbox(database_url=db_url)
            inbox_runs += 3
    finally:
        listeners.close()

    codes = {cid: code for sender in senders for cid, code in sender.codes.items()}
    aa = {cid for cid, code in codes.items() if code == "AA"}
    with session_scope(db_url) as s:
        applied_raw = set(
            s.scalars(
                select(RawMessage.dedupe_key)
                .join(LedgerEntry, LedgerEntry.raw_id == RawMessage.id)
                .where(RawMessage.system == "hl7")
            )
        )
        applied = {key.split(":", 1)[1] for key in applied_raw}
        waiting = s.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.status == "received"))
        resent_after_commit = s.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.receive_count > 1))
        checked, problems = ledger.verify(s)
    lost = aa - applied
    writes = [count for sender in senders for count in sender.writes.values()]
    backend = request.node.callspec.params["db_url"]
    print(
        f"\ncrash recovery ({backend}): {TRIALS} trials, {listeners.started - 1} SIGKILLs and restarts, "
        f"{inbox_runs} inbox runs; {len(codes)} messages, {sum(writes)} frames sent "
        f"({sum(w > 1 for w in writes)} resent after a kill, {resent_after_commit} of them already archived); "
        f"{len(aa)} ACKed AA, {len(applied & aa)} applied, {len(lost)} ACKed but not applied; "
        f"ledger verify: {checked} orders, {len(problems)} problems"
    )
    assert len(codes) == TRIALS * ORDERS_PER_TRIAL * 2 and aa == set(codes), "every message is ACKed AA"
    assert not lost, f"ACKed AA but never applied: {sorted(lost)[:10]}"
    assert waiting == 0
    assert problems == [] and checked == TRIALS * ORDERS_PER_TRIAL
