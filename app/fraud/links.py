"""Signals across users: who shares a device or a network, and who referred whom there.

Users live on different partitions, so the accounts behind one device or one
network can only be counted where events are keyed by that device or network.
The link stage does that: each event with a ``device_id`` passes through the
state of its device (key ``device:<id>``), each event with an ``ip`` through the
state of its network (key ``net:<a.b.c>`` for an IPv4 /24, the /64 for IPv6,
with per-address counts inside), and collects :class:`LinkFacts` on the way.
The decision stage then scores them with the user's own signals.

Everything here is a pure function of (state, event), in event time, and every
update is idempotent: an event seen twice (a retry, a replay) changes nothing
the second time, so at-least-once delivery cannot inflate a count.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import operator
from typing import Any

import msgspec
from msgspec.structs import replace

from app.contract.records import Event
from app.rows import expand, shrink

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# What one device's or network's state remembers: enough for "accounts in 24 h" and
# for a referral ring that takes days to close, bounded whatever an attacker sends.
KEEP_ACCOUNTS_MS = 30 * DAY_MS
MAX_ACCOUNTS = 64
KEEP_REFERRALS_MS = 7 * DAY_MS
MAX_REFERRALS = 64
MAX_RELATED = 10
LINK_KINDS = ("device", "net")


class Seen(msgspec.Struct, frozen=True, gc=False):
    """One account seen on a device or network."""

    user_id: str
    first_ts: int
    last_ts: int
    signup_ts: int | None = None
    ip: str | None = None  # the address last used, for per-address counts in a network


class Referral(msgspec.Struct, frozen=True, gc=False):
    """A referral sent from this device or network: who, by whom, when."""

    referred: str
    referrer: str
    ts: int


class LinkState(msgspec.Struct, frozen=True, gc=False):
    """What one device or network has seen.

    ``accounts`` are kept oldest first (by ``last_ts``, then user id): :func:`advance_link`
    sorts them so, and removing accounts keeps the order. ``referrals`` are kept oldest
    first too (by ``ts``, then as they came): the newest and the first to expire are at
    the ends, so no event walks them for either.
    """

    accounts: tuple[Seen, ...] = ()
    referrals: tuple[Referral, ...] = ()

    @property
    def last_ts(self) -> int | None:
        """When anything was last seen here (read for every event and hop: the newest
        account and the newest referral are the last, so this walks neither)."""
        last = self.accounts[-1].last_ts if self.accounts else None
        if self.referrals:
            referred = self.referrals[-1].ts
            return referred if last is None or referred > last else last
        return last

    def to_bytes(self) -> bytes:
        """The stored form (see :mod:`app.rows`)."""
        return shrink(msgspec.json.encode(self))

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> LinkState:
        if not raw:
            return cls()
        state = _decode_link_state(expand(raw))
        referrals = state.referrals
        if len(referrals) > 1:
            # Rows written before referrals were kept in time order (a stable sort: a row
            # already in order is the same tuple of the same objects).
            ordered = tuple(sorted(referrals, key=_REFERRAL_TS))
            if ordered != referrals:
                return replace(state, referrals=ordered)
        return state


# Decoding straight into the records: 2.4 us for a network's row of eight accounts,
# against 6.1 us through a dict and keyword arguments (timeit). The view decodes a row
# again each time the link stage rewrites it.
_decode_link_state = msgspec.json.Decoder(LinkState).decode


class LinkFacts(msgspec.Struct, frozen=True, gc=False):
    """What one device or network says about one event's user, as the event passed."""

    kind: str  # device or net
    accounts_24h: int = 1  # accounts active here in the last 24 h, this one included
    signups_24h: int = 0  # accounts that signed up here in the last 24 h
    same_ip_24h: int = 0  # (net only) accounts on the very same address in 24 h
    referred_by: str | None = None  # an account here referred this user
    refers_linked: str | None = None  # this referral names an account seen here
    related: tuple[str, ...] = ()  # other accounts here, most recent first

    def to_document(self) -> dict[str, Any]:
        """The JSON form, the fields that are None or empty left out (as the decision
        record has it); the counts always there."""
        document: dict[str, Any] = {
            "kind": self.kind,
            "accounts_24h": self.accounts_24h,
            "signups_24h": self.signups_24h,
            "same_ip_24h": self.same_ip_24h,
        }
        if self.referred_by is not None:
            document["referred_by"] = self.referred_by
        if self.refers_linked is not None:
            document["refers_linked"] = self.refers_linked
        if self.related:
            document["related"] = list(self.related)
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LinkFacts:
        return cls(**{**document, "related": tuple(document.get("related", ()))})


def link_keys(event: Event) -> tuple[tuple[str, bytes], ...]:
    """The (kind, key) of every link state this event passes through, in order."""
    return _link_keys(event.device_id, event.ip)


def link_kind(event: Event, key: bytes) -> str:
    """The kind of link ``key`` is for ``event`` (one of its :func:`link_keys`)."""
    for kind, expected in link_keys(event):
        if expected == key:
            return kind
    raise ValueError(f"{key!r} is not a link of event {event.event_id}")


# Cached: each event asks four times (the view, the overlay, the link copies, the link
# stage), and users keep their devices and addresses.
@functools.lru_cache(maxsize=65_536)
def _link_keys(device_id: str | None, ip: str | None) -> tuple[tuple[str, bytes], ...]:
    keys: list[tuple[str, bytes]] = []
    if device_id:
        keys.append(("device", b"device:" + device_id.encode()))
    if ip:
        keys.append(("net", b"net:" + network_of(ip).encode()))
    return tuple(keys)


def link_document(event: Event) -> dict[str, Any]:
    """What the link stage needs of an event (:func:`observe_link`), and no more:
    the copies sent to each device and network stay small whatever the event carries."""
    document: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "type": event.type,
        "ts": event.ts,
    }
    if event.device_id is not None:
        document["device_id"] = event.device_id
    if event.ip is not None:
        document["ip"] = event.ip
    referred = event.attributes.get("referred_user_id")
    if isinstance(referred, str):
        document["attributes"] = {"referred_user_id": referred}
    return document


@functools.lru_cache(maxsize=65_536)
def network_of(ip: str) -> str:
    """The network an address belongs to: its /24 (IPv4) or /64 (IPv6), else the text.

    Cached, and with a fast path for plain dotted IPv4: users keep their addresses, and
    the ``ipaddress`` module costs tens of microseconds per call on the hot path.
    """
    parts = ip.split(".")
    dotted = len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0") for p in parts
    )
    if dotted:
        return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip.strip().lower()
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def observe_link(state: LinkState, event: Event, kind: str) -> tuple[LinkState, LinkFacts]:
    """The state after ``event`` passed this device or network, and what it says."""
    state = advance_link(state, event, kind)
    return state, _facts(state, event, kind)


def advance_link(state: LinkState, event: Event, kind: str) -> LinkState:
    """The state after ``event`` passed this device or network (:func:`observe_link`
    without the facts: the link stage and the view's overlay need only the state)."""
    ts = event.ts
    return LinkState(_seen(state.accounts, event, ts, kind), _referrals(state.referrals, event, ts))


def holds(state: LinkState, event: Event, kind: str) -> bool:
    """Whether ``state`` already shows everything ``event`` would add to it here: its
    account's span covers the event's time (with its sign-up, and at that very time its
    address), and its referral is kept. Passing such an event again changes nothing the
    facts read (it could only drop an account unseen for 30 days a little earlier)."""
    ts, user = event.ts, event.user_id
    mine = next((a for a in state.accounts if a.user_id == user), None)
    if mine is None or not mine.first_ts <= ts <= mine.last_ts:
        return False
    if event.type == "signup" and mine.signup_ts is None:
        return False
    if kind == "net" and ts == mine.last_ts and mine.ip != event.ip:
        return False
    referred = referred_user(event)
    return referred is None or any(
        r.referred == referred and r.referrer == user for r in state.referrals
    )


def _seen(accounts: tuple[Seen, ...], event: Event, ts: int, kind: str) -> tuple[Seen, ...]:
    ip = event.ip if kind == "net" else None
    signup = ts if event.type == "signup" else None
    user = event.user_id
    kept_after = ts - KEEP_ACCOUNTS_MS
    mine = None
    others = []
    for account in accounts:  # one pass: every event walks every account it meets
        if account.user_id == user:
            if mine is None:
                mine = account
        elif account.last_ts > kept_after:
            others.append(account)
    if mine is None:
        mine = Seen(user, ts, ts, signup, ip)
    else:
        mine = replace(
            mine,
            first_ts=min(mine.first_ts, ts),
            last_ts=max(mine.last_ts, ts),
            signup_ts=mine.signup_ts if mine.signup_ts is not None else signup,
            ip=ip if ip is not None and ts >= mine.last_ts else mine.ip,
        )
    others.append(mine)
    others.sort(key=_LAST_SEEN)
    return tuple(others[-MAX_ACCOUNTS:])


# Oldest first, ties by user id (a C-level key: every event sorts every account it meets).
_LAST_SEEN = operator.attrgetter("last_ts", "user_id")
_LAST_TS = operator.attrgetter("last_ts")
_USER_ID = operator.attrgetter("user_id")
_REFERRAL_TS = operator.attrgetter("ts")


def _referrals(referrals: tuple[Referral, ...], event: Event, ts: int) -> tuple[Referral, ...]:
    kept_after = ts - KEEP_REFERRALS_MS
    kept = referrals
    # Oldest first: the expired ones are a prefix, and most events expire none.
    if referrals and referrals[0].ts <= kept_after:
        kept = referrals[bisect.bisect_right(referrals, kept_after, key=_REFERRAL_TS) :]
    referred = referred_user(event)
    if referred is not None and not any(
        r.referred == referred and r.referrer == event.user_id for r in kept
    ):
        new = Referral(referred, event.user_id, ts)
        if not kept or kept[-1].ts <= ts:
            kept = (*kept, new)
        else:  # an event older than the newest referral kept: its place in time order
            at = bisect.bisect_right(kept, ts, key=_REFERRAL_TS)
            kept = (*kept[:at], new, *kept[at:])
    return kept[-MAX_REFERRALS:]


def referred_user(event: Event) -> str | None:
    if event.type != "referral":
        return None
    referred = event.attributes.get("referred_user_id")
    return referred if isinstance(referred, str) and referred else None


def _facts(state: LinkState, event: Event, kind: str) -> LinkFacts:
    ts, user = event.ts, event.user_id
    day_ago = ts - DAY_MS
    referred = referred_user(event)
    mine = None
    recent = []
    others = []
    signups = 0
    referred_here = False
    for account in state.accounts:  # one pass: every event walks every account it meets
        if account.last_ts > day_ago:
            recent.append(account)
        if (account.signup_ts or 0) > day_ago:
            signups += 1
        if account.user_id == user:
            if mine is None:
                mine = account
        else:
            others.append(account)
            referred_here = referred_here or account.user_id == referred
    # The event's own account, unless an event far older than the accounts kept here
    # fell off the end at once (then the address it came from stands for it).
    my_ip = mine.ip if mine is not None else event.ip if kind == "net" else None
    referrer = next(
        (r.referrer for r in state.referrals if r.referred == user and r.referrer != user), None
    )
    # Most recent first, ties by user id: two stable sorts on C-level keys.
    if len(others) > 1:
        others.sort(key=_USER_ID)
        others.sort(key=_LAST_TS, reverse=True)
    return LinkFacts(
        kind=kind,
        accounts_24h=len(recent),
        signups_24h=signups,
        same_ip_24h=(
            sum(1 for a in recent if a.ip is not None and a.ip == my_ip) if kind == "net" else 0
        ),
        referred_by=referrer,
        refers_linked=referred if referred is not None and referred_here else None,
        related=tuple(a.user_id for a in others[:MAX_RELATED]),
    )


class Linker:
    """The link stage over one plain dictionary, for using the engine as a library.

    The worker and offline replay run the same :func:`observe_link` hop by hop
    (:meth:`app.pipeline.Pipeline.link`), each state in a table partitioned by its key.
    """

    def __init__(self) -> None:
        self.states: dict[bytes, bytes | None] = {}

    def link(self, event: Event) -> tuple[LinkFacts, ...]:
        facts: list[LinkFacts] = []
        for kind, key in link_keys(event):
            state, found = observe_link(LinkState.from_bytes(self.states.get(key)), event, kind)
            self.states[key] = state.to_bytes()
            facts.append(found)
        return tuple(facts)


# The caches above hold devices and addresses seen lately (an erasure empties them,
# app.erasure.forget_cached_identifiers).
IDENTIFIER_CACHES = (_link_keys, network_of)
