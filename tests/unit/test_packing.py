"""Packed records between the worker's stages: what goes in comes out, in order, whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.packing import MAGIC, PackError, items_of, pack, unpack

items = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=60)


@given(items, st.integers(min_value=1, max_value=2_000))
def test_every_item_comes_back_in_order_and_no_record_is_larger_than_allowed(
    sent: list[tuple[bytes, bytes]], max_bytes: int
) -> None:
    records = list(pack(sent, max_bytes))
    assert [item for record in records for item in unpack(record)] == sent
    for record in records:
        # Only a record holding one item that is alone too large may exceed the limit.
        assert len(record) <= max_bytes or len(unpack(record)) == 1
    assert (records == []) == (sent == [])


def test_a_batch_fits_in_one_record_when_it_can() -> None:
    sent = [(b"u-%d" % n, b'{"n": %d}' % n) for n in range(100)]
    [record] = pack(sent)
    assert unpack(record) == sent


def test_an_unpacked_record_is_read_as_one_item_under_its_own_key() -> None:
    assert items_of(b"device:d-1", b'{"kind": "link"}') == [(b"device:d-1", b'{"kind": "link"}')]
    assert items_of(None, b"{}") == [(b"", b"{}")]


@pytest.mark.parametrize("cut", [1, 3, 5, 9, 12])
def test_a_record_cut_short_is_refused_naming_the_problem(cut: int) -> None:
    [record] = pack([(b"key", b"value-bytes")])
    with pytest.raises(PackError, match="packed record ends inside"):
        items_of(None, record[: len(record) - cut])


def test_a_pack_is_never_mistaken_for_a_json_document() -> None:
    assert not MAGIC.startswith((b"{", b"[", b" "))
