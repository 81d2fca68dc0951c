"""The ledger cannot be rewritten silently by someone who can write the database.

Each attack below keeps the public SHA-256 chain and the order head consistent, so recomputing the
hashes alone (what `ledger verify` did before entries were sealed and heads checkpointed) finds
nothing. The attacker has write access to the database and knows the public hash rule, but has
neither the ledger key nor the checkpoint file. Every check runs the deployment's command,
`cgthub ledger verify`, in its own process.
"""

import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, text, update

from cgthub import archive, ledger, ledger_anchor
from cgthub.jsontext import canonical_json
from cgthub.model import EventType
from cgthub.tables import LedgerEntry, Order, OrderKey, utcnow
from tests.factories import T0, event, happy_path

TARGET_COI = "CHW123426000001"


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints.jsonl"
    monkeypatch.setenv("CGTHUB_LEDGER_CHECKPOINTS", str(path))
    return path


def _cli(*args, url):
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def hub(db_url, checkpoints):
    """Two orders of thirteen entries each, verified and checkpointed as the monitoring job would."""
    from cgthub.store import session_scope

    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1) + happy_path(2))
    ok = _cli("ledger", "verify", url=db_url)
    assert ok.returncode == 0, ok.stderr
    assert "26 entries" in ok.stdout and "no checkpoint" in ok.stdout
    taken = _cli("ledger", "checkpoint", url=db_url)
    assert taken.returncode == 0, taken.stderr + taken.stdout
    assert "2 of 2 chain heads recorded" in taken.stdout
    with session_scope(db_url, readonly=True) as s:
        target = s.scalar(select(Order.id).where(Order.coi_id == TARGET_COI))
    return db_url, target


def _chain(s, order_id):
    return list(s.scalars(select(LedgerEntry).where(LedgerEntry.order_id == order_id).order_by(LedgerEntry.seq)))


def _set_head(s, order_id, length, head):
    s.execute(update(Order).where(Order.id == order_id).values(ledger_length=length, ledger_head=head))


def _rechain(s, order_id, entries, start):
    """Recompute the public hashes from `start` on, as anyone who knows the rule can."""
    prev = entries[start - 2].entry_hash if start > 1 else ledger.GENESIS
    for entry in entries[start - 1 :]:
        digest = ledger.entry_hash(
            prev_hash=prev, order_id=order_id, seq=entry.seq, recorded_at=entry.recorded_at, body=entry.body
        )
        s.execute(update(LedgerEntry).where(LedgerEntry.id == entry.id).values(prev_hash=prev, entry_hash=digest))
        prev = digest
    _set_head(s, order_id, entries[-1].seq, prev)


def truncate_tail(s, order_id, url):
    """The last two entries go, and the head is set back to the entry now last."""
    entries = _chain(s, order_id)
    s.execute(delete(LedgerEntry).where(LedgerEntry.order_id == order_id, LedgerEntry.seq > 11))
    _set_head(s, order_id, 11, entries[10].entry_hash)


def forge_entry(s, order_id, url):
    """A cancellation the order never had, hashed by the public rule and linked as the new head."""
    last = _chain(s, order_id)[-1]
    forged = event(EventType.ORDER_CANCELLED, 1, at=last.occurred_at, eid="forged", reason="forged")
    body = forged.canonical_body()
    recorded = utcnow()
    digest = ledger.entry_hash(prev_hash=last.entry_hash, order_id=order_id, seq=14, recorded_at=recorded, body=body)
    s.add(
        LedgerEntry(
            order_id=order_id,
            seq=14,
            source_system=forged.source_system.value,
            source_event_id=forged.source_event_id,
            event_type=forged.event_type.value,
            occurred_at=forged.occurred_at,
            recorded_at=recorded,
            raw_id=None,
            body=body,
            prev_hash=last.entry_hash,
            entry_hash=digest,
            entry_mac=last.entry_mac,  # the best a keyless forger can do: some other entry's seal
        )
    )
    s.flush()
    _set_head(s, order_id, 14, digest)


def recompute_suffix(s, order_id, url):
    """Entry 5 edited (its mapping version), every hash from there on recomputed, head moved."""
    entries = _chain(s, order_id)
    body = json.loads(entries[4].body)
    body["provenance"]["mapping_version"] = "9.9.9"
    s.execute(update(LedgerEntry).where(LedgerEntry.id == entries[4].id).values(body=canonical_json(body)))
    s.expire_all()
    _rechain(s, order_id, _chain(s, order_id), 5)


def edit_raw_id(s, order_id, url):
    """Entry 3 claims to come from another archived payload (a column outside the public hash)."""
    other = archive.store(s, system="hl7", kind="ORM^O01", channel="file", payload=b"MSH|^~\\&|other", received_at=T0)
    s.execute(
        update(LedgerEntry).where(LedgerEntry.order_id == order_id, LedgerEntry.seq == 3).values(raw_id=other.raw_id)
    )


def delete_order(s, order_id, url):
    """The whole order goes: its entries, its keys and its row, leaving nothing inconsistent."""
    s.execute(delete(LedgerEntry).where(LedgerEntry.order_id == order_id))
    s.execute(delete(OrderKey).where(OrderKey.order_id == order_id))
    s.execute(delete(Order).where(Order.id == order_id))


def orphan_chain(s, order_id, url):
    """Only the order row goes (foreign keys switched off): its entries stay, owned by nothing."""
    if url.startswith("sqlite"):
        s.commit()
        raw = sqlite3.connect(url.split("///", 1)[1])  # a plain connection: foreign keys are off
        raw.execute("DELETE FROM orders WHERE id = ?", (order_id,))
        raw.commit()
        raw.close()
    else:
        s.execute(text("SET LOCAL session_replication_role = replica"))  # skips the FK triggers
        s.execute(delete(Order).where(Order.id == order_id))


def empty_order(s, order_id, url):
    """Every entry goes and the head is set back to the genesis: an order with no history."""
    s.execute(delete(LedgerEntry).where(LedgerEntry.order_id == order_id))
    _set_head(s, order_id, 0, ledger.GENESIS)


ATTACKS = [truncate_tail, forge_entry, recompute_suffix, edit_raw_id, delete_order, orphan_chain, empty_order]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_verify_names_the_order_a_database_writer_rewrote(hub, attack):
    from cgthub.store import session_scope

    url, target = hub
    with session_scope(url) as s:
        attack(s, target, url)
    bad = _cli("ledger", "verify", url=url)
    assert bad.returncode == 1, bad.stdout
    assert "TAMPERED" in bad.stdout and target in bad.stdout
    assert "ledger verification failed" in bad.stderr
    # The other order is untouched and named nowhere.
    with session_scope(url, readonly=True) as s:
        other = s.scalar(select(Order.id).where(Order.coi_id != TARGET_COI))
    assert other not in bad.stdout


def test_a_checkpoint_never_blesses_a_cut_back_chain(hub):
    """After a truncation, the periodic checkpoint refuses to record the shorter head."""
    from cgthub.store import session_scope

    url, target = hub
    with session_scope(url) as s:
        truncate_tail(s, target, url)
    again = _cli("ledger", "checkpoint", url=url)
    assert again.returncode == 1 and target in again.stdout and "recorded 13" in again.stdout
    bad = _cli("ledger", "verify", url=url)
    assert bad.returncode == 1 and "entries removed" in bad.stdout


def test_the_checkpoint_file_is_signed_line_by_line(hub, checkpoints):
    """A head edited in the checkpoint file, without the key, is refused and reported."""
    url, _ = hub
    lines = checkpoints.read_text().splitlines()
    record = json.loads(lines[-1])
    first = next(iter(record["heads"]))
    record["heads"][first][0] = 1
    checkpoints.write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    bad = _cli("ledger", "verify", url=url)
    assert bad.returncode == 1 and "not signed with the ledger key" in bad.stdout


def test_appends_after_a_checkpoint_verify_and_extend_it(hub, checkpoints):
    from cgthub.store import session_scope

    url, target = hub
    with session_scope(url) as s:
        ledger.append_many(s, [event(EventType.ORDER_ON_HOLD, 1, at=T0 + timedelta(days=60), eid="hold")])
    ok = _cli("ledger", "verify", url=url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "checked against the checkpoint" in ok.stdout
    taken = _cli("ledger", "checkpoint", url=url)
    assert taken.returncode == 0 and "1 of 2 chain heads recorded" in taken.stdout
    with session_scope(url, readonly=True) as s:
        assert ledger_anchor.read_checkpoints(s).heads[target][0] == 14


def test_an_entry_sealed_with_another_key_does_not_verify(db_url, checkpoints, monkeypatch):
    """The seal is keyed: the same database read with another CGTHUB_LEDGER_KEY fails everywhere."""
    import base64

    from cgthub.store import session_scope

    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1))
    monkeypatch.setenv("CGTHUB_LEDGER_KEY", base64.urlsafe_b64encode(b"k" * 32).decode())
    bad = _cli("ledger", "verify", url=db_url)
    assert bad.returncode == 1 and bad.stdout.count("seal does not match") == 13


def test_upgrading_seals_the_entries_that_still_hash_and_only_those(tmp_path, checkpoints):
    """0013 seals what the hub wrote before it; an entry already edited stays unsealed and named."""
    import sqlalchemy as sa

    from cgthub import store
    from cgthub.tables import UTCDateTime

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store.upgrade(url, "0012")
    orders = sa.table(
        "orders",
        *(sa.column(c) for c in ("id", "status", "on_hold", "projection", "ledger_length", "ledger_head")),
        *(sa.column(c) for c in ("projected_length",)),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    entries = sa.table(
        "ledger_entries",
        *(sa.column(c) for c in ("order_id", "seq", "source_system", "source_event_id", "event_type", "raw_id")),
        *(sa.column(c) for c in ("body", "prev_hash", "entry_hash")),
        sa.column("occurred_at", UTCDateTime()),
        sa.column("recorded_at", UTCDateTime()),
    )
    rows, heads = [], {}
    for order_id, events in (("ORD-OLD-1", happy_path(1)), ("ORD-OLD-2", happy_path(2))):
        prev = ledger.GENESIS
        for seq, e in enumerate(events, start=1):
            body = e.canonical_body()
            digest = ledger.entry_hash(prev_hash=prev, order_id=order_id, seq=seq, recorded_at=T0, body=body)
            rows.append(
                {
                    "order_id": order_id,
                    "seq": seq,
                    "source_system": e.source_system.value,
                    "source_event_id": e.source_event_id,
                    "event_type": e.event_type.value,
                    "raw_id": None,
                    "body": body,
                    "prev_hash": prev,
                    "entry_hash": digest,
                    "occurred_at": e.occurred_at,
                    "recorded_at": T0,
                }
            )
            prev = digest
        heads[order_id] = (len(events), prev)
    rows[1]["body"] = rows[1]["body"].replace('"mapping_version":"1"', '"mapping_version":"2"')  # edited before
    with store.session_scope(url) as s:
        s.execute(
            sa.insert(orders),
            [
                {"id": oid, "status": "infused", "on_hold": False, "projection": "{}", "ledger_length": n,
                 "ledger_head": head, "projected_length": n, "created_at": T0, "updated_at": T0}
                for oid, (n, head) in heads.items()
            ],
        )  # fmt: skip
        s.execute(sa.insert(entries), rows)
    store.upgrade(url)
    with store.session_scope(url, readonly=True) as s:
        unsealed = s.scalars(select(LedgerEntry.seq).where(LedgerEntry.entry_mac.is_(None))).all()
        orders_checked, problems = ledger.verify(s)
    store.dispose_engines()
    assert unsealed == [2] and orders_checked == 2
    assert {(p.order_id, p.seq) for p in problems} == {("ORD-OLD-1", 2)}
    assert {p.problem.split(" (")[0] for p in problems} == {"content does not match its hash", "entry has no seal"}
