"""The event loop the MLLP listener runs on: uvloop unless CGTHUB_LISTENER_EVENT_LOOP=asyncio.

The listener's thread is CPU-bound at load (issue 21, point 5): besides the group commit, every
message costs the loop's own work (its selector poll, the transport's read and write, the handles it
schedules). uvloop runs that loop and its transports in C on libuv, so the listener's connections,
plain `asyncio.Protocol`s, need no change. `asyncio` keeps the standard library's loop, as a way
back should uvloop misbehave on some platform. `cgthub hl7 listen`, the demo's listener and the
benches that run the listener all take their loop from `new_listener_loop`, and the listener says
which loop it runs on (`running_loop_name`) in its start-up line and its /health answer.
"""

from __future__ import annotations

import asyncio

from cgthub.settings import get_settings

KINDS = ("uvloop", "asyncio")


def new_listener_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of `kind` (None: the setting's), not set as the thread's current loop."""
    kind = kind or get_settings().listener_event_loop
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop {kind!r}: one of {', '.join(KINDS)}")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio` (the standard library's), from the loop's own class, not the setting."""
    return "uvloop" if type(loop).__module__.split(".", 1)[0] == "uvloop" else "asyncio"


def running_loop_name() -> str:
    return loop_name(asyncio.get_running_loop())
