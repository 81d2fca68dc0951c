"""README, "What a sender is told", the figures and the file drop, driven as a deployment runs them:

- "A message with ... more than 10,000 segments is answered AR without being parsed": the figure
  held by a literal here, over the MLLP listener on loopback (10,001 segments refused, 10,000 not
  refused for their number), so a change of the limit cannot pass unseen;
- "`cgthub hl7 ingest FILES_OR_FOLDERS` takes files and FHS/BHS batches and leaves a checksum receipt
  in place of each clear-text file": the installed command given a folder holding an FHS/BHS batch,
  in a subprocess; the receipt's SHA-256 is the dropped file's, the file is gone, the receipt
  carries none of its clear text.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from cgthub import ledger
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry
from connectors.hospital import simulator
from tests.factories import enrolment
from tests.test_hl7_listener import ORM, Running, exchange

CGTHUB = str(Path(sys.executable).parent / "cgthub")


def _with_segments(count: int) -> bytes:
    """The ORM fixture grown to exactly `count` segments with NTE lines."""
    base = ORM.rstrip(b"\r")
    have = base.count(b"\r") + 1
    return base + b"".join(b"\rNTE|%d||x" % n for n in range(count - have)) + b"\r"


def test_more_than_10000_segments_is_answered_ar_and_10000_are_not_refused_for_their_number(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    over, at = _with_segments(10_001), _with_segments(10_000)
    assert over.count(b"\r") == 10_001 and at.count(b"\r") == 10_000
    with Running(db_url) as running:
        (refused,) = exchange(running.port, frame(over), 1, timeout=60)
        (taken,) = exchange(running.port, frame(at), 1, timeout=60)
    assert ack_code(refused) == "AR" and b"more than 10000 segments" in refused
    assert b"segments" not in taken and ack_code(taken) == "AA"


def test_hl7_ingest_of_a_folder_takes_an_fhs_batch_and_leaves_a_checksum_receipt(db_url, tmp_path):
    with session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in (1, 2)])
    drop = tmp_path / "drop"
    drop.mkdir()
    batch = simulator.write_batch_file(drop / "feed.hl7", list(simulator.feed([1, 2])))
    dropped = batch.read_bytes()
    assert dropped.startswith(b"FHS|") and b"\rBHS|" in dropped
    done = subprocess.run(
        [CGTHUB, "hl7", "ingest", str(drop)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CGTHUB_DATABASE_URL": db_url},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not batch.exists()
    receipt_path = drop / "done" / "feed.hl7.receipt.json"
    receipt = json.loads(receipt_path.read_text())
    assert receipt["sha256"] == hashlib.sha256(dropped).hexdigest() and receipt["bytes"] == len(dropped)
    assert receipt["messages"] == 6 and receipt["acks"] == {"AA": 6}
    assert b"MRN" not in receipt_path.read_bytes() and b"PID|" not in receipt_path.read_bytes()
    with session_scope(db_url) as s:
        hl7_entries = select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_system == "hl7")
        assert (s.scalar(hl7_entries) or 0) > 0
