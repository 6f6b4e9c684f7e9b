"""How state rows are stored: JSON compressed against a fixed dictionary of their own shape.

A user's row is a JSON document of about 1 KB after one sign-up, most of it field
names and structure that every row repeats. Compressing it against a dictionary
that already holds that structure stores only what differs: the same row takes
about a sixth of its size. Rows are decoded once and encoded once per batch
(:class:`app.pipeline.OpenRows`), so the cost is paid per batch, not per event.

Format: one version byte, then the compressed document. Version 2 (written now) is
a Zstandard frame against :data:`DICTIONARY_V1` as raw content, at level 1: about
4.5 µs to store a sign-up row, against 12 µs for version 1 (raw deflate with the same
dictionary as zlib's ``zdict``, which is still read), for 20-30 more bytes
(``python -m harness.bench.rows``, docs/benchmarks.md). A row that starts with ``{``
is plain JSON (rows written before compression) and is read as it is. A dictionary can never change:
rows written with it live in compacted changelogs for as long as their users; a
better dictionary is a new version byte.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import zstandard

T = TypeVar("T")

VERSION_1 = b"\x01"
VERSION_2 = b"\x02"
# 4 KiB window: the dictionary and a whole typical row stay within reach.
_WINDOW_BITS = -12
_LEVEL = 6
_MEM_LEVEL = 8

# Version 1's dictionary: link rows, then the parts of a user row, the most common last
# (deflate codes nearer matches in fewer bits). Never edit; add a version instead.
DICTIONARY_V1 = b"".join(
    (
        b'{"accounts":[{"user_id":"u-","first_ts":17,"last_ts":17,"signup_ts":17,"ip":null}],',
        b'"referrals":[]}{"accounts":[{"user_id":"","first_ts":17,"last_ts":17,"signup_ts":',
        b'null,"ip":"10.1.1.1"}],"referrals":[{"referred":"","referrer":"","ts":17}]}',
        b'"grants":[{"ts":17,"channel":"mobile","cost":0.5,"ref":"","reward":"welcome-points"},',
        b'{"ts":17,"channel":"web","cost":1.0,"ref":"","reward":"free-shipping"}],',
        b'"pending":[{"decision_id":"d-","reward_id":"","kind":"points","ts":17,"features":',
        b"[0.6931,0.0,0.0,0.0,0.0,1.0,0.6931,1.0,0.5,0.5,0.0,0.5,0.0,0.0,0.0,0.0,0.0,0.0,",
        b'0.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0],"learn":true}],',
        b'"responses":{"points":{"offered":1,"redeemed":0,"dismissed":0},"free_shipping":',
        b'{"offered":1,"redeemed":0,"dismissed":0}},"dismissals":[],',
        b'"hold":{"decision_id":"d-","reward_id":"welcome-points","kind":"points",',
        b'"channel":"mobile","value":5.0,"cost":0.5,"ts":17,"features":[],"learn":true,',
        b'"pending":true}',
        b'{"events":1,"purchases":0,"spend":0.0,"first_ts":17,"last_ts":17,',
        b'"last_purchase_ts":null,"engagement":1.0,"channel_counts":{"mobile":1,"web":1,',
        b'"email":1,"sms":1,"store":1},"profile":{"age":30,"country":"DE"},',
        b'"personalization":null,"marketing":null,"responses":{},"rewards_granted":0,',
        b'"rewards_redeemed":0,"rewards_dismissed":0,"reward_cost":0.0,"last_reward_ts":null,',
        b'"grants":[],"dismissals":[],"suppressed_until":null,"pending":[],',
        b'"recent_event_ids":["ev-"],"recent_event_digests":[1],"risk":{"activity":{"ts":17,',
        b'"rates":[1.0,1.0,1.0,0.0,0.0,0.0,0.0],"amount_n":0,"amount_mean":0.0,',
        b'"amount_m2":0.0},"level":0.0,"level_ts":17,"vector":{},"label":null,',
        b'"cleared_until":null,"hold":null}}',
    )
)


class RowError(ValueError):
    """A stored row that is neither JSON nor a known compressed version."""


# Level 1: higher levels save a byte or two on a row and cost twice the time.
_ZSTD_LEVEL = 1
_ZSTD_DICTIONARY = zstandard.ZstdCompressionDict(
    DICTIONARY_V1, dict_type=zstandard.DICT_TYPE_RAWCONTENT
)
_ZSTD_DICTIONARY.precompute_compress(level=_ZSTD_LEVEL)
# Both are reused for every row: one-shot calls keep no state between rows.
_COMPRESS = zstandard.ZstdCompressor(
    dict_data=_ZSTD_DICTIONARY,
    level=_ZSTD_LEVEL,
    write_checksum=False,  # the changelog's batches carry a CRC already
    write_content_size=True,  # so a reader knows the size without a limit to guess
    write_dict_id=False,  # the version byte says which dictionary
).compress
_DECOMPRESS = zstandard.ZstdDecompressor(dict_data=_ZSTD_DICTIONARY).decompress


def shrink(document: bytes) -> bytes:
    """The stored form of a row's JSON ``document``."""
    return VERSION_2 + _COMPRESS(document)


def expand(stored: bytes) -> bytes:
    """The JSON document of a stored row (written by :func:`shrink`, an earlier
    version of it, or plain JSON)."""
    version = stored[:1]
    if version == VERSION_2:
        try:
            # Sized by the frame's header (a frame without one is not a row of ours).
            return _DECOMPRESS(stored[1:])
        except zstandard.ZstdError as error:
            raise RowError(f"a stored row does not decompress: {error}") from error
    if version == VERSION_1:
        inflate = zlib.decompressobj(_WINDOW_BITS, DICTIONARY_V1)
        try:
            document = inflate.decompress(stored[1:]) + inflate.flush()
        except zlib.error as error:
            raise RowError(f"a stored row does not inflate: {error}") from error
        if not inflate.eof:
            raise RowError("a stored row is cut short")
        return document
    if version == b"{":
        return stored
    raise RowError(f"a stored row has an unknown format (first byte {version!r})")


def shrink_v1(document: bytes) -> bytes:
    """A row as version 1 stored it (raw deflate against :data:`DICTIONARY_V1`): rows
    of that version are still in changelogs, and tests and benchmarks write them."""
    deflate = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, _WINDOW_BITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_V1
    )
    return VERSION_1 + deflate.compress(document) + deflate.flush()


class DecodedRows(Generic[T]):
    """Values decoded from a table's rows, kept across batches and reused while the row
    is the very bytes object they were decoded from.

    A stored row is immutable and a table replaces it with a new object when it
    changes (a write, a restore, an erasure), so identity says whether a kept value is
    still the row's: no copy is compared and nothing is decoded twice while a row stays
    as it was. Values must be immutable (frozen records, tuples, dicts never
    changed in place): one is handed out again to the next batch.

    At most ``kept`` values are kept; the oldest written or decoded goes first.
    :meth:`forget` drops one key at once (an erasure must not leave a decoded copy in
    memory); :meth:`drop_stale` drops every value whose row has changed or gone since.
    """

    __slots__ = ("decode", "kept", "rows", "values")

    def __init__(
        self, rows: Mapping[bytes, bytes | None], decode: Callable[[bytes | None], T], kept: int
    ) -> None:
        self.rows = rows
        self.decode = decode
        self.kept = kept
        self.values: OrderedDict[bytes, tuple[bytes | None, T]] = OrderedDict()

    def get(self, key: bytes) -> T:
        """The decoded value of ``key``'s row (a row never written decodes from None)."""
        raw = self.rows.get(key)
        known = self.values.get(key)
        if known is not None and known[0] is raw:
            return known[1]
        value = self.decode(raw)
        self.keep(key, raw, value)
        return value

    def keep(self, key: bytes, raw: bytes | None, value: T) -> None:
        """Remember that ``raw``, the row now stored at ``key``, decodes to ``value``."""
        values = self.values
        if key in values:
            values[key] = (raw, value)
            values.move_to_end(key)
            return
        if len(values) >= self.kept:
            if not values:
                return  # keeps none
            # An OrderedDict: dropping the oldest of a plain dict scans the slots its
            # earlier deletions left at the front, again and again.
            values.popitem(last=False)
        values[key] = (raw, value)

    def forget(self, key: bytes) -> None:
        self.values.pop(key, None)

    def drop_stale(self) -> int:
        """Forget the values of rows changed or deleted since; how many."""
        rows, values = self.rows, self.values
        stale = [key for key, (raw, _) in values.items() if rows.get(key) is not raw]
        for key in stale:
            del values[key]
        return len(stale)
