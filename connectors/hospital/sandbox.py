"""The hospital as a sandbox service: its MLLP receiver for the hub's ORR^O02 status messages.

The hospital's HTTP-less side: `python -m cgthub.services sandbox hospital` serves the receiver
on its port until stopped (SIGTERM or Ctrl-C), ACKing each message AA as an interface engine does.
"""

from __future__ import annotations

import signal
import threading

from connectors.hospital.receiver import HospitalReceiver


def serve(host: str, port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with HospitalReceiver(host, port) as receiver:
        print(f"hospital MLLP receiver on {receiver.address}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
