"""Value transforms a mapping rule may chain: parsing times with the source's time zone, case,
numbers, splitting, prefixes, pseudonymization, ISBT 128 identifiers, market codes.

Each name compiles once (`compile_transform("split:^:1", tz)`) into a plain function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cgthub import markets
from cgthub.errors import CgthubError
from cgthub.identifiers import normalize_din, validate_coi_id
from cgthub.pseudonym import pseudonymize

Transform = Callable[[Any], Any]

_HL7_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


class TransformError(CgthubError, ValueError):
    """A value a transform cannot take; the message says what was expected, never the value."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def parse_datetime(value: Any, tz: ZoneInfo) -> datetime:
    """ISO 8601 or HL7 TS (YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ]); naive times are in the source's zone."""
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip()
        match = None if text[4:5] == "-" else _HL7_TS.match(text)  # ISO 8601 needs no rewriting
        if match:
            y, mo, d, h, mi, s, frac, offset = match.groups()
            if offset:
                text = f"{y}-{mo or '01'}-{d or '01'}T{h or '00'}:{mi or '00'}:{s or '00'}{offset[:3]}:{offset[3:]}"
            else:
                text = f"{y}-{mo or '01'}-{d or '01'}T{h or '00'}:{mi or '00'}:{s or '00'}"
            if frac:
                text = text[:19] + "." + frac.ljust(6, "0") + text[19:]
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise TransformError("expected an ISO 8601 or HL7 TS date/time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def datetime_transform(tz: ZoneInfo) -> Transform:
    """`parse_datetime` in `tz`, with a short cut for the two shapes feeds send most (ISO 8601
    `YYYY-MM-DDTHH:MM:SS`, HL7 TS to the second): `datetime.replace(tzinfo=...)` and `astimezone`
    together cost more than the parse, so the local time is parsed as if it were UTC and the zone's offset
    for it subtracted. That is `astimezone`'s own arithmetic (the zone's `utcoffset` reads only the
    wall-clock fields and `fold`, which is 0 here as for any parsed time), so DST gaps and folds come
    out as before; `tests/test_transforms_speed_equivalence.py` checks it on transition days. A value
    the short cut cannot take exactly goes through `parse_datetime` (its result or its error)."""
    # A zone has an offset for every datetime (None is only for naive tzinfo implementations).
    offset = cast(Callable[[datetime], timedelta], tz.utcoffset)
    parse = datetime.fromisoformat

    def transform(value: Any) -> Any:
        if type(value) is str:
            size = len(value)
            try:
                if size == 19 and value[10] in "T " and value[4] == "-" and value[7] == "-" and value[13] == ":":
                    moment = parse(value + "+00:00")
                    return moment - offset(moment)
                if size == 14 and value.isdigit() and value.isascii():
                    moment = parse(f"{value[:8]}T{value[8:]}+00:00")
                    return moment - offset(moment)
            except (ValueError, OverflowError):
                pass  # not exactly this shape, or at the calendar's edge: the general parser decides
        return parse_datetime(value, tz)

    return transform


def compile_transform(spec: str, tz: ZoneInfo) -> Transform:
    name, _, arg = spec.partition(":")
    if name == "datetime":
        return datetime_transform(tz)
    if name in ("upper", "lower", "strip", "str", "prefix", "suffix"):
        return _expression(name, arg)
    if name == "int":
        return _number(int)
    if name == "float":
        return _number(float)
    if name == "bool":
        return lambda v: str(v).strip().lower() in ("1", "true", "yes", "y")
    if name == "split":
        sep, _, index = arg.rpartition(":")
        if not sep or not index.lstrip("-").isdigit():
            raise ValueError(f"transform {spec!r}: write split:<separator>:<index>")
        n = int(index)
        return lambda v: _split(str(v), sep, n)
    if name == "pseudonymize":
        if not arg:
            raise ValueError("transform 'pseudonymize' needs the identifier kind, e.g. pseudonymize:mrn")
        return _expression(name, arg)
    if name == "din":
        return _identifier(normalize_din)
    if name == "coi":
        return _identifier(validate_coi_id)
    if name == "market":
        return _market
    raise ValueError(f"unknown transform {spec!r}")


# The transforms that are one expression over `v`, with `arg` the text after the name: generated
# code (`codegen`) writes them inline, where a call per value costs more than the work, and
# `compile_transform` makes its functions of the same text, so the two cannot drift apart.
INLINE: dict[str, str] = {
    "upper": "str(v).upper()",
    "lower": "str(v).lower()",
    "strip": "str(v).strip()",
    "str": "str(v)",
    "prefix": 'f"{arg}{v}"',
    "suffix": 'f"{v}{arg}"',
    "pseudonymize": "pseudonymize(arg, str(v))",
    # `_number`'s conversion (its function words the ValueError as a TransformError; generated code
    # does not tell them apart: either hands the record to the reference path).
    "int": "int(str(v).strip())",
    "float": "float(str(v).strip())",
}


def _expression(name: str, arg: str) -> Transform:
    """The function of an `INLINE` transform, compiled from its text with `arg` bound."""
    function: Transform = eval(  # noqa: S307 - our own table's text, not input
        f"lambda v: {INLINE[name]}", {"__builtins__": {"str": str}, "arg": arg, "pseudonymize": pseudonymize}
    )
    return function


def _split(value: str, sep: str, index: int) -> str:
    parts = value.split(sep)
    try:
        return parts[index]
    except IndexError as exc:
        raise TransformError(f"has no part {index} when split on {sep!r}") from exc


def _number(kind: type) -> Transform:
    def convert(value: Any) -> Any:
        try:
            return kind(str(value).strip())
        except ValueError as exc:
            raise TransformError(f"expected a{'n' if kind is int else ''} {kind.__name__}") from exc

    return convert


def _market(value: Any) -> str:
    """A market the hub serves, in capitals: one with a config/markets file. Why not `allowed: [US,
    DE]` in the mapping: the market list then lives in one place, and a new market is one file."""
    code = str(value).strip().upper()
    if _MARKET_NAME(code) is None or not _served(code):
        raise TransformError("is no market the hub serves (no config/markets/<market>.yaml)")
    return code


_MARKET_NAME = re.compile(markets.MARKET_NAME).fullmatch  # `markets.valid_name`, compiled once
# (markets folder, market) -> the folder's mtime when the market's file was found in it
_SERVED: dict[tuple[Path, str], int] = {}


def _served(code: str) -> bool:
    """Whether config/markets holds `code`'s file. A market found is remembered with its folder's
    mtime, which moves whenever a file is added, removed or renamed there: a record then costs one
    stat of the folder, where looking for the file (both spellings) cost three stats and three path
    joins, most of what a CRM enrolment's mapping took. A market not found is looked for each time,
    so a file added while the hub runs counts from the next record, as before."""
    folder = markets.markets_dir()
    try:
        stamp = os.stat(folder).st_mtime_ns
    except OSError:
        return False  # no folder, no market's file in it
    key = (folder, code)
    if _SERVED.get(key) == stamp:
        return True
    if not markets.market_path(code, folder).exists():
        return False
    if len(_SERVED) < 1024:  # markets are few; a bound all the same
        _SERVED[key] = stamp
    return True


def _identifier(check: Callable[[str], str]) -> Transform:
    """One function per identifier transform (a frame less per value than a lambda around a helper)."""

    def transform(value: Any) -> str:
        try:
            return check(str(value))
        except ValueError as exc:
            raise TransformError(str(exc)) from exc

    return transform
