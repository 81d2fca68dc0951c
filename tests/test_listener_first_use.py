"""A listener does before its first connection what the first message would otherwise wait for, with
every message queued behind it: in a fresh process the first commit took 22-31 ms of CPU against 2-4
for the next (the ORM's mappers configured at the first query, the archive key's cipher, the site
registry read, beside the mapping compile that tests/test_listener_warm.py covers); 9 ms with these
done at start. In a process that froze its start-up for the collector, it freezes its warm-up too
(docs/benchmarks.md, MLLP latency tail, 5 December evening)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_PROBE = """
import asyncio, gc, json, sys
from sqlalchemy import inspect
from cgthub import archive, runtime, sites, tables
from cgthub.hl7.listener import MllpListener

def state():
    return {
        "mappers configured": inspect(tables.Order).configured,
        "ciphers": len(archive._CIPHERS),
        "site registries read": sites._load.cache_info().currsize,
        "objects the collector scans": len(gc.get_objects()),  # the frozen ones are not among them
    }

async def main():
    if "tuned" in sys.argv:
        runtime.tune_gc()  # as `cgthub hl7 listen` does before it starts the listener
    listener = MllpListener("127.0.0.1", 0, database_url=sys.argv[1], apply=sys.argv[2] == "apply")
    before = state()
    await listener.start()
    after = state()
    await listener.stop()
    print(json.dumps([before, after]))

asyncio.run(main())
"""


def _start_in_a_fresh_process(tmp_path: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'never-touched.db'}"  # starting connects to nothing
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, url, *args], capture_output=True, text=True, timeout=120, check=True
    )
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    scanned = (before.pop("objects the collector scans"), after.pop("objects the collector scans"))
    return before | {"scanned": scanned[0]}, after | {"scanned": scanned[1]}


def _set_up(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "scanned"}


def test_an_applying_listener_sets_up_what_the_first_message_needs_before_it_accepts(tmp_path: Path) -> None:
    before, after = _start_in_a_fresh_process(tmp_path, "apply")
    assert _set_up(before) == {"mappers configured": False, "ciphers": 0, "site registries read": 0}
    assert _set_up(after) == {"mappers configured": True, "ciphers": 1, "site registries read": 1}


def test_an_archiving_listener_configures_the_mappers_and_the_cipher(tmp_path: Path) -> None:
    before, after = _start_in_a_fresh_process(tmp_path, "archive")
    assert _set_up(before) == {"mappers configured": False, "ciphers": 0, "site registries read": 0}
    assert _set_up(after) == {"mappers configured": True, "ciphers": 1, "site registries read": 0}  # maps nothing


def test_in_a_process_that_froze_its_start_up_the_listener_freezes_its_warm_up_too(tmp_path: Path) -> None:
    """What the warm-up made (compiled mappings, mapper set-up, the registry) is not left for the
    collector to scan again on the event loop at each older-generation collection."""
    before, after = _start_in_a_fresh_process(tmp_path, "apply", "tuned")
    assert before["scanned"] < 1_000  # tune_gc froze the imports
    assert after["scanned"] < 1_000  # and the listener froze its warm-up (tens of thousands otherwise)


def test_a_process_that_did_not_freeze_its_start_up_is_left_alone(tmp_path: Path) -> None:
    before, after = _start_in_a_fresh_process(tmp_path, "apply")
    assert after["scanned"] > before["scanned"] > 10_000  # nothing frozen: the imports and the warm-up scanned
