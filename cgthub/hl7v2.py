"""A fast HL7 v2 reader: segments, fields, repetitions, components, terser-style paths.

hl7apy parses a whole message into objects, which is right for building and validating messages
but too slow for an ingest path. This reader splits only what is asked for: a message is split into segments
once, a segment into fields on first access, and a field into repetitions/components on demand.

Paths follow HL7's (and HAPI terser's) numbering: `PID-3(2).1.2` is segment PID, field 3,
repetition 2, component 1, subcomponent 2; repetitions and components count from 1, and a path
without a component reads the first one, as the terser does. In MSH,
MSH-1 is the field separator itself and MSH-2 the encoding characters. `OBX(2)-5` is the
second OBX segment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from cgthub.errors import CgthubError

_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\((\d+)\))?-(\d+)(?:\((\d+)\))?(?:\.(\d+))?(?:\.(\d+))?$")


class HL7ParseError(CgthubError, ValueError):
    """The bytes are not an HL7 v2 message this reader can take apart; the message says why."""


@dataclass(frozen=True)
class Path:
    segment: str
    segment_rep: int
    field: int
    repetition: int
    component: int | None
    subcomponent: int | None


@lru_cache(maxsize=4096)
def parse_path(path: str) -> Path:
    match = _PATH.match(path.strip())
    if not match:
        raise ValueError(f"{path!r} is not an HL7 path like 'PID-3(2).1' or 'OBX(2)-5'")
    seg, seg_rep, field, rep, comp, sub = match.groups()
    return Path(
        seg, int(seg_rep or 1), int(field), int(rep or 1), int(comp) if comp else None, int(sub) if sub else None
    )


class Segment:
    __slots__ = ("_fields", "_raw", "name", "seps")

    def __init__(self, raw: str, seps: Separators) -> None:
        self._raw = raw
        self.name = raw[:3]
        self.seps = seps
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        """Field values as raw strings, indexed by HL7 field number (index 0 is the segment name)."""
        if self._fields is None:
            parts = self._raw.split(self.seps.field)
            if self.name == "MSH":
                # MSH-1 is the separator itself: shift so MSH-n sits at index n.
                parts = ["MSH", self.seps.field, *parts[1:]]
            self._fields = parts
        return self._fields

    def field(self, number: int) -> str:
        fields = self.fields
        return fields[number] if number < len(fields) else ""

    def get(self, field: int, repetition: int = 1, component: int | None = None, sub: int | None = None) -> str:
        """Like HAPI's terser: a path without a component reads component 1 (and subcomponent 1)."""
        fields = self._fields if self._fields is not None else self.fields
        if field >= len(fields):
            return ""
        value = fields[field]
        if not value or (field < 3 and self.name == "MSH"):
            return value
        seps = self.seps
        # The reference read (the generated mappings and the MSH header use `read_code`'s own).
        for sep, n in (
            (seps.repetition, repetition),
            (seps.component, 1 if component is None else component),
            (seps.subcomponent, 1 if sub is None else sub),
        ):
            value = _nth(value, sep, n)
        return seps.unescape(value) if seps.escape in value else value

    def repetitions(self, field: int) -> list[str]:
        raw = self.field(field)
        return raw.split(self.seps.repetition) if raw else []

    def __repr__(self) -> str:
        return f"Segment({self.name})"


def _nth(value: str, sep: str, n: int) -> str:
    if n == 1:
        cut = value.find(sep)
        return value if cut < 0 else value[:cut]
    parts = value.split(sep)
    return parts[n - 1] if n <= len(parts) else ""


def separator_code(seps: str) -> list[str]:
    """Statements binding the names `read_code` reads the separators by, from the `Separators`
    expression `seps`: `sp` (for unescape), and `rs`, `cs`, `ss`, `es`, the repetition, component,
    subcomponent and escape characters (locals: one lookup per message, not per value)."""
    return [f"sp = {seps}", "rs, cs, ss, es = sp.repetition, sp.component, sp.subcomponent, sp.escape"]


def read_code(path: Path, fields: str = "f", count: str = "n") -> list[str]:
    """Statements setting `v` to what `Segment.get` returns for `path`, written out for that path:
    index the segment's fields (`fields`, `count` long: () for an absent segment), cut the levels
    the path names, then the first of those it leaves (one `in` test each where there is nothing to
    cut, the usual case), and unescape only where the escape character is. Generated mapping code
    writes them out and `reader` compiles them, so both read as one; `separator_code` binds the
    names they use."""
    number = path.field
    lines = [f'v = {fields}[{number}] if {number} < {count} else ""']
    if path.segment == "MSH" and number < 3:
        return lines  # MSH-1 and MSH-2 are the separators themselves: read as they are
    levels = [
        ("rs", path.repetition),
        ("cs", 1 if path.component is None else path.component),
        ("ss", 1 if path.subcomponent is None else path.subcomponent),
    ]
    named = max((i + 1 for i, (_sep, n) in enumerate(levels) if n != 1), default=0)
    for sep, n in levels[:named]:
        if n == 1:
            lines.append(f"v = v.partition({sep})[0]")
        else:  # for a 0, n - 1 is -1: the last, as `_nth` reads it
            lines += [f"v = v.split({sep})", f'v = v[{n - 1}] if len(v) > {n - 1} else ""']
    rest = [sep for sep, _n in levels[named:]]
    if rest:
        lines.append(f"if {' or '.join(f'{sep} in v' for sep in rest)}:")
        lines.append(f"    v = v{''.join(f'.partition({sep})[0]' for sep in rest)}")
    return [*lines, "if es in v:", "    v = sp.unescape(v)"]


def reader(paths: tuple[str, ...], result: Callable[..., Any]) -> Callable[[list[str], Separators], Any]:
    """One function reading `paths` (all in one segment) from that segment's fields and the
    message's separators, compiled from `read_code`: it returns `result(*values)`."""
    body = ["n = len(f)", *separator_code("sp")[1:]]
    for index, path in enumerate(paths):
        body += [*read_code(parse_path(path)), f"h{index} = v"]
    values = ", ".join(f"h{index}" for index in range(len(paths)))
    source = "def read(f, sp):\n" + "".join(f"    {line}\n" for line in body) + f"    return _result({values})\n"
    namespace: dict[str, Any] = {"_result": result}
    exec(compile(source, f"<hl7v2 reader of {', '.join(paths)}>", "exec"), namespace)  # noqa: S102 - our text
    function: Callable[[list[str], Separators], Any] = namespace["read"]
    return function


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, value: str) -> str:
        """HL7 escape sequences: \\F\\ \\S\\ \\R\\ \\E\\ \\T\\ and hex \\Xhh\\; others are dropped."""
        esc = self.escape
        out: list[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            if ch != esc:
                out.append(ch)
                i += 1
                continue
            end = value.find(esc, i + 1)
            if end < 0:
                out.append(value[i:])
                break
            code = value[i + 1 : end]
            if code == "F":
                out.append(self.field)
            elif code == "S":
                out.append(self.component)
            elif code == "R":
                out.append(self.repetition)
            elif code == "E":
                out.append(esc)
            elif code == "T":
                out.append(self.subcomponent)
            elif code.startswith("X") and len(code) > 1:
                try:
                    out.append(bytes.fromhex(code[1:]).decode("latin-1"))
                except ValueError:
                    pass
            i = end + 1
        return "".join(out)


_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


class Header(NamedTuple):
    """What the ingest path reads of every message's MSH (its kind, dedupe key and ACK), cut from
    the segment's fields in one call, where a path read per value looked the path and the segment
    up and cut the field again each time."""

    kind: str  # MSH-9.1
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4.1
    version: str  # MSH-12.1

    @property
    def message_type(self) -> str:
        """MSH-9 as TYPE^TRIGGER, e.g. 'ORM^O01' (the message structure component is left out)."""
        return f"{self.kind}^{self.trigger}" if self.trigger else self.kind


_read_header = reader(("MSH-9.1", "MSH-9.2", "MSH-10", "MSH-4.1", "MSH-12.1"), Header)


class Message:
    """One HL7 v2 message. Construct with `parse(text)`."""

    __slots__ = ("_by_name", "_header", "segments", "seps")

    def __init__(self, segments: list[Segment], seps: Separators) -> None:
        self.segments = segments
        self.seps = seps
        self._by_name: dict[str, list[Segment]] | None = None
        self._header: Header | None = None

    def all(self, name: str) -> list[Segment]:
        if self._by_name is None:
            index: dict[str, list[Segment]] = {}
            for segment in self.segments:
                index.setdefault(segment.name, []).append(segment)
            self._by_name = index
        return self._by_name.get(name, [])

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self.all(name)
        return found[occurrence - 1] if occurrence <= len(found) else None

    def get(self, path: str) -> str:
        """The value at a terser-style path, or "" when the segment or field is absent."""
        p = parse_path(path)
        segment = self.segment(p.segment, p.segment_rep)
        if segment is None:
            return ""
        return segment.get(p.field, p.repetition, p.component, p.subcomponent)

    def groups(self, leader: str, members: tuple[str, ...] = ()) -> Iterator[list[Segment]]:
        """Segment groups that start at each `leader` (e.g. ORC) and hold the following `members`."""
        current: list[Segment] | None = None
        for segment in self.segments:
            if segment.name == leader:
                if current:
                    yield current
                current = [segment]
            elif current is not None and (not members or segment.name in members):
                current.append(segment)
            elif current is not None and members:
                yield current
                current = None
        if current:
            yield current

    # MSH helpers -------------------------------------------------------------------------------
    @property
    def msh(self) -> Segment | None:
        """The (first) MSH segment: the first segment, as `parse` makes sure, without the index."""
        segments = self.segments
        return segments[0] if segments and segments[0].name == "MSH" else self.segment("MSH")

    @property
    def header(self) -> Header:
        """The MSH fields every ingest reads, read once (all "" in a message without MSH)."""
        if self._header is None:
            msh = self.msh
            self._header = _read_header(msh.fields if msh is not None else [], self.seps)
        return self._header

    @property
    def message_type(self) -> str:
        """MSH-9 as TYPE^TRIGGER, e.g. 'ORM^O01' (the message structure component is left out)."""
        return self.header.message_type

    @property
    def control_id(self) -> str:
        return self.header.control_id

    @property
    def sending_facility(self) -> str:
        return self.header.sending_facility

    @property
    def sending_application(self) -> str:
        return self.get("MSH-3.1")

    @property
    def version(self) -> str:
        return self.header.version

    @property
    def charset(self) -> str:
        return self.get("MSH-18")


def decode(data: bytes) -> str:
    """Bytes to text honouring MSH-18 where given (ASCII, 8859/1, UNICODE UTF-8), else UTF-8.

    Undecodable bytes raise HL7ParseError instead of being silently replaced.
    """
    head = data[:512]
    encoding = "utf-8"
    if head.startswith(b"MSH") and len(head) > 3:
        sep = head[3:4]
        fields = head.split(b"\r", 1)[0].split(b"\n", 1)[0].split(sep)
        if len(fields) > 17:
            declared = fields[17].split(b"~", 1)[0].strip().upper()
            encoding = _CHARSETS.get(declared, encoding)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise HL7ParseError(
            f"bytes {exc.start}-{exc.end} are not valid {encoding} (MSH-18 says {encoding!r}); "
            "send UTF-8 or declare the character set in MSH-18"
        ) from exc


_CHARSETS = {
    b"ASCII": "ascii",
    b"8859/1": "latin-1",
    b"8859/15": "iso8859-15",
    b"UNICODE UTF-8": "utf-8",
    b"UTF-8": "utf-8",
}


@lru_cache(maxsize=64)
def _separators(chars: str) -> Separators:
    """MSH-1 and MSH-2 checked and made into Separators once per distinct five, not per message
    (a frozen dataclass costs more to make than the rest of the MSH checks). A refusal is not cached."""
    field_sep, encoding = chars[0], chars[1:]
    if field_sep.isalnum() or len(set(chars)) != 5 or any(c.isalnum() for c in encoding):
        raise HL7ParseError(
            f"MSH-1/MSH-2 encoding characters {chars!r} are not five distinct separators (expected '|^~\\&')"
        )
    return Separators(field_sep, encoding[0], encoding[1], encoding[2], encoding[3])


def parse(message: str | bytes) -> Message:
    """Split a message into segments; fields are split lazily. Raises HL7ParseError."""
    text = decode(message) if isinstance(message, bytes) else message
    text = text.strip("\x0b\x1c\r\n ")
    if not text.startswith("MSH"):
        raise HL7ParseError("message does not start with an MSH segment")
    if len(text) < 8:
        raise HL7ParseError("MSH segment is too short to carry its separators")
    seps = _separators(text[3:8])
    # Without a \n, the regex's only separator is \r: a str.split, a sixth of the regex's time.
    raws = _SEGMENT_SPLIT.split(text) if "\n" in text else text.split("\r")
    segments = [Segment(raw, seps) for raw in raws if raw.strip()]
    for segment in segments:
        if len(segment.name) != 3 or not segment.name.isalnum() or segment.name[0].isdigit():
            raise HL7ParseError(f"{segment.name[:10]!r} is not a segment name")
    return Message(segments, seps)
