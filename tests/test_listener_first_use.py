"""A listener does before its first connection what the first message would otherwise wait for, with
every message queued behind it: in a fresh process the first commit took 23-31 ms of CPU against 2-4
for the next (the ORM's mappers configured at the first query, the archive key's cipher, the site
registry read, beside the mapping compile that tests/test_listener_warm.py covers); 9 ms with these
done at start (docs/benchmarks.md, 6 December)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import asyncio, json, sys
from sqlalchemy import inspect
from cgthub import archive, sites, tables
from cgthub.hl7.listener import MllpListener

def state():
    return {
        "mappers configured": inspect(tables.Order).configured,
        "ciphers": len(archive._CIPHERS),
        "site registries read": sites._load.cache_info().currsize,
    }

async def main():
    listener = MllpListener("127.0.0.1", 0, database_url=sys.argv[1], apply=sys.argv[2] == "apply")
    before = state()
    await listener.start()
    after = state()
    await listener.stop()
    print(json.dumps([before, after]))

asyncio.run(main())
"""


def _start_in_a_fresh_process(tmp_path: Path, mode: str) -> tuple[dict[str, object], dict[str, object]]:
    url = f"sqlite:///{tmp_path / 'never-touched.db'}"  # starting connects to nothing
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, url, mode], capture_output=True, text=True, timeout=120, check=True
    )
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    return before, after


def test_an_applying_listener_sets_up_what_the_first_message_needs_before_it_accepts(tmp_path: Path) -> None:
    before, after = _start_in_a_fresh_process(tmp_path, "apply")
    assert before == {"mappers configured": False, "ciphers": 0, "site registries read": 0}
    assert after == {"mappers configured": True, "ciphers": 1, "site registries read": 1}


def test_an_archiving_listener_configures_the_mappers_and_the_cipher(tmp_path: Path) -> None:
    before, after = _start_in_a_fresh_process(tmp_path, "archive")
    assert before == {"mappers configured": False, "ciphers": 0, "site registries read": 0}
    assert after == {"mappers configured": True, "ciphers": 1, "site registries read": 0}  # it maps nothing
