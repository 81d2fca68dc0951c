"""README, Audit trail: rows are "written in the same transaction as the action".

A signed decision runs as `cgthub` runs it (the installed CLI's `main`, in a subprocess), with one
step replaced: `decisions.record_outcome`, which writes the decision's trail row, writes it and then
fails, as a fault inside the action after its row is written would. The subprocess prints the row it
saw in its own transaction before failing, so the fault comes after the row. Afterwards every table
of the hub's database holds what it held before: no decision, no ledger entry, no order or
quarantine change, no trail row (not the decision's, not the configuration rows noted before it);
`cgthub audit verify` still passes. The same command without the fault then changes the database
(the comparison can fail). Two actions: a hold released (ledger, projection) and a quarantined HL7
conflict retried as a correction (archive, quarantine, ledger, requalification). Both stores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from sqlalchemy import select

from cgthub import api as _api_tables  # noqa: F401  (the API's tables, in Base.metadata too)
from cgthub.store import session_scope
from cgthub.tables import AuditRecord, Base, Order, QuarantineEntry
from tests.test_conflict_words import _received_conflict
from tests.test_decisions import PASSWORD, SIGN, _add_operator, _cli, _held_orders

# `python -m cgthub.cli`, with the step that writes the decision's trail row failing right after it.
_FAULTY_CLI = """
import sys
from sqlalchemy import select
from cgthub import decisions
from cgthub.cli import main
from cgthub.tables import AuditRecord

written = decisions.record_outcome

def written_then_failing(session, decision, outcome):
    row = written(session, decision, outcome)
    seen = session.scalars(select(AuditRecord.action).where(AuditRecord.seq == row.seq)).one()
    print(f"trail row {row.seq} in the transaction: {seen}", flush=True)
    raise RuntimeError("fault injected after the trail row was written")

decisions.record_outcome = written_then_failing
sys.argv = ["cgthub", *sys.argv[1:]]
main()
"""


def _faulty_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    command = [sys.executable, "-c", _FAULTY_CLI, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, input=PASSWORD + "\n", timeout=120)


def _everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the hub's database, in a stable order."""
    with session_scope(url, readonly=True) as s:
        return {
            table.name: sorted((tuple(map(repr, row)) for row in s.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables
        }


def _trail(url: str) -> list[str]:
    with session_scope(url, readonly=True) as s:
        return list(s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def _fails_then_succeeds(url: str, *args: str, action: str) -> None:
    before = _everything(url)
    failed = _faulty_cli(*args, url=url)
    assert failed.returncode != 0, failed.stdout
    assert "fault injected after the trail row was written" in failed.stderr, failed.stderr
    assert f": decision.{action}" in failed.stdout, failed.stdout  # the row existed when the fault came
    after = _everything(url)
    assert after == before, {name: rows for name, rows in after.items() if rows != before[name]}
    verified = _cli("audit", "verify", url=url)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    signed = _cli(*args, url=url, password=PASSWORD)
    assert signed.returncode == 0, signed.stderr
    assert _everything(url) != before
    assert _trail(url)[-1] == f"decision.{action}"


def test_a_released_hold_and_its_trail_row_roll_back_together(db_url):
    held, _other = _held_orders(db_url)
    _add_operator(db_url, "qa.lead", "release_hold")
    release = ["orders", "release-hold", held, "--reason", "COI-VERIFIED", *SIGN, "--signer", "qa.lead"]

    _fails_then_succeeds(db_url, *release, action="release_hold")
    with session_scope(db_url, readonly=True) as s:
        order = s.get(Order, held)
        assert order is not None and not order.on_hold


def test_a_retried_conflict_and_its_trail_row_roll_back_together(db_url):
    entry = _received_conflict(db_url)  # an HL7 resend over MLLP that moved the order's site
    _add_operator(db_url, "coordinator", "retry_quarantine")
    retry = ["quarantine", "retry", str(entry.id), "--reason", "CHANGE-CONFIRMED", *SIGN, "--signer", "coordinator"]

    _fails_then_succeeds(db_url, *retry, action="retry_quarantine")
    with session_scope(db_url, readonly=True) as s:
        retried = s.get(QuarantineEntry, entry.id)
        assert retried is not None and retried.status == "replayed"
