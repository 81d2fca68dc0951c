import pytest

from cgthub.hl7v2 import HL7ParseError, parse

ORM = (
    "MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260302081500||ORM^O01^ORM_O01|MSG00001|P|2.5.1|||||USA|UNICODE UTF-8\r"
    "PID|1||MRN48213377^^^US-BOS-01^MR~CHW123426000001^^^COI^PN||Smithson^Johanna||19710412|F\r"
    "ORC|NW|PL-1001|FL-77||SC||||20260302081500\r"
    "OBR|1|PL-1001|FL-77|APH^Apheresis collection^L|||20260309080000\r"
    "NTE|1||note with \\F\\ and \\S\\ escaped\r"
    "ORC|NW|PL-1002\r"
    "OBR|2|PL-1002||INF^Infusion^L\r"
)


def test_terser_paths_fields_repetitions_components():
    msg = parse(ORM)
    assert msg.message_type == "ORM^O01" and msg.control_id == "MSG00001"
    assert msg.sending_facility == "US-BOS-01" and msg.version == "2.5.1" and msg.charset == "UNICODE UTF-8"
    assert msg.get("MSH-1") == "|" and msg.get("MSH-2") == "^~\\&"
    assert msg.get("PID-3") == "MRN48213377" and msg.get("PID-3(2).1") == "CHW123426000001"
    assert msg.get("PID-3(2).4") == "COI" and msg.get("PID-3(3).1") == ""
    assert msg.get("ORC-2") == "PL-1001" and msg.get("ORC(2)-2") == "PL-1002"
    assert msg.get("OBR-4.2") == "Apheresis collection" and msg.get("ZZZ-1") == "" and msg.get("PID-99") == ""
    assert msg.get("NTE-3") == "note with | and ^ escaped"


def test_groups_and_line_endings():
    for sep in ("\r", "\n", "\r\n"):
        msg = parse(ORM.replace("\r", sep))
        groups = list(msg.groups("ORC", ("OBR", "NTE")))
        assert [[s.name for s in g] for g in groups] == [["ORC", "OBR", "NTE"], ["ORC", "OBR"]]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"PID|1||X", "does not start with an MSH"),
        (b"MSH|", "too short"),
        (b"MSH|^~|&|A", "five distinct separators"),
        ("MSH|^~\\&|A|B|C|D|2026||ADT^A04|1|P|2.5\rPID|1||X||Müller".encode("latin-1"), "not valid utf-8"),
        (b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|1|P|2.5\r1PID|x", "not a segment name"),
    ],
)
def test_bad_messages_say_why(raw, reason):
    with pytest.raises(HL7ParseError, match=reason):
        parse(raw)


def test_msh18_declares_latin1():
    raw = "MSH|^~\\&|A|B|C|D|2026||ADT^A04|1|P|2.5|||||DEU|8859/1\rPID|1||X||Müller".encode("latin-1")
    assert parse(raw).get("PID-5") == "Müller"
