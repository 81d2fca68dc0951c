"""The listener's memory under a slowloris burst, and after it.

`cgthub hl7 listen --archive-only` runs as its own process on a fresh SQLite file. Many connections
each send a start block and most of a 1 MB message, then stall without ever ending the frame. The
bench reads the listener's resident memory (VmRSS) before the burst, while the stalled frames are
held, and once the senders have gone away, and counts the connections the listener closed itself
(its cap on buffered bytes, or the frame deadline).

Run: .venv/bin/python -m bench.mllp_slowloris_bench [--connections 150] [--frame-bytes 1000000] [-- listen options]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cgthub import store
from cgthub.hl7.mllp import START


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def settled_rss(pid: int, *, quiet_for: float = 1.5, timeout: float = 60.0) -> float:
    """RSS once it has stopped moving by more than 1 MB for `quiet_for` seconds."""
    deadline = time.monotonic() + timeout
    last, since = rss_mb(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = rss_mb(pid)
        if abs(now - last) > 1:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return now
    return rss_mb(pid)


def start_listener(listen_options: list[str], connections: int) -> tuple[subprocess.Popen[str], int]:
    folder = Path(tempfile.mkdtemp(prefix="mllp-slowloris-"))
    url = f"sqlite:///{folder / 'hub.db'}"
    store.upgrade(url)
    env = dict(os.environ, CGTHUB_DATABASE_URL=url, CGTHUB_VAR_DIR=str(folder / "var"), CGTHUB_ENV="dev")
    # Every connection comes from 127.0.0.1: the cap per address (32) would refuse the rest on arrival
    # and the bytes held would never near the buffer cap this bench measures. Set it to keep the cap.
    env.setdefault("CGTHUB_MLLP_MAX_CONNECTIONS_PER_ADDRESS", str(connections))
    command = [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--archive-only", "--port", "0", *listen_options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r":(\d+)", line)
    if not found:
        process.kill()
        raise RuntimeError(f"the listener did not start: {line!r}")
    return process, int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--frame-bytes", type=int, default=1_000_000)
    parser.add_argument("listen_options", nargs="*", help="options passed to `cgthub hl7 listen`")
    args = parser.parse_args()

    process, port = start_listener(args.listen_options, args.connections)
    try:
        before = settled_rss(process.pid)
        body = START + b"MSH|^~\\&|X|Y|Z|W|20260303||ORM^O01|S|P|2.5.1\rNTE|1||" + b"x" * args.frame_bytes
        sockets = []
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            sockets.append([sock, memoryview(body)])
        deadline = time.monotonic() + 60
        while any(len(rest) for _s, rest in sockets) and time.monotonic() < deadline:
            writable = [s for s, rest in sockets if len(rest)]
            _r, ready, _x = select.select([], writable, [], 0.5)
            for entry in sockets:
                sock, rest = entry
                if sock in ready:
                    try:
                        entry[1] = rest[sock.send(rest[:262144]) :]
                    except OSError:  # closed by the listener
                        entry[1] = rest[:0]
        holding = settled_rss(process.pid)
        closed_by_listener = 0
        for sock, _rest in sockets:
            try:
                closed_by_listener += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed_by_listener += 1
        for sock, _rest in sockets:
            sock.close()
        after = settled_rss(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    print(
        f"{args.connections} connections x {args.frame_bytes / 1e6:.1f} MB half-sent frames: "
        f"listener RSS {before:.0f} MB before, {holding:.0f} MB holding them, {after:.0f} MB after they went away; "
        f"{closed_by_listener} closed by the listener"
    )


if __name__ == "__main__":
    main()
