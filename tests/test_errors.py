"""Rejection codes decide what a sender is told: over the MLLP listener on a loopback socket, the ACK
code and ERR-3 follow the code a rejection carries, whatever its reason says."""

import asyncio
import socket
import threading
from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from cgthub import pipeline, quarantine
from cgthub.errors import CgthubError, PayloadRejected, Rejection
from cgthub.hl7 import inbound
from cgthub.hl7.ack import ack_code
from cgthub.hl7.event_loop import new_listener_loop
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import FrameDecoder, frame

ORM = (Path(__file__).resolve().parent.parent / "mappings/hl7/ORM_O01/fixtures/new_apheresis.hl7").read_bytes()


class Listening:
    """A listener on its own event loop in a thread, as `cgthub hl7 listen` runs it."""

    def __init__(self, url: str) -> None:
        self.loop = new_listener_loop()  # the loop `cgthub hl7 listen` runs on (uvloop by default)
        self.listener = MllpListener("127.0.0.1", 0, database_url=url)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "Listening":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def send(self, *messages: bytes) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", self.listener.port), timeout=20) as sock:
            sock.sendall(b"".join(frame(m) for m in messages))
            decoder, answers = FrameDecoder(), []
            while len(answers) < len(messages):
                block = sock.recv(65536)
                if not block:
                    break
                answers.extend(decoder.feed(block))
        return answers


def err3(ack: bytes) -> str:
    return parse_message(ack.decode(), find_groups=False).err.err_3.err_3_1.value


def test_err3_names_what_went_wrong(db_url):
    no_msh = b"PID|1||MRN48213377^^^US-BOS-01^MR"
    unsupported = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303||MFN^M02|BOS9|P|2.5.1\rMFE|MAD|X\r"
    with Listening(db_url) as listening:
        unreadable, unknown_type, no_order = listening.send(no_msh, unsupported, ORM)
    assert [ack_code(a) for a in (unreadable, unknown_type, no_order)] == ["AR", "AR", "AE"]
    assert err3(unreadable) == "100" and err3(unknown_type) == "200" and err3(no_order) == "204"


class _Refusing:
    mapping_id, version = "hl7/ORM_O01", "1"

    def __init__(self, rejection: PayloadRejected) -> None:
        self.rejection = rejection

    def map(self, payload: bytes, **_facts: object) -> list:
        raise self.rejection


@pytest.mark.parametrize(
    ("reason", "code", "answer"),
    [
        ("no mapping is configured, said a mapping that failed", Rejection.MAPPING, ("AE", "207")),
        ("this market takes no orders of this kind", Rejection.UNSUPPORTED_TYPE, ("AR", "200")),
    ],
)
def test_the_code_not_the_wording_chooses_the_ack(db_url, monkeypatch, reason, code, answer):
    refusal = PayloadRejected(quarantine.Stage.MAP, reason, code=code)
    monkeypatch.setattr(inbound.routing, "mapper", lambda *_a, **_k: _Refusing(refusal))
    with Listening(db_url) as listening:
        (ack,) = listening.send(ORM)
    assert (ack_code(ack), err3(ack)) == answer


def test_payload_rejected_is_a_hub_error_the_pipeline_still_names():
    assert pipeline.PayloadRejected is PayloadRejected and issubclass(PayloadRejected, CgthubError)
    assert PayloadRejected(quarantine.Stage.ROUTE, "unknown site").code is Rejection.ROUTE
