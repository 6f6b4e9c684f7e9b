"""Forgetting a user on request: what is removed where, and the receipt that says so.

An ``erasure_requested`` event (control topic ``erasure-requests``, or
``rewardstream erase``) reaches the user's partition like any event. In the
transaction that handles it, the decide stage deletes the user's row (and the
shadow program's), takes the user out of its own link view, publishes one
:class:`ErasureReceipt`, and sends an *erase order* to every partition of the two
internal topics whose state can name the user although it is keyed by something
else:

- ``<app>-links`` → the link stage removes the user from every device and network
  row (accounts seen there, referrals sent or received there);
- ``<app>-rekeyed`` → the decide stage of every partition removes other users'
  notes that an alert of the erased user named them (their ``by``).

An order is committed with the deletion, in the same transaction, so none is
lost; it is applied by the stage that owns those rows, exactly once like every
record (an order applied twice finds nothing the second time). Orders from one
user's partition travel behind everything that partition sent before them, so a
link record or note of the user's own events cannot overtake its erasure.

Everything here is a pure function; :mod:`app.pipeline` applies them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from msgspec.structs import replace

from app.contract import validate
from app.contract.records import decision_id_for
from app.features.state import UserState
from app.fraud import links
from app.fraud.links import LinkState
from app.rows import expand

# The header that marks an erase order on an internal topic (its value: the order's
# version), so the stages tell it from a link record or a related-account note.
ERASE_HEADER = "rewardstream-erase"
# The key of every erase order: orders go to every partition explicitly, and the key
# must not name the user (it is kept in the topic until the erasure bound).
ERASE_ORDER_KEY = b"erase"
RECEIPT_KIND = "erasure_receipt"


# The small caches of the hot path that keep identifiers seen lately: the ids of the last
# events' decisions (made of user ids), devices' and networks' keys, addresses.
IDENTIFIER_CACHES = (decision_id_for, *links.IDENTIFIER_CACHES, *validate.IDENTIFIER_CACHES)


def forget_cached_identifiers() -> None:
    """Empty :data:`IDENTIFIER_CACHES`. Called by every stage that reads an erasure
    request or an erase order, so none of the user's identifiers outlives it in the
    memory of a worker that met them; the caches refill within the next events."""
    for cache in IDENTIFIER_CACHES:
        cache.cache_clear()


@dataclass(frozen=True, slots=True)
class EraseOrder:
    """What an internal stage must forget: ``user_id``, for the request ``request_id``."""

    user_id: str
    request_id: str
    ts: int

    def to_json(self) -> bytes:
        return orjson.dumps({"user_id": self.user_id, "request_id": self.request_id, "ts": self.ts})

    @classmethod
    def from_json(cls, value: bytes) -> EraseOrder:
        document = orjson.loads(value)
        return cls(str(document["user_id"]), str(document["request_id"]), int(document["ts"]))


@dataclass(frozen=True, slots=True)
class ErasedMark:
    """That a user was erased: kept by the keyed hash of the id, never the id.

    An erasure request and the user's events come from different topics, so an event
    sent before the request may be read after it (its topic's backlog was longer). Such
    an event carries the user's data from before the request: it is dead-lettered
    without its content instead of decided (a user would otherwise come back). Events
    sent after the request are a new user's. ``requested_ms`` is the request's Kafka
    timestamp; an event's own is compared with it, so producers' clocks must agree to
    within what separates the two (docs/privacy.md). The mark is kept until
    ``until_ms`` (the erasure bound later): by then the event topics hold nothing older.
    """

    requested_ms: int
    until_ms: int

    def covers(self, produced_ms: int) -> bool:
        """Whether an event produced at ``produced_ms`` was sent before the request."""
        return produced_ms <= self.requested_ms

    def to_json(self) -> bytes:
        return orjson.dumps({"requested_ms": self.requested_ms, "until_ms": self.until_ms})

    @classmethod
    def from_json(cls, value: bytes) -> ErasedMark:
        document = orjson.loads(value)
        return cls(int(document["requested_ms"]), int(document["until_ms"]))


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    """The proof an erasure happened, published once per request to ``erasures``.

    ``subject`` is a keyed hash of the user id (HMAC-SHA-256 with the deployment's
    receipt key): whoever holds the key and the id finds the receipt; the receipt
    alone names nobody. ``removed`` says what the erasure found and removed at once;
    ``ordered`` says where it sent erase orders (applied by those stages).
    """

    request_id: str
    subject: str
    program: str
    requested_ts: int
    removed: dict[str, bool]
    ordered: dict[str, int]

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": RECEIPT_KIND,
            "request_id": self.request_id,
            "subject": self.subject,
            "program": self.program,
            "requested_ts": self.requested_ts,
            "removed": self.removed,
            "ordered": self.ordered,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_document())


def receipt_subject(user_id: str, key: str) -> str:
    """How a receipt names ``user_id``: the hex HMAC-SHA-256 of the id under ``key``."""
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def link_without(state: LinkState, user_id: str) -> LinkState:
    """``state`` with every trace of ``user_id`` gone: the account seen on this device or
    network, and each referral it sent or received here."""
    accounts = tuple(seen for seen in state.accounts if seen.user_id != user_id)
    referrals = tuple(r for r in state.referrals if r.referred != user_id and r.referrer != user_id)
    if len(accounts) == len(state.accounts) and len(referrals) == len(state.referrals):
        return state
    return LinkState(accounts=accounts, referrals=referrals)


def notes_without(user: UserState, user_id: str) -> UserState:
    """``user`` without the notes that an alert of ``user_id`` named them (the note's
    ``by`` is the erased user)."""
    related = user.risk.related
    kept = tuple(note for note in related if note.by != user_id)
    if len(kept) == len(related):
        return user
    return replace(user, risk=replace(user.risk, related=kept))


class RowIndex:
    """Which rows of one table partition may name a given user: what an erase order reads
    instead of inflating every row (docs/decisions.md §22). Kept in memory beside the
    table and read from its rows a slice at a time (:meth:`read`), so that making it
    stalls nothing; meanwhile, and after, the caller adds what a row gains (and, when it
    is made, what the batch in progress changed and did not write yet).

    A superset, never a miss: what leaves a row keeps its entry, so an index is made
    anew once it holds twice the entries it was read with (and at least
    :meth:`kept_at_least`), and once past ``until_s`` on the caller's monotonic clock, so
    what it keeps of a row an erasure deleted (a key, an id) goes by then
    (:meth:`usable`).
    """

    __slots__ = ("entries", "limit", "unread", "until_s")

    def __init__(
        self, stored: Mapping[bytes, bytes | None], opened: Mapping[bytes, Any], *, until_s: float
    ) -> None:
        self.until_s = until_s
        self.entries = 0
        self.limit = 0  # set once every row is read
        # The keys of the rows still to read (a row changed meanwhile is read as it is
        # then; what it gained before is in already, through the caller's adds).
        self.unread: list[bytes] | None = list(stored)
        for key, value in opened.items():
            self.add_all(key, value)

    def read(self, stored: Mapping[bytes, bytes | None], most: int | None = None) -> bool:
        """Read up to ``most`` more rows of ``stored`` (None: all that are left); whether
        every row has been read."""
        unread = self.unread
        if unread is None:
            return True
        start = 0 if most is None else max(0, len(unread) - most)
        for key in unread[start:]:
            raw = stored.get(key)
            if raw:
                self.add_stored(key, raw)
        del unread[start:]
        if not unread:
            self.unread = None
            self.limit = max(2 * self.entries, self.kept_at_least())
        return self.unread is None

    def add(self, name: str, key: bytes) -> None:
        """The row at ``key`` names the user ``name``."""
        raise NotImplementedError

    def add_stored(self, key: bytes, raw: bytes) -> None:
        """What the stored row ``raw`` at ``key`` names."""
        raise NotImplementedError

    def add_all(self, key: bytes, value: Any) -> None:
        """What the decoded row ``value`` at ``key`` names."""
        raise NotImplementedError

    def kept_at_least(self) -> int:
        raise NotImplementedError

    def usable(self, now_s: float) -> bool:
        """Neither grown full (once read) nor past its time."""
        full = self.unread is None and self.entries > self.limit
        return not full and now_s < self.until_s


# How an entry of a bucket ends: its key's length, after the key, so a bucket is read
# from its end and its last entry found without reading the rest. (Keys are ids of at
# most 128 characters with a short prefix.)
_KEY_LENGTH = struct.Struct(">H")
# About how many rows of its table a bucket lists (a user row holds a few notes, a link
# table holds one or two rows a user): fewer buckets cost less memory, and more rows
# decoded per erasure. Never fewer buckets than this.
ROWS_PER_BUCKET = 32
BUCKETS_AT_LEAST = 1024


class KeyBuckets:
    """Row keys listed by the hash of the id of a user they name, one bucket per
    :data:`ROWS_PER_BUCKET` rows of the table (and at least :data:`BUCKETS_AT_LEAST`),
    each a ``bytearray`` of its keys' bytes. An entry costs its key's bytes and two more;
    a list or set of ``bytes`` would keep a key object alive per entry, and a row that
    gains a name later names it with a new one: measured over 400,000 sign-ups, that was
    about 520 bytes of resident memory a user for the two indexes, where the rows take
    about 970 (docs/decisions.md §22)."""

    __slots__ = ("buckets", "mask")

    def __init__(self, rows: int) -> None:
        size = BUCKETS_AT_LEAST
        while size * ROWS_PER_BUCKET < rows:
            size *= 2
        self.mask = size - 1
        self.buckets: dict[int, bytearray] = {}

    def add(self, name: str, key: bytes) -> bool:
        """List ``key`` for ``name``; False if it was its bucket's last entry already (a
        row naming several users of one bucket, or one user again)."""
        at = hash(name) & self.mask
        bucket = self.buckets.get(at)
        if bucket is None:
            bucket = self.buckets[at] = bytearray()
        elif _last_key(bucket) == key:
            return False
        bucket += key
        bucket += _KEY_LENGTH.pack(len(key))
        return True

    def keys(self, name: str) -> list[bytes]:
        """The keys listed in ``name``'s bucket (those of other users hashed there too),
        each once, newest first."""
        return bucket_keys(self.buckets.get(hash(name) & self.mask, bytearray()))


def bucket_keys(bucket: bytearray) -> list[bytes]:
    """The keys a bucket of :class:`KeyBuckets` lists, each once, newest first."""
    found: dict[bytes, None] = {}
    end = len(bucket)
    while end:
        (length,) = _KEY_LENGTH.unpack_from(bucket, end - 2)
        start = end - 2 - length
        found.setdefault(bytes(bucket[start : end - 2]))
        end = start
    return list(found)


def _last_key(bucket: bytearray) -> bytes:
    (length,) = _KEY_LENGTH.unpack_from(bucket, len(bucket) - 2)
    return bytes(bucket[len(bucket) - 2 - length : len(bucket) - 2])


# What a stored user row holding notes of other users' alerts contains (RiskState.related,
# compact JSON of one or more RelatedNote): the start of a non-empty list.
HOLDS_NOTES = b'"related":[{'
# However few notes a table holds, its index may keep this many before it is made anew.
NOTES_KEPT_AT_LEAST = 100_000


class NotesBy(RowIndex):
    """Which rows of a user table may hold a note that an alert of a given user left, by
    the hash of that user's id (:class:`KeyBuckets`). A note goes at its holder's next
    event; its entry stays until the index is made anew. Only the stored rows that hold
    notes are decoded to make it."""

    __slots__ = ("listed",)

    def __init__(
        self,
        stored: Mapping[bytes, bytes | None],
        opened: Mapping[bytes, UserState],
        *,
        until_s: float,
    ) -> None:
        self.listed = KeyBuckets(len(stored))
        super().__init__(stored, opened, until_s=until_s)

    def add_stored(self, key: bytes, raw: bytes) -> None:
        if HOLDS_NOTES in expand(raw):
            self.add_all(key, UserState.from_bytes(raw))

    def add_all(self, key: bytes, value: UserState) -> None:
        for note in value.risk.related:
            self.add(note.by, key)

    def kept_at_least(self) -> int:
        return NOTES_KEPT_AT_LEAST

    def add(self, name: str, key: bytes) -> None:
        """The row at ``key`` holds a note of ``name``'s alert."""
        if self.listed.add(name, key):
            self.entries += 1

    def rows_naming(self, by: str) -> list[bytes]:
        """The keys of the rows that may hold a note of ``by``'s alert (and of other
        users hashed into its bucket)."""
        return self.listed.keys(by)


# However few accounts a link table holds, its index may keep this many entries before it
# is made anew.
LINKS_KEPT_AT_LEAST = 100_000


class LinksBy(RowIndex):
    """Which device and network rows of a link table may name a given user (an account
    seen there, or either side of a referral sent there), by the hash of the user's id
    (:class:`KeyBuckets`): an order decodes a bucket's rows (a few dozen) rather than the
    table. An account that ages out of a row keeps its entry until the index is made
    anew; the caller adds each name a row gains (:func:`newly_named`)."""

    __slots__ = ("listed",)

    def __init__(
        self,
        stored: Mapping[bytes, bytes | None],
        opened: Mapping[bytes, LinkState],
        *,
        until_s: float,
    ) -> None:
        self.listed = KeyBuckets(len(stored))
        super().__init__(stored, opened, until_s=until_s)

    def add_stored(self, key: bytes, raw: bytes) -> None:
        self.add_all(key, LinkState.from_bytes(raw))

    def add_all(self, key: bytes, value: LinkState) -> None:
        for account in value.accounts:
            self.add(account.user_id, key)
        for referral in value.referrals:
            self.add(referral.referred, key)
            self.add(referral.referrer, key)

    def kept_at_least(self) -> int:
        return LINKS_KEPT_AT_LEAST

    def add(self, name: str, key: bytes) -> None:
        """The row at ``key`` names the user ``name``."""
        if self.listed.add(name, key):
            self.entries += 1

    def rows_naming(self, user_id: str) -> list[bytes]:
        """The keys of the rows that may name ``user_id`` (and other users of its bucket)."""
        return self.listed.keys(user_id)


R = TypeVar("R", bound=RowIndex)


class KeptIndex(Generic[R]):
    """The index of one table partition in use, and the one being read to replace it:
    an index grown full or past its time keeps serving erase orders until its
    replacement has read every row, so that no order waits for a whole pass but the
    first after an assignment, when there is nothing to serve yet."""

    __slots__ = ("current", "replacing")

    def __init__(self) -> None:
        self.current: R | None = None  # every row read into it
        self.replacing: R | None = None

    def add(self, name: str, key: bytes) -> None:
        """The row at ``key`` names the user ``name`` (both indexes learn it)."""
        for index in (self.current, self.replacing):
            if index is not None:
                index.add(name, key)

    def read(
        self,
        stored: Mapping[bytes, bytes | None],
        most: int | None,
        now_s: float,
        begin: Callable[[], R],
    ) -> R | None:
        """Read up to ``most`` rows of ``stored`` into the replacement (``begin`` makes
        it, when the current index is missing, grown full or past its time; None: every
        row left); a replacement read whole takes over. The index then in use, if any."""
        current = self.current
        if self.replacing is None and (current is None or not current.usable(now_s)):
            self.replacing = begin()
        if self.replacing is not None and self.replacing.read(stored, most):
            self.current, self.replacing = self.replacing, None
        return self.current

    def whole(
        self, stored: Mapping[bytes, bytes | None], now_s: float, begin: Callable[[], R]
    ) -> R:
        """An index every row has been read into: the one in use (even one due to be
        replaced, until its replacement is whole), else one read to the end now."""
        if self.current is not None:
            return self.current
        current = self.read(stored, None, now_s, begin)
        assert current is not None
        return current


def newly_named(before: LinkState, after: LinkState, event_user: str, ts: int) -> list[str]:
    """The users ``after`` (``before`` with an event of ``event_user`` at ``ts`` passed)
    may name that ``before`` did not: the event's user when its account here starts at
    ``ts`` (new here, or seen earlier than before), and both sides of a referral sent at
    ``ts``. A superset of the new names, found without walking the row."""
    named = []
    for account in reversed(after.accounts):  # the event's account is usually the newest
        if account.user_id == event_user:
            if account.first_ts == ts:
                named.append(event_user)
            break
    if after.referrals and after.referrals is not before.referrals:
        # Kept in time order: a referral sent at ``ts`` is among the last ones at ``ts``
        # (the last of all but for an event older than the newest referral).
        for referral in reversed(after.referrals):
            if referral.ts < ts:
                break
            if referral.ts == ts and referral.referrer == event_user:
                named += (referral.referred, referral.referrer)
                break
    return named
