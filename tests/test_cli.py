"""The CLI says what went wrong and what to do, with a non-zero exit code."""

import os
import subprocess
import sys

from cgthub import ledger
from cgthub.store import session_scope
from tests.factories import happy_path


def _run(*args, url):
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env)


def test_unmigrated_database_tells_to_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    run = _run("orders", "list", url=url)
    assert run.returncode == 1 and not (tmp_path / "empty.db").exists()
    assert "does not exist" in run.stderr and "cgthub db upgrade" in run.stderr
    (tmp_path / "empty.db").touch()  # a database that exists but was never migrated
    run = _run("orders", "list", url=url)
    assert run.returncode == 1
    assert "no cgthub schema" in run.stderr and "cgthub db upgrade" in run.stderr
    assert _run("db", "upgrade", url=url).returncode == 0
    assert _run("orders", "list", url=url).returncode == 0


def test_unknown_order_and_quarantine_entry(db_url):
    run = _run("orders", "show", "ORD-NOPE", url=db_url)
    assert run.returncode == 1 and "no order ORD-NOPE" in run.stderr and "cgthub orders list" in run.stderr
    assert _run("quarantine", "show", "42", url=db_url).returncode == 1


def test_orders_list_and_show_give_status_milestones_refs_and_timeline(db_url):
    with session_scope(db_url) as s:
        order_id = ledger.append_many(s, happy_path(1)[:9])[0].order_id
    listing = _run("orders", "list", url=db_url)
    assert order_id in listing.stdout and "released" in listing.stdout
    shown = _run("orders", "show", order_id, url=db_url)
    assert shown.returncode == 0
    for expected in ("released", "CRM-00001", "SHP-1-OUT", "manufacturing", "cmo.released", "crm/test@1"):
        assert expected in shown.stdout, expected
