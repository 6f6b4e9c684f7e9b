"""The link facts of an event at the moment it is decided, without waiting for a hop.

The link stage keeps each device's and network's state in a table keyed by that
device or network (:mod:`app.fraud.links`); every worker keeps a read-only copy
of the whole table, fed from its changelog (the *view*). The decide stage reads
an event's links from that copy and decides at once. The copy trails the link
stage by its commit and fetch (tens of milliseconds when the engine keeps up):
what it cannot show yet are the events of other users decided within that
delay. Two things narrow the gap:

- the events this worker decided itself lately are laid over the view (the
  *overlay*), so a burst on one worker sees itself at once; :func:`observe_link`
  is idempotent, so an event the view already holds changes nothing when laid
  over it again;
- a new account's reward is held for the program's pending period, and its
  release is decided on the view as it is then, with the whole burst in it
  (docs/decisions.md, entry 15).

What each decision was given is written into the decision record (``links``),
so the decision log says exactly what the engine knew.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from app.contract.records import Event
from app.fraud.links import (
    LinkFacts,
    LinkState,
    advance_link,
    holds,
    link_keys,
    observe_link,
    referred_user,
)
from app.rows import DecodedRows

# How long (worker clock) an event this worker decided stays laid over the view, and
# how many such events are kept per device or network: the view normally holds them
# within a second; this covers a link stage that lags behind for a while. A full
# overlay drops its oldest event and is folded again whole: while a backlog drains, a
# busy network's overlay reached 64 events again and again (one fold of 25 events on
# average per read of a network); with 256, about one read in a thousand refolds. All
# keys together hold at most the events decided in OVERLAY_MS, whatever this bound, and
# the fold's steps one state per overlaid event (a tuple of up to MAX_ACCOUNTS accounts
# shared with the states before it): normally a second's worth, since the view's moves
# trim them; more only while the link stage lags.
OVERLAY_MS = 30_000
OVERLAY_PER_KEY = 256
# How often the decoded states of changed rows are dropped (a pass over up to
# DECODED_KEPT entries: a few ms): an erased user's decoded rows leave memory within it.
DROP_STALE_EVERY_MS = 10_000
# A state the time to live has forgotten (one object, so the overlay's fold can be kept).
_FORGOTTEN = LinkState()
_NOTHING_READ: tuple[Event | None, dict[bytes, tuple[LinkState, LinkState]]] = (None, {})


class LinkView:
    """What the devices and networks of an event know, as the view and this worker's
    recent decisions show it now.

    ``state_of(key)`` is the view's state of a link key; ``now_ms`` is the
    worker's clock (only the overlay's age depends on it); ``expired(last_ts, ts)``
    says whether a state last touched at ``last_ts`` is forgotten by an event at ``ts``
    (the state's time to live, as the link stage applies it). ``keep_passes`` keeps
    what each key's last pass left, for :meth:`passed` (for a view of one message only:
    it holds an entry per key it reads).
    """

    def __init__(
        self,
        state_of: Callable[[bytes], LinkState],
        *,
        now_ms: Callable[[], int] | None = None,
        expired: Callable[[int | None, int], bool] = lambda last_ts, ts: False,
        keep_passes: bool = False,
    ) -> None:
        self.state_of = state_of
        self.now_ms = now_ms
        self.expired = expired
        self.overlay: dict[bytes, deque[tuple[int, Event]]] = {}
        # Per key, the view's state the overlay was last laid over and the state after
        # each overlaid event in turn (the last: the whole fold). An event on a busy
        # device or network costs one step, not one per overlaid event; and when the view
        # moves on to a state the fold passed through, the rest of the fold still holds.
        self.folded: dict[bytes, tuple[LinkState, list[LinkState]]] = {}
        # What the last event's facts were read over, and the state each key's pass left
        # (see decided): deciding an event lays it over the very state it was read over.
        # Kept from an event's facts to its decision only (an event in memory no longer
        # than the overlay keeps it).
        self.last_read: tuple[Event | None, dict[bytes, tuple[LinkState, LinkState]]] = (
            _NOTHING_READ
        )
        # With keep_passes (a view that lives for one message): per key, the last state an
        # event's facts were read over, that event and the state it left (see passed).
        self.keep_passes = keep_passes
        self.last_pass: dict[bytes, tuple[LinkState, Event, LinkState]] = {}
        # With keep_passes: the link copy of the event last decided, and that event.
        self.last_sent: tuple[bytes, Event | None] = (b"", None)
        self.stale_dropped_ms = 0

    def facts(self, event: Event) -> tuple[LinkFacts, ...]:
        """The facts of each of ``event``'s links, in :func:`link_keys` order."""
        found = []
        now = self.now_ms() if self.now_ms is not None else None
        read: dict[bytes, tuple[LinkState, LinkState]] = {}
        for kind, key in link_keys(event):
            state = self.state_of(key)
            if self.expired(state.last_ts, event.ts):
                state = _FORGOTTEN
            if now is not None and key in self.overlay:
                state = self._overlaid(key, kind, state, now)
            after, facts = observe_link(state, event, kind)
            read[key] = (state, after)
            if self.keep_passes:
                self.last_pass[key] = (state, event, after)
            found.append(facts)
        self.last_read = (event, read)
        return tuple(found)

    def sent(self, value: bytes) -> Event | None:
        """The event whose link copy ``value`` is, if it is the copy of the event last
        decided over this view (see :meth:`decided`): the in-process link hop then need
        not parse it back. Compared byte for byte with what the decide stage sent."""
        document, event = self.last_sent
        return event if event is not None and document == value else None

    def passed(self, key: bytes, state: LinkState, event: Event) -> LinkState | None:
        """What ``event`` left of ``state`` at ``key``, if reading its facts over that very
        state worked it out already (else None).

        The in-process link hop (:meth:`app.pipeline.Pipeline.handle`) passes each
        decided event through the same state right after its facts were read: this
        spares it doing the same again. ``event`` and ``state`` must be the very objects
        the facts were read with, else the answer could differ.
        """
        known = self.last_pass.get(key)
        if known is None or known[0] is not state or known[1] is not event:
            return None
        return known[2]

    def _overlaid(self, key: bytes, kind: str, base: LinkState, now: int) -> LinkState:
        """``base`` with the overlay of ``key`` laid over it (events younger than
        :data:`OVERLAY_MS`, in the order they were decided)."""
        recent = self.overlay[key]
        aged = False
        while recent and recent[0][0] < now - OVERLAY_MS:
            recent.popleft()
            aged = True
        known = self.folded.get(key)
        if known is not None and known[0] is base and not aged:
            return known[1][-1]
        # The view moved on (or events aged out). What it holds now leaves the overlay:
        # laying it over again would change nothing, and on a busy device or network
        # every move of the view would otherwise fold up to OVERLAY_PER_KEY events anew.
        # Only a prefix goes, so the fold of the rest is the fold of them all.
        held = 0
        while recent and holds(base, recent[0][1], kind):
            recent.popleft()
            held += 1
        if not recent:
            del self.overlay[key]
            self.folded.pop(key, None)
            return base
        if known is not None and not aged and len(known[1]) == held + len(recent):
            # The view usually moves on to the very state the fold reached after the
            # events it now holds (the link stage passed them in the same order): then
            # the rest of the fold is the fold of the rest over it (advance_link is a
            # function of the state's value), and nothing is folded again.
            passed = known[1][held - 1] if held else known[0]
            if passed == base:
                steps = known[1][held:]
                self.folded[key] = (base, steps)
                return steps[-1]
        state = base
        steps = []
        for _, earlier in recent:
            state = advance_link(state, earlier, kind)
            steps.append(state)
        self.folded[key] = (base, steps)
        return state

    def decided(self, event: Event, sent: bytes = b"") -> None:
        """``event`` was decided and goes on to its links (``sent``: its link copy): lay it
        over the view until the view holds it (when the view has an overlay)."""
        if self.keep_passes:
            self.last_sent = (sent, event)
        if self.now_ms is None:
            return
        now = self.now_ms()
        read_for, read = self.last_read
        for kind, key in link_keys(event):
            recent = self.overlay.setdefault(key, deque(maxlen=OVERLAY_PER_KEY))
            full = len(recent) == recent.maxlen  # the append drops the oldest
            recent.append((now, event))
            known = self.folded.get(key)
            passed = read.get(key) if read_for is event else None
            if known is not None and not full:
                fold = known[1][-1]
                # The facts were read over this very fold: their pass is the next step.
                after = passed[1] if passed is not None and passed[0] is fold else None
                known[1].append(after if after is not None else advance_link(fold, event, kind))
            elif len(recent) == 1 and passed is not None:
                # The key's first overlaid event: its facts were read over the view's state
                # itself, and their pass is the fold of the overlay over that state.
                self.folded[key] = (passed[0], [passed[1]])
            else:
                self.folded.pop(key, None)
        self.last_read = _NOTHING_READ

    def forget(self, user_id: str) -> int:
        """Take ``user_id`` out of the overlay (an erasure): the events of the user, and
        those that name the user as referred, laid over the view. How many went."""
        gone = 0
        self.last_read = _NOTHING_READ
        for key, recent in list(self.overlay.items()):
            kept = [(at, e) for at, e in recent if user_id not in (e.user_id, referred_user(e))]
            if len(kept) == len(recent):
                continue
            gone += len(recent) - len(kept)
            self.folded.pop(key, None)
            if kept:
                self.overlay[key] = deque(kept, maxlen=OVERLAY_PER_KEY)
            else:
                del self.overlay[key]
        return gone

    def prune(self) -> None:
        """Forget overlaid events older than :data:`OVERLAY_MS` (the view holds them by now),
        and, every :data:`DROP_STALE_EVERY_MS`, decoded states of rows that changed since."""
        self.last_read = _NOTHING_READ  # an event read but never decided
        if self.now_ms is None:
            return
        now = self.now_ms()
        if isinstance(self.state_of, StoredStates) and now >= self.stale_dropped_ms + (
            DROP_STALE_EVERY_MS
        ):
            self.stale_dropped_ms = now
            self.state_of.drop_stale()
        oldest = now - OVERLAY_MS
        for key in [key for key, recent in self.overlay.items() if recent[-1][0] < oldest]:
            del self.overlay[key]
            self.folded.pop(key, None)


# How many decoded states the view keeps: a busy device or network is read by every
# event that names it, and decoding a stored row (inflate, parse) costs tens of µs.
DECODED_KEPT = 50_000


class StoredStates(DecodedRows[LinkState]):
    """The view's states, read from stored rows; a row is decoded again only once the
    view holds a new value for it (:class:`app.rows.DecodedRows`).

    Callable as ``state_of``. :meth:`drop_stale` forgets decoded states whose row has
    changed or gone since: without it, the decoded copy of a row rewritten by an
    erasure would stay in memory until that row is read again.
    """

    __slots__ = ()

    def __init__(self, rows: Mapping[bytes, bytes | None]) -> None:
        super().__init__(rows, LinkState.from_bytes, DECODED_KEPT)

    def __call__(self, key: bytes) -> LinkState:
        return self.get(key)


def stored_states(rows: Mapping[bytes, bytes | None]) -> StoredStates:
    """The view's states read from ``rows`` (see :class:`StoredStates`)."""
    return StoredStates(rows)
