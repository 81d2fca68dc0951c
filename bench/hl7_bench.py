"""HL7 ingest speed: file drop and MLLP with 8 concurrent senders, beside a naive pipeline.

20,000 generated ORM^O01 / SIU^S12 messages for pre-enrolled orders go the whole way: frame ->
archive -> parse -> map -> ledger -> projection, on SQLite. The naive pipeline parses each message
with hl7apy and inserts and commits one ORM row per message (measured on a slice: it is slow).
The MLLP senders run in a process of their own (the hospital's core, not the listener's), by
default all on one event loop, as an interface engine holds its connections; `--client threads`
gives each sender a thread, whose GIL hand-offs lengthen a round of ACKs.
The listener runs on the event loop `cgthub hl7 listen` runs on (CGTHUB_LISTENER_EVENT_LOOP, uvloop by
default); `--loop asyncio|uvloop` picks one for the comparison.
Run: .venv/bin/python -m bench.hl7_bench [--messages 20000] [--senders 8] [--repeat 3] [--client threads]
     [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from hl7apy.parser import parse_message

from cgthub import ledger, runtime, store
from cgthub.archive import checksum, seal
from cgthub.devtools.samples import enrolment
from cgthub.hl7.event_loop import KINDS, new_listener_loop
from cgthub.hl7.files import ingest_paths
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.tables import RawMessage, utcnow


def messages(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        n = i // 2 + 1
        pid = f"PID|1||MRN{n:08d}^^^US-BOS-01^MR~CHW123426{n:06d}^^^COI^PN||Doe^Jane||19700101|F"
        if i % 2 == 0:
            body = (
                f"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303112000||ORM^O01|ORM{i:08d}|P|2.5.1\r{pid}\r"
                f"ORC|NW|PL-{n}|FL-{n}|CRM-{n:05d}|SC||||20260303112000\r"
                f"OBR|1|PL-{n}|FL-{n}|APH^Apheresis collection^L|||20260309080000\r"
            )
        else:
            body = (
                f"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260304090000||SIU^S12|SIU{i:08d}|P|2.5.1\r"
                f"SCH|APT-{n}|||||^Apheresis|||||||||||||||||||BOOKED|PL-{n}\r{pid}\rRGS|1\r"
                f"AIS|1||APH^Apheresis collection|20260309080000\r"
            )
        out.append(body.encode())
    return out


def fresh_database(orders: int) -> str:
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'hl7-bench.db'}"
    store.upgrade(url)
    with session_scope(url) as session:
        ledger.append_many(session, [enrolment(n) for n in range(1, orders + 1)])
    return url


def _checkpoint_cpu(url: str) -> float:
    """CPU seconds the background WAL checkpoints of this process have spent on `url` so far."""
    watched = store.wal_checkpoints(url)
    return watched.cpu_seconds if watched is not None else 0.0


def file_drop(batch: list[bytes], url: str) -> tuple[float, float]:
    """Seconds for the whole feed, and the checkpoint thread's CPU seconds meanwhile."""
    folder = Path(tempfile.mkdtemp())
    path = folder / "feed.hl7"
    path.write_bytes(b"FHS|^~\\&|EPIC\rBHS|^~\\&|EPIC\r" + b"".join(batch) + b"BTS|1\rFTS|1\r")
    checkpoints = _checkpoint_cpu(url)
    started = time.perf_counter()
    report = ingest_paths([path], database_url=url, batch=1000)
    elapsed = time.perf_counter() - started
    assert report.accepted == len(batch), report
    return elapsed, _checkpoint_cpu(url) - checkpoints


def _send_and_wait(port: int, part: list[bytes]) -> int:
    """One sender on its own thread: a message, then its ACK, then the next; how many came back AA."""
    decoder, ok = FrameDecoder(), 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for message in part:
            sock.sendall(frame(message))
            answers: list[bytes] = []
            while not answers:
                answers = [a for a in decoder.feed(sock.recv(65536)) if isinstance(a, bytes)]
            ok += b"MSA|AA|" in answers[0]
    return ok


async def _sender(port: int, part: list[bytes]) -> int:
    """One sender on the hospital's event loop: a message, then its ACK, then the next."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder, ok = FrameDecoder(), 0
    try:
        for message in part:
            writer.write(frame(message))
            answers: list[bytes] = []
            while not answers:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the listener closed the connection")
                answers = [a for a in decoder.feed(data) if isinstance(a, bytes)]
            ok += b"MSA|AA|" in answers[0]
    finally:
        writer.close()
        await writer.wait_closed()
    return ok


async def _senders(port: int, parts: list[list[bytes]]) -> int:
    return sum(await asyncio.gather(*(_sender(port, part) for part in parts)))


def _hospital(port: int, parts: list[list[bytes]], client: str = "asyncio") -> tuple[int, float]:
    """The senders, in the hospital's own process (not sharing the listener's core or GIL): one
    event loop holding every connection (`asyncio`), or one thread per sender (`threads`, where the
    senders' own GIL hand-offs add to each round trip)."""
    started = time.perf_counter()
    if client == "asyncio":
        acked = asyncio.run(_senders(port, parts))
    else:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            acked = sum(pool.map(_send_and_wait, [port] * len(parts), parts))
    return acked, time.perf_counter() - started


def mllp(
    batch: list[bytes],
    url: str,
    senders: int,
    *,
    apply: bool = True,
    client: str = "asyncio",
    loop_kind: str | None = None,
) -> tuple[float, float, float]:
    """Seconds for the whole feed, the average number of messages per group commit, and the
    checkpoint thread's CPU seconds meanwhile. The listener's loop: `loop_kind`, else the setting's."""
    loop = new_listener_loop(loop_kind)
    listener = MllpListener("127.0.0.1", 0, database_url=url, apply=apply)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    parts = [batch[i::senders] for i in range(senders)]
    checkpoints = _checkpoint_cpu(url)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as hospital:
        hospital.submit(_hospital, listener.port, [[] for _ in parts], client).result()  # started and warm
        acked, elapsed = hospital.submit(_hospital, listener.port, parts, client).result()
    asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    assert acked == len(batch), f"{acked} of {len(batch)} acknowledged AA"
    return elapsed, listener.stats.messages / max(listener.stats.batches, 1), _checkpoint_cpu(url) - checkpoints


def durable_sqlite(name: str) -> sqlite3.Connection:
    """A new SQLite file in a temporary folder, as durable as the hub's: WAL, synchronous=FULL,
    autocommit (the caller writes its own BEGIN IMMEDIATE ... COMMIT)."""
    connection = sqlite3.connect(Path(tempfile.mkdtemp()) / name, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def plain_split(batch: list[bytes], size: int = 1000) -> float:
    """The issue's yardstick for this machine: split each message into segments and fields, pick
    MSH-9, MSH-10, MSH-4 and PID-3, and insert one row a message, 1,000 a transaction, into a
    WAL-mode SQLite file with the hub's durability (synchronous=FULL). No archive seal, no mapping,
    ledger or projection: what is left of ingest with those taken away."""
    connection = durable_sqlite("plain.db")
    connection.execute(
        "CREATE TABLE message (id INTEGER PRIMARY KEY, kind TEXT, control_id TEXT, facility TEXT,"
        " patient TEXT, payload BLOB, UNIQUE (facility, control_id))"
    )
    started = time.perf_counter()
    for start in range(0, len(batch), size):
        rows = []
        for raw in batch[start : start + size]:
            segments = {s[:3]: s.split("|") for s in raw.decode().split("\r") if s}
            msh, pid = segments["MSH"], segments.get("PID", [])
            rows.append((msh[8], msh[9], msh[3], pid[3] if len(pid) > 3 else None, raw))
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO message (kind, control_id, facility, patient, payload) VALUES (?, ?, ?, ?, ?)", rows
        )
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def naive(batch: list[bytes], url: str) -> float:
    started = time.perf_counter()
    for raw in batch:
        message = parse_message(raw.decode(), find_groups=False)
        with session_scope(url) as session:
            now = utcnow()
            session.add(
                RawMessage(
                    system="naive",
                    kind=message.msh.msh_9.to_er7(),
                    channel="file",
                    dedupe_key=message.msh.msh_10.value,
                    checksum=checksum(raw),
                    size=len(raw),
                    payload=seal(raw, b"naive"),
                    received_at=now,
                    last_received_at=now,
                    status="processed",
                )
            )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--naive", type=int, default=1_000, help="messages for the naive pipeline")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each path, the fastest printed (this VM's speed swings)"
    )
    parser.add_argument(
        "--client",
        choices=["asyncio", "threads"],
        default="asyncio",
        help="how the hospital process runs its senders: one event loop, or a thread each",
    )
    parser.add_argument(
        "--loop", choices=KINDS, help="the listener's event loop (default: CGTHUB_LISTENER_EVENT_LOOP's, uvloop)"
    )
    args = parser.parse_args()
    runtime.tune_gc()
    batch = messages(args.messages)
    orders = args.messages // 2 + 1
    runs = range(max(1, args.repeat))
    file_s, file_cpu = min(file_drop(batch, fresh_database(orders)) for _ in runs)
    mllp_s, mllp_group, mllp_cpu = min(
        mllp(batch, fresh_database(orders), args.senders, client=args.client, loop_kind=args.loop) for _ in runs
    )
    archive_s, archive_group, _cpu = min(
        mllp(batch, fresh_database(orders), args.senders, apply=False, client=args.client, loop_kind=args.loop)
        for _ in runs
    )
    naive_s = min(naive(batch[: args.naive], fresh_database(1)) for _ in runs)
    plain_s = min(plain_split(batch) for _ in runs)
    naive_rate = args.naive / naive_s
    print(
        f"HL7 ingest on SQLite, {args.messages:,} ORM^O01/SIU^S12 messages (archive, parse, map, ledger, projection):"
    )
    file_rate, mllp_rate = args.messages / file_s, args.messages / mllp_s
    print(f"  file drop                 {file_rate:>9,.0f} msg/s   {file_rate / naive_rate:5.1f}x naive")
    print(
        f"  MLLP, {args.senders} senders waiting  {mllp_rate:>9,.0f} msg/s   {mllp_rate / naive_rate:5.1f}x naive"
        f"   ({mllp_group:.1f} messages per group commit; senders: {args.client};"
        f" listener's loop: {args.loop or get_settings().listener_event_loop})"
    )
    archive_rate = args.messages / archive_s
    print(
        f"  MLLP, archive-only ACKs   {archive_rate:>9,.0f} msg/s   (applied later by the HL7 inbox DAG;"
        f" {archive_group:.1f} per group commit)"
    )
    print(f"  naive (hl7apy + 1 commit) {naive_rate:>9,.0f} msg/s   (archive only, {args.naive:,} messages)")
    plain_rate = args.messages / plain_s
    print(
        f"  plain split + inserts     {plain_rate:>9,.0f} msg/s   (the issue's yardstick, ~60,000 on its machine;"
        f" file drop {file_rate / plain_rate:.1%} of it)"
    )
    print(f"  file drop / MLLP ratio    {file_rate / mllp_rate:9.1f}x   (target: >= 10,000 msg/s on both paths)")
    print(
        f"  WAL checkpoint thread     {file_cpu * 1e3:6.0f} ms CPU in the file drop, {mllp_cpu * 1e3:.0f} ms in MLLP"
        "   (another core: commits leave the checkpoints to it)"
    )


if __name__ == "__main__":
    main()
