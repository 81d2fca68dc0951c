"""The pseudonym is the standard HMAC-SHA256 (RFC 2104), however it is computed."""

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from cgthub.pseudonym import is_pseudonym, pseudonymize


@given(key=st.binary(max_size=130), value=st.text(min_size=1, max_size=40), kind=st.sampled_from(["mrn", "visit"]))
def test_pseudonym_is_hmac_sha256_of_kind_and_normalized_value(key, value, kind):
    expected = hmac.new(key, f"{kind}\x1f{value.strip().upper()}".encode(), hashlib.sha256).hexdigest()[:32]
    token = pseudonymize(kind, value, key=key)
    if value.startswith("psn:") and is_pseudonym(value):
        assert token == value
    else:
        assert token == f"psn:{kind}:{expected}"


def test_a_token_is_not_pseudonymized_twice_and_keys_give_different_tokens():
    token = pseudonymize("mrn", "MRN0001", key=b"a" * 32)
    assert pseudonymize("mrn", token, key=b"b" * 32) == token
    assert pseudonymize("mrn", "MRN0001", key=b"b" * 32) != token
    assert pseudonymize("mrn", " mrn0001 ", key=b"a" * 32) == token
