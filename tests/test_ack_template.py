"""ACKs built from a per-sender template (cgthub.hl7.ack): each sender's ACK still echoes its own
MSH, whichever sender came before, and the templates a varying sender makes stay bounded."""

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from cgthub import hl7v2
from cgthub.errors import Rejection
from cgthub.hl7 import ack
from cgthub.hl7.inbound import read


def _message(app: str, facility: str, trigger: str, control: str, version: str = "2.5.1") -> bytes:
    return (
        f"MSH|^~\\&|{app}|{facility}|CGTHUB|HUB|20260303112000||ORM^{trigger}|{control}|P|{version}\rPID|1\r".encode()
    )


def _fields(answer: bytes) -> tuple[list[str], list[str]]:
    msh, msa = answer.decode().split("\r")[:2]
    return msh.split("|"), msa.split("|")


def test_interleaved_senders_are_each_answered_with_their_own_msh():
    sent = [
        _message("EPIC", "US-BOS-01", "O01", "A1"),
        _message("CERNER", "DE-MUC-01", "O01", "B1", version="2.3"),
        _message("EPIC", "US-BOS-01", "O01", "A2"),
        _message("EPIC", "US-BOS-02", "O01", "C1"),  # the same application, another facility
        _message("CERNER", "DE-MUC-01", "O02", "B2", version="2.3"),  # the same sender, another trigger
    ]
    answers = [ack.answer(m, None, header=read(m).header) for m in sent]
    expected = [
        ("EPIC|US-BOS-01", "O01", "2.5.1", "A1"),
        ("CERNER|DE-MUC-01", "O01", "2.3", "B1"),
        ("EPIC|US-BOS-01", "O01", "2.5.1", "A2"),
        ("EPIC|US-BOS-02", "O01", "2.5.1", "C1"),
        ("CERNER|DE-MUC-01", "O02", "2.3", "B2"),
    ]
    for answer, (receiver, trigger, version, control) in zip(answers, expected, strict=True):
        msh, msa = _fields(answer)
        assert "|".join(msh[2:6]) == f"CGTHUB|HUB|{receiver}"
        assert msh[8] == f"ACK^{trigger}^ACK" and msh[11] == version
        assert msa == ["MSA", "AA", control]
    # Each ACK's own control id (MSH-10) is new, though its sender's template is reused.
    assert len({_fields(a)[0][9] for a in answers}) == len(answers)


def test_a_template_still_validates_and_carries_the_error():
    message = _message("EPIC", "US-BOS-01", "O01", "ORM1")
    answer = ack.answer(message, Rejection.ROUTE, "site ^ unknown", header=read(message).header)
    parsed = parse_message(answer.decode(), find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.validate()
    assert parsed.msa.msa_1.value == "AE" and parsed.msa.msa_2.value == "ORM1"
    assert parsed.err.err_8.value == "site \\S\\ unknown"
    # Built from the header read on arrival or by parsing the original again: the same ACK.
    again = ack.answer(message, Rejection.ROUTE, "site ^ unknown")
    # MSH-7 is the clock at each build and may cross a second between the two: compared by shape.
    first, second = _fields(answer)[0], _fields(again)[0]
    assert second[:6] + second[7:9] == first[:6] + first[7:9] and _fields(again)[1] == _fields(answer)[1]
    assert len(first[6]) == len(second[6]) == 14 and first[6].isdigit() and second[6].isdigit()


def test_a_sender_varying_its_msh_cannot_grow_the_templates_past_their_bound():
    for n in range(ack._TEMPLATES_BOUND + 50):
        message = _message("APP", f"FAC{n}", "O01", f"C{n}")
        msh, msa = _fields(ack.answer(message, None, header=ack.AckHeader.of(hl7v2.parse(message))))
        assert msh[5] == f"FAC{n}" and msa[2] == f"C{n}"
        assert len(ack._TEMPLATES) <= ack._TEMPLATES_BOUND


def test_an_oversized_msh_is_answered_bounded_and_not_kept():
    huge = "F" * 100_000
    message = _message("APP", huge, "O01", "BIG1")
    before = dict(ack._TEMPLATES)
    msh, msa = _fields(ack.answer(message, None, header=read(message).header))
    assert msh[5] == "F" * 227 and msa == ["MSA", "AA", "BIG1"]
    assert ack._TEMPLATES == before  # made for this ACK alone: no key holds the 100,000 characters
