"""A TCP server on loopback that plays a partner against the hub's HTTP clients (a hostile one, a
trickling one): it reads each request whole (its head, then as many body bytes as Content-Length
says) and hands the connection and the request to `serve`, each connection on a thread of its own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class LoopbackHttpServer:
    def __init__(self, serve: Callable[[socket.socket, bytes], None]) -> None:
        self.serve = serve
        self.connections = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    if not (chunk := conn.recv(65536)):
                        return
                    data += chunk
                head = data.partition(b"\r\n\r\n")[0]
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
                )
                while len(data) < len(head) + 4 + length:  # a SOAP envelope, a webhook's JSON
                    if not (chunk := conn.recv(65536)):
                        return
                    data += chunk
                self.serve(conn, data)
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
