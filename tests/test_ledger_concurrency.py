"""Two processes appending to one order at the same time keep one valid hash chain."""

import os
import subprocess
import sys
import textwrap

from sqlalchemy import select

from cgthub import ledger
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.factories import enrolment

WORKER = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from cgthub import ledger
    from cgthub.model import EventType, SourceSystem
    from cgthub.store import session_scope
    from tests.factories import T0, event

    worker, count = sys.argv[1], int(sys.argv[2])
    for i in range(count):
        e = event(EventType.RESULT_RECORDED, 1, at=T0 + timedelta(minutes=i), system=SourceSystem.HL7,
                  eid=f"w{worker}-{i}", attributes={"i": i})
        with session_scope() as s:
            assert ledger.append(s, e).status == "appended"
    """
)


def test_two_processes_appending_to_one_order_keep_a_valid_chain(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(w), "40"], env=env, stderr=subprocess.PIPE, text=True)
        for w in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        seqs = s.scalars(select(LedgerEntry.seq).order_by(LedgerEntry.seq)).all()
        assert seqs == list(range(1, 82))
        assert order.ledger_length == 81
        writers = {e.source_event_id[:2] for e in ledger.entries(s, order.id)[1:]}
        assert writers == {"w1", "w2"}
        assert ledger.verify(s) == (1, [])
        assert order.projection["event_count"] == 81
