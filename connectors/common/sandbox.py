"""Running a partner sandbox for real on loopback, and its switchable fault mode.

A sandbox is an ASGI app served by uvicorn in a background thread on 127.0.0.1 (port 0 unless
given). `FaultInjector` wraps it: added latency, a share of 5xx, 429s with Retry-After, HTML error
pages and truncated (malformed) JSON bodies, from a seeded random generator so a run can be
repeated. Paths under /sandbox/ (the test's own controls) are never faulted.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from cgthub.settings import get_settings


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    error_rate: float = 0.0  # 503 Service Unavailable
    rate_limit_rate: float = 0.0  # 429 with Retry-After
    html_rate: float = 0.0  # 502 with an HTML error page
    malformed_rate: float = 0.0  # 200 with a truncated JSON body
    reset_rate: float = 0.0  # the connection dropped in the middle of the answer
    duplicate_rate: float = 0.0  # records repeated in a page (sandbox-specific)
    reorder: bool = False  # records in a page shuffled (sandbox-specific)
    seed: int = 7

    @classmethod
    def from_env(cls) -> FaultConfig:
        """`CGTHUB_SANDBOX_FAULTS`: unset or "off" for none, "chaos" for everything, or JSON such as
        {"error_rate": 0.2, "latency_ms": 50} (docker-compose and `make up` set it per sandbox)."""
        value = get_settings().sandbox_faults.strip()
        if value in ("", "off", "none"):
            return cls()
        if value == "chaos":
            return cls.chaos()
        try:
            return cls(**json.loads(value))
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"CGTHUB_SANDBOX_FAULTS must be off, chaos or a JSON object of FaultConfig fields: {exc}"
            ) from exc

    @classmethod
    def chaos(cls, seed: int = 7) -> FaultConfig:
        """Everything at once, at rates a sync must ride out."""
        return cls(
            latency_ms=5,
            error_rate=0.15,
            rate_limit_rate=0.1,
            html_rate=0.05,
            malformed_rate=0.05,
            reset_rate=0.05,
            duplicate_rate=0.2,
            reorder=True,
            seed=seed,
        )


class FaultInjector:
    def __init__(self, app: Any, config: FaultConfig) -> None:
        self.app, self.config = app, config
        self.random = random.Random(config.seed)
        self.injected: dict[str, int] = {}
        self.sandbox_state: Any = None  # the partner's state, for tests and the demo

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/sandbox/"):
            await self.app(scope, receive, send)
            return
        cfg = self.config
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        roll = self.random.random()
        for name, rate, status, headers, body in (
            ("5xx", cfg.error_rate, 503, [(b"content-type", b"application/json")], b'{"error":"unavailable"}'),
            ("429", cfg.rate_limit_rate, 429, [(b"retry-after", b"0")], b""),
            ("html", cfg.html_rate, 502, [(b"content-type", b"text/html")], b"<html><h1>502 Bad Gateway</h1></html>"),
        ):
            if roll < rate:
                self.injected[name] = self.injected.get(name, 0) + 1
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            roll -= rate
        if roll < cfg.reset_rate:
            self.injected["reset"] = self.injected.get("reset", 0) + 1
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4096")]})
            await send({"type": "http.response.body", "body": b'{"items": [', "more_body": True})
            raise ConnectionResetError("sandbox fault: connection dropped mid-answer")
        roll -= cfg.reset_rate
        if roll < cfg.malformed_rate and scope["method"] == "GET":
            self.injected["malformed"] = self.injected.get("malformed", 0) + 1
            await self.app(scope, receive, _truncating(send))
            return
        await self.app(scope, receive, send)


def _truncating(send: Any) -> Any:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [(k, v) for k, v in message["headers"] if k != b"content-length"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": message["body"][: len(message["body"]) // 2]}
        await send(message)

    return wrapped


class SandboxServer:
    """uvicorn in a thread; `with SandboxServer(app) as server: server.base_url`."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name=f"sandbox-{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"sandbox on {self.base_url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
