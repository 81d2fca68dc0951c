import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.iso7064 import mod_37_2

from cgthub.identifiers import IdentifierError, mod37_2_check, normalize_din, validate_coi_id

DIN_BODIES = st.builds(
    lambda f, y, s: f + y + s,
    st.from_regex(r"[A-Z][0-9A-Z]{4}", fullmatch=True),
    st.from_regex(r"[0-9]{2}", fullmatch=True),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)


@given(DIN_BODIES)
def test_check_character_agrees_with_python_stdnum(body):
    assert mod37_2_check(body) == mod_37_2.calc_check_digit(body)


def test_din_with_its_check_character_is_accepted_and_body_gets_one():
    assert normalize_din("G151706123456") == "G151706123456B"
    assert normalize_din("g1517 06 123456 b") == "G151706123456B"


def test_din_with_a_wrong_check_character_is_rejected_with_the_expected_one():
    with pytest.raises(IdentifierError, match="expected 'B'"):
        normalize_din("G151706123456C")


@pytest.mark.parametrize("bad", ["", "G15170612345", "1151706123456", "G1517AB123456", "G151706123456BX"])
def test_malformed_dins_are_rejected(bad):
    with pytest.raises(IdentifierError):
        normalize_din(bad)


def test_coi_id_structure():
    assert validate_coi_id("chw123426000001") == "CHW123426000001"
    with pytest.raises(IdentifierError):
        validate_coi_id("XXW123426000001")


@pytest.mark.parametrize(
    "scanned",
    [
        "=G15170612345600",  # ISBT 128 data structure 001 as a scanner sends it: '=' + 13 + two flag digits
        "G15170612345600",  # the same without its data identifier
        "G15170612345607B",  # eye-readable: 13 + flags + the boxed check character
        " =g1517 06 123456 00 ",
    ],
)
def test_a_din_with_its_flag_characters_is_the_same_din(scanned):
    assert normalize_din(scanned) == "G151706123456B"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("=G151706123456B", "two flag digits"),  # a scanned DIN carries flags, not the check character
        ("=G15170612345600B", "two flag digits"),  # nor both
        ("=G1517061234560A", "two flag digits"),  # flags are digits
        ("G15170612345600C", "expected 'B'"),  # the check character after the flags is still checked
        ("=G15170612345700", ""),  # flags do not make a wrong body right: it is another DIN
    ],
)
def test_a_scanned_din_is_still_validated(bad, why):
    if not why:
        assert normalize_din(bad) != "G151706123456B"
        return
    with pytest.raises(IdentifierError, match=why):
        normalize_din(bad)
