"""The quick paths of the hot transforms give exactly what the general code gives.

The `datetime` transform parses the common shapes as UTC and subtracts the zone's offset; the
general parser attaches the zone and converts. Both are compared on the days the clocks change
(ambiguous and non-existent local times included), on near-miss strings, and at the calendar's edges.
The DIN check looks each position up in a table where a regex and a loop were; both are compared
on valid, mistyped and arbitrary strings.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cgthub.identifiers import _ALPHABET, IdentifierError, mod37_2_check, normalize_din
from cgthub.mapping.transforms import compile_transform, datetime_transform, parse_datetime

ZONES = [ZoneInfo(name) for name in ("America/New_York", "Europe/Berlin", "UTC", "Asia/Kolkata", "Australia/Lord_Howe")]
# Local dates on which the clocks change (spring forward and fall back), in New York and Berlin.
TRANSITION_DAYS = [
    datetime(2021, 3, 14),
    datetime(2021, 11, 7),
    datetime(2025, 3, 9),
    datetime(2025, 11, 2),
    datetime(2026, 3, 8),
    datetime(2026, 11, 1),
    datetime(2021, 3, 28),
    datetime(2021, 10, 31),
    datetime(2025, 3, 30),
    datetime(2025, 10, 26),
    datetime(2026, 3, 29),
    datetime(2026, 10, 25),
]


def _outcome(function: Any, value: Any) -> Any:
    try:
        result = function(value)
    except Exception as exc:  # the same error, in the same words
        return ("error", type(exc), str(exc))
    return (result, repr(result), result.tzinfo, result.fold, result.utcoffset())


def _same(value: Any, tz: ZoneInfo) -> None:
    assert _outcome(datetime_transform(tz), value) == _outcome(lambda v: parse_datetime(v, tz), value)


@settings(max_examples=3000, deadline=None)
@given(
    day=st.sampled_from(TRANSITION_DAYS),
    seconds=st.integers(-3600, 26 * 3600),
    tz=st.sampled_from(ZONES[:2]),
    hl7=st.booleans(),
    separator=st.sampled_from("T "),
)
@example(day=datetime(2026, 3, 8), seconds=2 * 3600 + 1800, tz=ZONES[0], hl7=False, separator="T")  # in the gap
@example(day=datetime(2026, 11, 1), seconds=3600 + 1800, tz=ZONES[0], hl7=False, separator="T")  # in the fold
@example(day=datetime(2026, 3, 29), seconds=2 * 3600 + 1800, tz=ZONES[1], hl7=True, separator="T")
@example(day=datetime(2026, 10, 25), seconds=2 * 3600 + 1800, tz=ZONES[1], hl7=True, separator="T")
def test_local_times_around_clock_changes_convert_as_the_general_parser_does(day, seconds, tz, hl7, separator):
    local = day + timedelta(seconds=seconds)
    text = local.strftime("%Y%m%d%H%M%S") if hl7 else local.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    _same(text, tz)


@settings(max_examples=2000, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    tz=st.sampled_from(ZONES),
)
@example(moment=datetime(1, 1, 1), tz=ZONES[1])  # converting to UTC leaves the calendar
@example(moment=datetime(9999, 12, 31, 23, 59, 59), tz=ZONES[0])
def test_any_local_time_in_either_shape_converts_as_the_general_parser_does(moment, tz):
    moment = moment.replace(microsecond=0)
    _same(moment.strftime("%Y%m%d%H%M%S").rjust(14, "0"), tz)
    _same(f"{moment.year:04d}-{moment.strftime('%m-%dT%H:%M:%S')}", tz)


NEAR_MISSES = st.text(alphabet="0123456789-T:Z+ .,\n٣²", min_size=12, max_size=20)


@settings(max_examples=3000, deadline=None)
@given(text=NEAR_MISSES, tz=st.sampled_from(ZONES))
@example(text="2026-03-02T09:00:0Z", tz=ZONES[0])
@example(text="2026-03-02T09:00:00", tz=ZONES[0])
@example(text=" 2026-03-02T09:00:00", tz=ZONES[0])
@example(text="2026-03-02T09+05:00", tz=ZONES[0])
@example(text="2026-03-02T24:00:00", tz=ZONES[0])
@example(text="2026-03-02T09:00:60", tz=ZONES[0])
@example(text="20260302090060", tz=ZONES[0])
@example(text="2026-03-02 09:00Z0", tz=ZONES[0])
def test_strings_near_the_quick_shapes_get_the_general_outcome(text, tz):
    _same(text, tz)
    chars = list(text.ljust(19, "0")[:19])
    for index, char in ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":")):
        chars[index] = char  # the quick shape's separators, whatever the digits are
    _same("".join(chars), tz)


@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.datetimes(), st.datetimes(timezones=st.just(UTC))))
def test_other_values_take_the_general_parser(value):
    _same(value, ZONES[0])


def test_the_compiled_transform_is_the_quick_one_and_gives_aware_utc():
    transform = compile_transform("datetime", ZONES[0])
    assert transform("2026-03-08T03:30:00") == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert transform("2026-11-01T01:30:00") == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # fold 0: EDT
    assert transform("20260308023000") == parse_datetime("20260308023000", ZONES[0])  # gap
    assert transform("2026-03-02T09:00:00").tzinfo is UTC


def test_the_quick_shapes_do_not_reach_the_general_parser(monkeypatch):
    from cgthub.mapping import transforms

    transform = datetime_transform(ZONES[1])
    monkeypatch.setattr(transforms, "parse_datetime", lambda *_: (_ for _ in ()).throw(AssertionError("general")))
    assert transform("2026-03-29T03:30:00") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert transform("2026-03-29 03:30:00") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert transform("20261025023000") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # fold 0: CEST


# The DIN check as it was (regex, then the Mod 37-2 loop), which the lookups must agree with.
_REFERENCE_DIN_BODY = re.compile(r"^[A-Z][0-9A-Z]{4}[0-9]{2}[0-9]{6}$")


def _reference_normalize_din(value: str) -> str:
    din = value.strip().upper().replace(" ", "")
    # ISBT 128 data structure 001 as scanned ('=' + 13 + two flag digits) or printed (13 + flags + check)
    scanned = din.startswith("=")
    din = din[1:] if scanned else din
    if re.fullmatch(r".{13}[0-9]{2}", din) or (not scanned and re.fullmatch(r".{13}[0-9]{2}.", din)):
        din = din[:13] + din[15:]
    elif scanned:
        raise IdentifierError("a scanned DIN is '=' + facility id (5) + year (2) + sequence (6) + two flag digits")
    body, check = (din[:13], din[13:]) if len(din) == 14 else (din, "")
    if not _REFERENCE_DIN_BODY.match(body):
        raise IdentifierError(
            "DIN must be facility id (5) + year (2) + sequence (6), optionally followed by its check character"
        )
    total = 0
    for ch in body:
        total = ((total + _ALPHABET.index(ch)) * 2) % 37
    expected = _ALPHABET[(38 - total) % 37]
    if check and check != expected:
        raise IdentifierError(f"DIN check character is {check!r}, expected {expected!r}")
    return body + expected


def _din_outcome(function: Any, value: str) -> Any:
    try:
        return function(value)
    except Exception as exc:
        return ("error", type(exc), str(exc))


_LETTERS = string.ascii_uppercase
_DIN_BODIES = st.builds(
    lambda *parts: "".join(parts),
    st.sampled_from(_LETTERS),
    st.text(alphabet=string.digits + _LETTERS, min_size=4, max_size=4),
    st.text(alphabet=string.digits, min_size=8, max_size=8),
)
_DIN_LIKE = st.one_of(
    _DIN_BODIES,
    st.builds(lambda body, check: body + check, _DIN_BODIES, st.sampled_from(_ALPHABET + "a*/ ")),
    st.builds(lambda body, flags: "=" + body + flags, _DIN_BODIES, st.text(alphabet=string.digits + "A=", max_size=3)),
    st.builds(
        lambda body, flags, check: body + flags + check,
        _DIN_BODIES,
        st.text(string.digits, min_size=2, max_size=2),
        st.sampled_from(_ALPHABET),
    ),
    st.builds(lambda body, case: body.lower() if case else f"  {body[:5]} {body[5:]} ", _DIN_BODIES, st.booleans()),
    st.text(alphabet=string.digits + _LETTERS + "az* \n\t-ßıſ٣²", max_size=16),
    st.text(max_size=16),
)


@settings(max_examples=5000, deadline=None)
@given(value=_DIN_LIKE)
@example(value="W123426000001")
@example(value="W123426000001N")
@example(value="W123426000001\n")
@example(value="w12342600000\u0661")  # an Arabic-Indic digit
@example(value="\u0131W12342600001")  # a dotless i, upper-cased to I
def test_din_normalization_matches_the_regex_and_loop_it_replaces(value):
    assert _din_outcome(normalize_din, value) == _din_outcome(_reference_normalize_din, value)
    body = value.strip().upper()[:13]
    if len(body) == 13 and _REFERENCE_DIN_BODY.match(body):
        assert mod37_2_check(body) == _reference_normalize_din(body)[-1]
