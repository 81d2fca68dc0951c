import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cgthub.hl7v2 import _SEGMENT_SPLIT, HL7ParseError, Message, Segment, Separators, parse, reader

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


# The written-out reads (`read_code`, which generated mapping code and `Message.header` run) against
# `Segment.get`, on fields built from separators, escapes and empty parts, for every path shape.
SEPARATOR_SETS = ["|^~\\&", "#$*!@"]  # MSH-1 and MSH-2: field, component, repetition, escape, subcomponent
PATHS = st.builds(
    lambda segment, field, rep, comp, sub: f"{segment}-{field}{rep}{comp}{sub}",
    st.sampled_from(["MSH", "PID", "ZZZ"]),  # ZZZ: a segment the message lacks
    st.integers(0, 9),
    st.sampled_from(["", "(1)", "(2)", "(3)", "(0)"]),
    st.sampled_from(["", ".1", ".2", ".3", ".0"]),
    st.sampled_from(["", ".1", ".2", ".0"]),
)
TEXT = st.sampled_from(["", "A", "b2", "\\F\\", "\\S\\", "x\\T\\y", "\\X41\\", "\\E\\", "\\Q\\", "\\", "é"])
# fields > repetitions > components > subcomponents
PARTS = st.lists(st.lists(st.lists(st.lists(TEXT, max_size=3), max_size=3), max_size=3), max_size=8)


def _message(chars: str, parts: list[list[list[list[str]]]]) -> str:
    """An MSH and a PID whose fields (MSH-3 on, PID-1 on) are `parts`, escapes in `chars`' own."""
    field, comp, rep, esc, sub = chars
    fields = [rep.join(comp.join(sub.join(s).replace("\\", esc) for s in c) for c in r) for r in parts]
    body = field.join(fields)
    return f"MSH{chars}{field}{body}\rPID{field}{body}"


SHAPES = ["PID-1(0)", "PID-1(0).0", "PID-1(2).2.2", "PID-1.3", "PID-2", "MSH-1", "MSH-2", "MSH-3(0)", "ZZZ-1"]


@settings(max_examples=400, deadline=None)
@given(chars=st.sampled_from(SEPARATOR_SETS), parts=PARTS, paths=st.lists(PATHS, min_size=1, max_size=6))
@example("|^~\\&", [[[["a", "\\T\\"], ["b"]], [["c", "d"], ["\\S\\x", "y&"]]], [[["\\E\\"]]]], SHAPES)
@example("#$*!@", [[[["a", "!F!"], ["b"]], [["c", "d"], ["e"]], [["f"]]]], SHAPES)
def test_written_out_reads_give_what_segment_get_gives(chars, parts, paths):
    msg = parse(_message(chars, parts))
    for name in ("MSH", "PID", "ZZZ"):
        mine = tuple(p for p in paths if p.startswith(name))
        if mine:
            segment = msg.segment(name)
            read = reader(mine, lambda *values: values)
            assert read(segment.fields if segment is not None else [], msg.seps) == tuple(msg.get(p) for p in mine)


@settings(max_examples=200, deadline=None)
@given(chars=st.sampled_from(SEPARATOR_SETS), parts=st.lists(PARTS.map(lambda p: p[0] if p else []), max_size=12))
def test_the_header_reads_what_its_paths_read(chars, parts):
    msg = parse(_message(chars, parts))
    header = msg.header
    assert (header.kind, header.trigger, header.control_id, header.sending_facility, header.version) == tuple(
        msg.get(p) for p in ("MSH-9.1", "MSH-9.2", "MSH-10", "MSH-4.1", "MSH-12.1")
    )
    kind, trigger = msg.get("MSH-9.1"), msg.get("MSH-9.2")
    assert msg.message_type == (f"{kind}^{trigger}" if trigger else kind)


def test_a_message_without_msh_reads_an_empty_header():
    msg = Message([Segment("PID|1", Separators())], Separators())
    assert msg.msh is None and msg.header == ("", "", "", "", "") and msg.message_type == ""


@given(st.lists(st.sampled_from(["MSH|^~\\&|A", "PID|1", "", " ", "OBX|2|x"]), min_size=1, max_size=6), st.data())
def test_segments_split_on_every_line_ending_as_the_regex_does(lines, data):
    text = "MSH|^~\\&|A"
    for line in lines:
        text += data.draw(st.sampled_from(["\r", "\n", "\r\n"])) + line
    assert [s._raw for s in parse(text).segments] == [r for r in _SEGMENT_SPLIT.split(text) if r.strip()]


def test_bad_separators_are_refused_every_time_not_once():
    for _ in range(2):
        with pytest.raises(HL7ParseError, match="five distinct separators"):
            parse(b"MSH|^~|&|A")
