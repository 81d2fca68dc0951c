"""The hospital's MLLP receiver for the hub's outbound status messages: ACKs each one (AA), keeps
what it received, and can be told to answer AE to test the hub's retries."""

from __future__ import annotations

import socket
import threading

from cgthub.hl7.ack import build_ack
from cgthub.hl7.mllp import FrameDecoder, frame


class HospitalReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, refuse_first: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.received: list[bytes] = []
        self.refuse_first = refuse_first
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = False

    def start(self) -> HospitalReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

    def __enter__(self) -> HospitalReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"mllp://{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            with conn:
                decoder = FrameDecoder()
                while block := conn.recv(65536):
                    for message in decoder.feed(block):
                        if not isinstance(message, bytes):
                            continue
                        if self.refuse_first > 0:
                            self.refuse_first -= 1
                            conn.sendall(frame(build_ack(message, "AE", "system busy, resend")))
                            continue
                        self.received.append(message)
                        conn.sendall(frame(build_ack(message, "AA")))
