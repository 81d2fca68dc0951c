"""README, Order transparency API: "A background thread keeps syncing the journal to disk and moving
its rows into the table while the server runs, with no further request needed".

Through a running `cgthub api serve` (a subprocess): a request's row reaches `api_access_log` while the
server keeps running and nobody else calls it, and so does the row of a request made after that
first round (the moving repeats; it is not a drain at start or at exit). README gives no interval: the
thread's wait between rounds is `create_app`'s default, and a test of a fraction of a second on a
loaded machine would time the machine, so the time each row took is printed, with the load average.
Both stores.
"""

from __future__ import annotations

import os
import subprocess
import time

import httpx

from tests.test_api_access_log import _logged, _start_server

DEADLINE = 30.0  # seconds: far beyond any round; a row never moved fails here


def _in_table_while_running(db_url: str, server: subprocess.Popen[str], wanted: tuple[str | None, str, int]) -> float:
    """Seconds until `wanted` is a row of the table; fails if the server stops or the deadline passes."""
    started = time.monotonic()
    while wanted not in _logged(db_url):
        assert server.poll() is None, "the server stopped"
        assert time.monotonic() - started < DEADLINE, (wanted, _logged(db_url))
        time.sleep(0.05)
    assert server.poll() is None  # moved while it runs, not at exit
    return time.monotonic() - started


def test_a_running_server_moves_each_row_into_the_table_with_no_further_request(db_url):
    server, port = _start_server(db_url)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/orders").status_code == 401
            first = _in_table_while_running(db_url, server, (None, "/orders", 401))
            assert client.get("/orders/ORD-NOT-A-KEY-AWAY").status_code == 401
            second = _in_table_while_running(db_url, server, (None, "/orders/ORD-NOT-A-KEY-AWAY", 401))
    finally:
        server.terminate()
        server.wait(timeout=20)
        server.stderr.close()
    assert len(_logged(db_url)) == 2
    print(f"rows in the table {first:.2f} s and {second:.2f} s after their answers, load {os.getloadavg()[0]:.1f}")
