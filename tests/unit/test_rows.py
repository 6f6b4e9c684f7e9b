"""Stored rows: what is shrunk expands to the same JSON, old plain rows still read, and a
damaged row is refused with a reason."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.features.state import UserState
from app.rows import DICTIONARY_V1, RowError, expand, shrink

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
def test_a_shrunk_row_expands_to_exactly_its_document(value: object) -> None:
    document = orjson.dumps(value)
    assert expand(shrink(document)) == document


def test_rows_written_as_plain_json_are_still_read() -> None:
    state = UserState(events=3, spend=12.5, profile={"country": "DE"})
    assert UserState.from_bytes(orjson.dumps(state)) == state
    assert UserState.from_bytes(state.to_bytes()) == state


def test_a_fresh_users_row_is_stored_in_a_fraction_of_its_json() -> None:
    state = UserState(events=1, first_ts=1767225600000, last_ts=1767225600000)
    assert len(state.to_bytes()) * 4 < len(orjson.dumps(state))


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (b"\x01garbage", "does not inflate"),
        (shrink(b'{"events": 1}')[:-2], "cut short"),
        (b"\x07abc", "unknown format"),
    ],
)
def test_a_damaged_row_is_refused_naming_the_problem(stored: bytes, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        expand(stored)


def test_the_version_1_dictionary_never_changes() -> None:
    # Rows written with it live in compacted changelogs as long as their users do:
    # a different dictionary needs a new version byte, not an edit.
    digest = hashlib.sha256(DICTIONARY_V1).hexdigest()
    assert digest == "c1603038acab388878192ea81783bd6f7c34e042d9ce31289e1b1d87a860ae05"
