"""Stored rows: what is shrunk expands to the same JSON, old plain rows still read, and a
damaged row is refused with a reason."""

from __future__ import annotations

import hashlib

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.features.state import UserState
from app.rows import DICTIONARY_V1, DecodedRows, RowError, expand, shrink, shrink_v1

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


@given(json_values)
def test_a_row_stored_by_version_1_still_expands_to_its_document(value: object) -> None:
    document = orjson.dumps(value)
    assert expand(shrink_v1(document)) == document


def test_rows_of_every_version_read_as_they_were_written() -> None:
    # Bytes as each version wrote them, frozen here: a library upgrade that reads them
    # differently fails this, not a restore.
    document = b'{"events":1}'
    for stored in (
        b"\x02(\xb5/\xfd \x0cE\x00\x00\x08}\x01\x00\xaf\x0c\x01\x04",
        b"\x01CJ\xab\xb5\x00",
        document,
    ):
        assert expand(stored) == document


def test_rows_written_as_plain_json_are_still_read() -> None:
    state = UserState(events=3, spend=12.5, profile={"country": "DE"})
    assert UserState.from_bytes(msgspec.json.encode(state)) == state
    assert UserState.from_bytes(state.to_bytes()) == state


def test_a_users_row_of_an_older_shape_is_still_read() -> None:
    # Rows decode straight into the records; a row that does not fit them (here a null
    # where the risk record now is, and fields added since left out) is read field by
    # field, as before.
    state = UserState(events=2, spend=3.5, recent_event_ids=("ev-1", "ev-2"))
    document = orjson.loads(msgspec.json.encode(state))
    document["risk"] = None
    del document["recent_event_digests"], document["repeats"]
    assert UserState.from_bytes(shrink(orjson.dumps(document))) == state


def test_a_fresh_users_row_is_stored_in_a_fraction_of_its_json() -> None:
    state = UserState(events=1, first_ts=1767225600000, last_ts=1767225600000)
    assert len(state.to_bytes()) * 4 < len(msgspec.json.encode(state))


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (b"\x01garbage", "does not inflate"),
        (shrink_v1(b'{"events": 1}')[:-2], "cut short"),
        (b"\x02garbage", "does not decompress"),
        (shrink(b'{"events": 1}')[:-2], "does not decompress"),
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


def counting_decoder() -> tuple[list[bytes | None], DecodedRows[str], dict[bytes, bytes | None]]:
    decoded: list[bytes | None] = []

    def decode(raw: bytes | None) -> str:
        decoded.append(raw)
        return "none" if raw is None else raw.decode()

    table: dict[bytes, bytes | None] = {}
    return decoded, DecodedRows(table, decode, 2), table


def test_a_row_is_decoded_again_only_once_it_is_another_bytes_object() -> None:
    decoded, rows, table = counting_decoder()
    table[b"a"] = b"one"
    assert rows.get(b"a") == "one"
    assert rows.get(b"a") == "one"
    assert decoded == [b"one"]
    table[b"a"] = bytes(bytearray(b"one"))  # equal bytes, a new row: decoded again
    assert rows.get(b"a") == "one"
    assert len(decoded) == 2
    del table[b"a"]
    assert rows.get(b"a") == "none"


def test_a_value_kept_at_a_write_is_reused_and_the_oldest_goes_first() -> None:
    decoded, rows, table = counting_decoder()
    for key in (b"a", b"b", b"c"):
        stored = table[key] = key * 2
        rows.keep(key, stored, key.decode())
    assert list(rows.values) == [b"b", b"c"]  # two kept: a went
    assert rows.get(b"c") == "c"
    assert decoded == []
    assert rows.get(b"a") == "aa"
    assert decoded == [b"aa"]


def test_forget_and_drop_stale_leave_no_decoded_copy_behind() -> None:
    _, rows, table = counting_decoder()
    table[b"a"], table[b"b"] = b"x", b"y"
    rows.get(b"a"), rows.get(b"b")
    rows.forget(b"a")
    assert list(rows.values) == [b"b"]
    del table[b"b"]  # gone from the table (a time to live, a restore)
    assert rows.drop_stale() == 1
    assert rows.values == {}
