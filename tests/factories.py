"""Builders for canonical events and synthetic patients used across the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from cgthub.devtools.samples import T0, coi, din, enrolment, event, happy_path

__all__ = ["MAPPED_VALUES", "PATIENTS", "T0", "coi", "din", "enrolment", "event", "happy_path"]

# Fixture PHI: must never show up in clear in the database, logs or CLI output.
PATIENTS = [
    {"name": "Smithson^Johanna", "birth_date": "19710412", "mrn": "MRN48213377"},
    {"name": "Okonkwo^Chidera", "birth_date": "19830930", "mrn": "MRN90017755"},
]


# Values a partner may put where a mapping reads (wrong types, blanks, unknown codes, malformed
# identifiers, a DST gap): the generated fast path must answer each as the reference does.
MAPPED_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            " ",
            "us",
            "DE",
            "XX",
            "OUT",
            "BACK",
            "KYM-BCMA",
            "NOPE",
            "DRAFT",
            "2026-03-02T09:00:00",
            "2026-03-08T02:30:00",
            "20260309080000",
            " 1.5 ",
            "2026-03-02T09:00:00Z",
            "20260302",
            "2026-13-40",
            "W123426000001",
            "W123426000001F",
            "W1234",
            "CHW123426000001",
            "chw123426000001",
            "psn:mrn:0123456789abcdef0123456789abcdef",
            "x" * 250,
            "1.5",
            "7",
        ]
    ),
    st.text(max_size=12),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["id", "x"]), st.integers(0, 3), max_size=2),
)
