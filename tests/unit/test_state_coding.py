"""Fact ids as the conflicts state keys them (migration 0021): a key of 16 bytes for every
id, the id itself kept only when it is not its own key, and the id read back whole."""

from __future__ import annotations

import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from concord.conflicts.state_coding import fact_id_of, fact_key

HEX32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


@given(HEX32)
def test_an_id_of_32_hex_digits_is_its_own_key(fact_id: str) -> None:
    assert fact_key(fact_id) == (fact_id, None)
    assert fact_id_of(uuid.UUID(hex=fact_id), None) == fact_id


@given(st.text(min_size=1).filter(lambda s: re.fullmatch("[0-9a-f]{32}", s) is None))
def test_any_other_id_is_kept_whole_under_a_derived_key(fact_id: str) -> None:
    key, name = fact_key(fact_id)
    assert name == fact_id
    assert uuid.UUID(hex=key).hex == key
    assert fact_id_of(uuid.UUID(hex=key), name) == fact_id


def test_ids_that_differ_only_in_case_or_length_get_different_keys() -> None:
    upper = "ABCDEF0123456789ABCDEF0123456789"
    ids = [upper, upper.lower(), upper[:31], f"merged-{upper.lower()}", upper.lower() + "0"]
    keys = [fact_key(i)[0] for i in ids]
    assert len(set(keys)) == len(ids)
    assert fact_key(upper)[1] == upper  # upper-case hex is not a key: the id is kept
