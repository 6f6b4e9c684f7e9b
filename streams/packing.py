"""Many keyed records in one Kafka record, for the topics between the worker's own stages.

Every event crosses two internal topics (``links``, ``linked``), three copies of it
in all. Sent one record each, the Kafka client's work per record (framing,
batching, futures, fetching, decoding) cost more than deciding the event. So the
worker packs everything a batch sends to one partition of an internal topic into
as few records as fit in :data:`PACK_MAX_BYTES`, and the next stage unpacks them
in order. Keys keep their meaning: the partition of a pack is the one Kafka's
default partitioner gives each key inside it.

Layout (big-endian): the 4 bytes of :data:`MAGIC`, then per item a 4-byte key
length, the key, a 4-byte value length, the value. A record that does not start
with the magic is an unpacked record (as written before packing existed), read
as one item under its own key.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

# Cannot begin a JSON document, so old unpacked records are told apart.
MAGIC = b"\x00RSP"
# Under Kafka's default 1 MiB record limit with room to spare; one item larger than
# this goes alone in its record.
PACK_MAX_BYTES = 256 * 1024

_LENGTH = struct.Struct(">I")
_ITEM_OVERHEAD = 2 * _LENGTH.size


class PackError(ValueError):
    """A record that starts like a pack but is not a whole one."""


def pack(items: Iterable[tuple[bytes, bytes]], max_bytes: int = PACK_MAX_BYTES) -> Iterator[bytes]:
    """The items, in order, in as few records of at most ``max_bytes`` as they fit."""
    parts: list[bytes] = [MAGIC]
    size = len(MAGIC)
    for key, value in items:
        item_size = _ITEM_OVERHEAD + len(key) + len(value)
        if len(parts) > 1 and size + item_size > max_bytes:
            yield b"".join(parts)
            parts, size = [MAGIC], len(MAGIC)
        parts += (_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value)
        size += item_size
    if len(parts) > 1:
        yield b"".join(parts)


def is_packed(value: bytes | None) -> bool:
    return value is not None and value[: len(MAGIC)] == MAGIC


def unpack(value: bytes) -> list[tuple[bytes, bytes]]:
    """The items of a packed record, in order; :class:`PackError` if it is cut short."""
    items: list[tuple[bytes, bytes]] = []
    view = memoryview(value)
    at, end = len(MAGIC), len(value)
    try:
        while at < end:
            (key_size,) = _LENGTH.unpack_from(view, at)
            at += _LENGTH.size
            key = bytes(view[at : at + key_size])
            at += key_size
            (value_size,) = _LENGTH.unpack_from(view, at)
            at += _LENGTH.size
            item = bytes(view[at : at + value_size])
            at += value_size
            if at > end:
                raise PackError(f"a packed record ends inside an item ({end} bytes)")
            items.append((key, item))
    except struct.error as error:
        raise PackError(f"a packed record ends inside a length ({end} bytes)") from error
    return items


def items_of(key: bytes | None, value: bytes | None) -> list[tuple[bytes, bytes]]:
    """The items a record of an internal topic carries: a pack's, or the record itself."""
    if is_packed(value):
        assert value is not None
        return unpack(value)
    return [(key or b"", value or b"")]
