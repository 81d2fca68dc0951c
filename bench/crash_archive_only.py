"""Is every message ACKed AA applied, when the listener is killed mid-stream?

`cgthub hl7 listen --archive-only` runs as its own process; four hospital connections send their
patients' ORM, SIU and ORU, every third one beside a resend of the one before (a lost ACK). The
listener is SIGKILLed at a random moment, the HL7 inbox step runs, the hospital resends everything
from the start to a new listener, which is killed again, and the inbox step runs once more. A message
counts as applied when a ledger entry cites its archive row. Each trial uses orders of its own.

    python -m bench.crash_archive_only [--trials 10] [--patients 400] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--patients", type=int, default=400, help="per trial; three messages each")
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    args = parser.parse_args(argv)
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='cgthub-crash-')}/crash.db"
    os.environ["CGTHUB_DATABASE_URL"] = url
    sys.path.insert(0, str(ROOT))

    from cgthub import ledger, store
    from cgthub.devtools.samples import enrolment

    store.upgrade(url)
    acked_total = lost_total = 0
    for trial in range(args.trials):
        patients = range(trial * args.patients + 1, (trial + 1) * args.patients + 1)
        with store.session_scope(url) as session:
            ledger.append_many(session, [enrolment(n) for n in patients])
        acked, lost = _trial(url, patients)
        print(f"trial {trial}: {len(acked)} ACKed AA, {len(lost)} of them never applied", flush=True)
        acked_total, lost_total = acked_total + len(acked), lost_total + len(lost)
    print(f"{args.trials} trials: {acked_total} ACKed AA, {lost_total} ACKed but never applied")


def _trial(url: str, patients: range) -> tuple[set[str], list[str]]:
    from sqlalchemy import select

    from cgthub import partner_sync, store
    from cgthub.tables import LedgerEntry, RawMessage
    from connectors.hospital import simulator

    acked: set[str] = set()
    groups = [[m for n in patients if n % 4 == k for m in simulator.feed(range(n, n + 1))] for k in range(4)]
    for _phase in range(2):  # after the outage the hospital resends from the start
        _run_and_kill(url, groups, acked, random.uniform(0.3, 1.2))
        partner_sync.apply_hl7_inbox(database_url=url)
    with store.session_scope(url) as session:
        applied = set(
            session.scalars(select(RawMessage.dedupe_key).join(LedgerEntry, LedgerEntry.raw_id == RawMessage.id))
        )
    return acked, sorted(key for key in acked if key not in applied)


def _run_and_kill(url: str, groups: list[list[bytes]], acked: set[str], after: float) -> None:
    command = [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"]
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    listener = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    assert listener.stdout is not None
    port = int(re.search(r":(\d+) \(archive only\)", listener.stdout.readline().decode()).group(1))  # type: ignore[union-attr]
    lock = threading.Lock()
    senders = [threading.Thread(target=_send, args=(port, group, acked, lock)) for group in groups]
    for sender in senders:
        sender.start()
    time.sleep(after)
    listener.send_signal(signal.SIGKILL)
    listener.wait()
    for sender in senders:
        sender.join(10)


def _send(port: int, messages: list[bytes], acked: set[str], lock: threading.Lock) -> None:
    from cgthub.hl7.ack import ack_code
    from cgthub.hl7.mllp import FrameDecoder, frame

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for i, message in enumerate(messages):
                batch = [message] + ([messages[i - 1]] if i % 3 == 2 else [])
                sock.sendall(b"".join(frame(m) for m in batch))
                decoder, answers = FrameDecoder(), []
                while len(answers) < len(batch):
                    block = sock.recv(65536)
                    if not block:
                        return
                    answers.extend(a for a in decoder.feed(block) if isinstance(a, bytes))
                for sent, answer in zip(batch, answers, strict=True):
                    if ack_code(answer) == "AA":
                        fields = sent.split(b"\r")[0].split(b"|")
                        with lock:
                            acked.add(f"{fields[3].decode()}:{fields[9].decode()}")
    except OSError:
        return


if __name__ == "__main__":
    main()
