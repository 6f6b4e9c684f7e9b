"""The link view: what an event's devices and networks know at the moment it is decided."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.contract.records import Event
from app.decisioning import Engine
from app.fraud import LinkFacts, LinkState, link_keys, observe_link
from app.fraud import view as view_module
from app.fraud.links import advance_link, holds, link_document
from app.fraud.view import OVERLAY_MS, LinkView, stored_states
from app.metrics import Metrics
from app.pipeline import Pipeline
from app.programs import load_builtin

START = 1_772_366_400_000
DAY_MS = 86_400_000
DEVICE = b"device:d"
NET = b"net:192.0.2.0/24"


class FakeClock:
    def __init__(self, now_ms: int = 5_000_000) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def monotonic_s(self) -> float:
        return self.now / 1000


def signup(user: str, ts: int = START, **fields: str) -> Event:
    return Event(
        f"e-{user}-{ts}",
        user,
        "signup",
        ts,
        device_id=fields.get("device_id", "d"),
        ip=fields.get("ip"),
    )


def stored(*events: Event) -> dict[bytes, bytes | None]:
    """Link-state rows as the link stage would have left them after ``events``."""
    rows: dict[bytes, bytes | None] = {}
    for event in events:
        for kind, key in link_keys(event):
            state, _ = observe_link(LinkState.from_bytes(rows.get(key)), event, kind)
            rows[key] = state.to_bytes()
    return rows


def device_facts(view: LinkView, event: Event) -> LinkFacts:
    """The device facts ``event`` is decided with; it is then decided (overlaid)."""
    [facts] = view.facts(event)
    view.decided(event)
    assert facts.kind == "device"
    return facts


def decide(view: LinkView, event: Event) -> None:
    view.facts(event)
    view.decided(event)


def test_facts_come_from_the_view_rows_in_link_key_order() -> None:
    rows = stored(signup("u-1", START, ip="192.0.2.1"), signup("u-2", START + 1000, ip="192.0.2.9"))
    view = LinkView(stored_states(rows))
    device, net = view.facts(signup("u-3", START + 2000, ip="192.0.2.9"))
    assert device == LinkFacts("device", accounts_24h=3, signups_24h=3, related=("u-2", "u-1"))
    assert net == LinkFacts(
        "net", accounts_24h=3, signups_24h=3, same_ip_24h=2, related=("u-2", "u-1")
    )
    # The view is only read: its rows are what the link stage wrote.
    assert rows == stored(
        signup("u-1", START, ip="192.0.2.1"), signup("u-2", START + 1000, ip="192.0.2.9")
    )


def test_an_event_naming_no_link_has_no_facts() -> None:
    view = LinkView(stored_states({}), now_ms=FakeClock().now_ms)
    assert view.facts(Event("e-1", "u-1", "page_view", START)) == ()
    assert view.overlay == {}


def test_the_overlay_shows_a_burst_on_one_worker_at_once() -> None:
    """Three accounts on one device decided back to back, before the view holds any."""
    clock = FakeClock()
    view = LinkView(stored_states({}), now_ms=clock.now_ms)
    seen = []
    for n, user in enumerate(["u-1", "u-2", "u-3"]):
        clock.now += 5
        seen.append(device_facts(view, signup(user, START + n)).accounts_24h)
    assert seen == [1, 2, 3]
    third = device_facts(view, signup("u-4", START + 3))
    assert (third.signups_24h, third.related) == (4, ("u-3", "u-2", "u-1"))


def test_only_a_decided_event_is_laid_over_the_view() -> None:
    """An event whose facts were read but that was not decided (a repeat, a failure) is
    never counted by the link stage: it must not be counted by the overlay either."""
    view = LinkView(stored_states({}), now_ms=FakeClock().now_ms)
    view.facts(signup("u-1", START))
    assert view.overlay == {}
    assert device_facts(view, signup("u-2", START + 1)).accounts_24h == 1


def test_without_a_clock_there_is_no_overlay() -> None:
    """In-process (replay, tests) the view is the link table itself: nothing to overlay."""
    view = LinkView(stored_states({}))
    assert [device_facts(view, signup(u, START)).accounts_24h for u in ("a", "b", "c")] == [1] * 3
    assert view.overlay == {}


def test_an_event_the_view_already_holds_changes_nothing_when_laid_over_it() -> None:
    clock = FakeClock()
    first, second = (
        signup("u-1", START, ip="192.0.2.1"),
        signup("u-2", START + 1000, ip="192.0.2.2"),
    )
    rows: dict[bytes, bytes | None] = {}
    view = LinkView(stored_states(rows), now_ms=clock.now_ms)
    decide(view, first)
    decide(view, second)
    # The link stage catches up: the view now holds both, and the overlay still does.
    rows.update(stored(first, second))
    assert set(view.overlay) == {DEVICE, NET}
    third = signup("u-3", START + 2000, ip="192.0.2.1")
    overlaid = view.facts(third)
    assert overlaid == LinkView(stored_states(stored(first, second))).facts(third)
    assert overlaid[0].accounts_24h == 3  # not 5: no account counted twice
    assert overlaid[1].same_ip_24h == 2


def test_what_the_view_holds_leaves_the_overlay_and_the_facts_stay_the_same() -> None:
    """Once the link stage has passed the first two events, the view holds them: they
    leave the overlay at the next read (a busy device would otherwise fold up to
    OVERLAY_PER_KEY events at every move of the view), the third stays."""
    clock = FakeClock()
    rows: dict[bytes, bytes | None] = {}
    view = LinkView(stored_states(rows), now_ms=clock.now_ms)
    events = [signup(f"u-{n}", START + n * 1000, ip=f"192.0.2.{n}") for n in range(3)]
    for event in events:
        decide(view, event)
    rows.update(stored(*events[:2]))
    fourth = signup("u-9", START + 5000, ip="192.0.2.1")
    assert view.facts(fourth) == LinkView(stored_states(stored(*events))).facts(fourth)
    assert [e.user_id for _, e in view.overlay[DEVICE]] == ["u-2"]
    assert [e.user_id for _, e in view.overlay[NET]] == ["u-2"]
    rows.update(stored(*events))
    view.facts(fourth)
    assert view.overlay == {}  # everything held: the keys go, and prune has nothing to do
    view.prune()


def test_an_event_is_held_only_when_passing_it_again_would_change_nothing() -> None:
    first = signup("u-1", START, ip="192.0.2.1")
    state = LinkState.from_bytes(stored(first)[NET])
    assert holds(state, first, "net")
    later = Event("e-2", "u-1", "page_view", START + 10, device_id="d", ip="192.0.2.1")
    assert not holds(state, later, "net")  # after the span
    assert holds(advance_link(state, later, "net"), first, "net")  # within the span
    moved = Event("e-3", "u-1", "page_view", START, device_id="d", ip="192.0.2.7")
    assert not holds(state, moved, "net")  # the same time from another address
    assert holds(state, moved, "device")  # which a device does not keep
    assert not holds(state, signup("u-2", START), "net")  # another account
    visit = Event("e-4", "u-1", "page_view", START, device_id="d", ip="192.0.2.1")
    assert not holds(LinkState.from_bytes(stored(visit)[NET]), first, "net")  # no sign-up
    referral = Event(
        "e-5",
        "u-1",
        "referral",
        START,
        device_id="d",
        ip="192.0.2.1",
        attributes={"referred_user_id": "u-7"},
    )
    assert not holds(state, referral, "net")
    assert holds(advance_link(state, referral, "net"), referral, "net")


_USERS = [f"u-{n}" for n in range(6)]


@st.composite
def _worker_runs(draw: st.DrawFn) -> tuple[list[Event], list[int]]:
    """Events one worker decides on one device and network (accounts, sign-ups,
    referrals, addresses, times out of order), and after each how far the link stage
    has got (a prefix of them, never going back)."""
    events: list[Event] = []
    caught_up: list[int] = []
    done = 0
    for n in range(draw(st.integers(1, 40))):
        user = draw(st.sampled_from(_USERS))
        kind = draw(st.sampled_from(["signup", "page_view", "referral"]))
        referred = draw(st.sampled_from(_USERS))
        attributes = {"referred_user_id": referred} if kind == "referral" else {}
        ts = START + draw(st.integers(0, 3 * DAY_MS))
        ip = f"192.0.2.{draw(st.integers(1, 3))}"
        events.append(Event(f"e-{n}", user, kind, ts, device_id="d", ip=ip, attributes=attributes))
        done = draw(st.integers(done, len(events)))
        caught_up.append(done)
    return events, caught_up


@settings(max_examples=300, deadline=None)
@given(_worker_runs())
def test_dropping_what_the_view_holds_gives_the_facts_of_laying_everything_over(
    run: tuple[list[Event], list[int]],
) -> None:
    """Whatever the link stage has passed when, the facts read over the view with its
    overlay pruned are those of laying every event this worker decided over the view
    (what the overlay did before it dropped anything)."""
    events, caught_up = run
    clock = FakeClock()
    rows: dict[bytes, bytes | None] = {}
    view = LinkView(stored_states(rows), now_ms=clock.now_ms)
    for n, event in enumerate(events):
        clock.now += 1
        everything = []
        for kind, key in link_keys(event):
            state = LinkState.from_bytes(rows.get(key))
            for earlier in events[:n]:
                if key in {passed for _, passed in link_keys(earlier)}:
                    state = advance_link(state, earlier, kind)
            everything.append(observe_link(state, event, kind)[1])
        assert list(view.facts(event)) == everything
        view.decided(event)
        rows.clear()
        rows.update(stored(*events[: caught_up[n]]))


def test_overlaid_events_age_out_by_the_workers_clock_and_prune_drops_them() -> None:
    clock = FakeClock()
    view = LinkView(stored_states({}), now_ms=clock.now_ms)
    decide(view, signup("u-1", START))
    clock.now += OVERLAY_MS  # just old enough to still count
    assert device_facts(view, signup("u-2", START + 1)).accounts_24h == 2
    clock.now += 1  # u-1 laid over OVERLAY_MS + 1 ago: gone; u-2 still there
    assert device_facts(view, signup("u-3", START + 2)).related == ("u-2",)
    assert [event.user_id for _, event in view.overlay[DEVICE]] == ["u-2", "u-3"]
    view.prune()
    assert set(view.overlay) == {DEVICE}  # its newest is recent: kept whole
    clock.now += OVERLAY_MS + 1
    view.prune()
    assert view.overlay == {}
    assert device_facts(view, signup("u-4", START + 3)).accounts_24h == 1


def test_prune_without_a_clock_does_nothing() -> None:
    view = LinkView(stored_states({}))
    view.prune()
    assert view.overlay == {}


def test_expired_view_state_is_treated_as_empty() -> None:
    rows = stored(signup("u-1", START))
    ttl = 10 * DAY_MS

    def expired(last_ts: int | None, ts: int) -> bool:
        return last_ts is not None and ts - last_ts > ttl

    view = LinkView(stored_states(rows), expired=expired)
    # Within the time to live, u-1 is still related (accounts are kept 30 days)...
    assert device_facts(view, signup("u-2", START + ttl)).related == ("u-1",)
    # ...past it, the device is as if new, as the link stage will find it.
    facts = device_facts(view, signup("u-3", START + ttl + 1))
    assert (facts.accounts_24h, facts.related) == (1, ())
    without_ttl = LinkView(stored_states(rows))
    assert device_facts(without_ttl, signup("u-3", START + ttl + 1)).related == ("u-1",)


def test_the_workers_view_forgets_by_the_pipelines_time_to_live_and_overlays_by_its_clock() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    pipeline = Pipeline(
        Engine(load_builtin("retail-loyalty")),
        Metrics(registry, clock=clock),
        max_event_bytes=4096,
        state_ttl_ms=10 * DAY_MS,
    )
    rows = stored(signup("u-1", START))
    view = pipeline.link_view(rows)
    assert device_facts(view, signup("u-2", START + 11 * DAY_MS)).related == ()
    assert device_facts(view, signup("u-3", START + 11 * DAY_MS + 1)).related == ("u-2",)
    clock.now += OVERLAY_MS + 1
    view.prune()
    assert view.overlay == {}
    # The view's reads are not counted: the link stage counts its own expiries.
    expired = {"table": "link-state"}
    assert registry.get_sample_value("rewardstream_state_expired_total", expired) is None


def test_a_stored_state_is_decoded_again_once_the_view_holds_a_new_value() -> None:
    rows = stored(signup("u-1", START))
    state_of = stored_states(rows)
    first = state_of(DEVICE)
    assert state_of(DEVICE) is first  # the same stored row: decoded once
    rows.update(stored(signup("u-1", START), signup("u-2", START + 1)))
    assert [seen.user_id for seen in state_of(DEVICE).accounts] == ["u-1", "u-2"]
    del rows[DEVICE]
    assert state_of(DEVICE).accounts == ()


@pytest.mark.parametrize("per_key", [64, 5], ids=["ageing", "full"])
def test_the_kept_fold_of_the_overlay_gives_the_facts_a_fresh_fold_gives(
    monkeypatch: pytest.MonkeyPatch, per_key: int
) -> None:
    """The overlay's fold is kept and extended event by event; through appends, ageing,
    a full overlay and a view that moves on, its facts are those of folding it anew."""
    monkeypatch.setattr(view_module, "OVERLAY_PER_KEY", per_key)
    clock = FakeClock()
    rows: dict[bytes, bytes | None] = {}
    view = LinkView(stored_states(rows), now_ms=clock.now_ms)
    for n in range(80):
        clock.now += 1000  # from the 30th on, the oldest ages out of the overlay each time
        event = signup(f"u-{n}", START + n * 1000, ip=f"192.0.2.{n % 7}")
        fresh = LinkView(view.state_of, now_ms=clock.now_ms)
        fresh.overlay = {
            key: type(recent)(recent, recent.maxlen) for key, recent in view.overlay.items()
        }
        assert view.facts(event) == fresh.facts(event)
        view.decided(event)
        if n == 10:  # the link stage catches up once: the view holds everything so far
            rows.update(stored(*(e for _, e in view.overlay[DEVICE])))


def test_a_pass_is_reused_only_for_the_same_state_and_the_same_event() -> None:
    """The in-process link hop reuses what reading the facts worked out, and only that."""
    before = LinkState.from_bytes(stored(signup("a"))[DEVICE])
    view = LinkView(lambda key: before, keep_passes=True)
    event = signup("b", START + 1000)
    view.facts(event)
    reused = view.passed(DEVICE, before, event)
    assert reused == advance_link(before, event, "device")
    assert view.passed(DEVICE, LinkState.from_bytes(before.to_bytes()), event) is None
    assert view.passed(DEVICE, before, signup("b", START + 1000)) is None  # an equal copy
    assert view.passed(DEVICE, before, signup("c", START + 1000)) is None
    assert view.passed(NET, before, event) is None
    unkept = LinkView(lambda key: before)
    unkept.facts(event)
    assert unkept.passed(DEVICE, before, event) is None


def test_the_link_copy_of_the_event_just_decided_is_known_without_parsing() -> None:
    view = LinkView(lambda key: LinkState(), keep_passes=True)
    event = signup("b", START + 1000)
    copy = orjson.dumps(link_document(event))
    assert view.sent(copy) is None  # nothing decided yet
    view.facts(event)
    view.decided(event, copy)
    assert view.sent(copy) is event
    assert view.sent(orjson.dumps(link_document(signup("c", START + 1000)))) is None
    unkept = LinkView(lambda key: LinkState())
    unkept.decided(event, copy)
    assert unkept.sent(copy) is None


def test_the_overlay_is_folded_one_step_an_event_while_the_link_stage_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deciding an event on a device costs one step of the device's fold (the pass its
    facts were read with), and a view that moves on to a state the fold passed through
    keeps the rest of it: a busy device is never folded again from its view's state,
    and its facts are those of laying the overlay over the view."""
    steps = []

    def counted(state: LinkState, event: Event, kind: str) -> LinkState:
        steps.append(event.event_id)
        return advance_link(state, event, kind)

    monkeypatch.setattr(view_module, "advance_link", counted)
    clock = FakeClock()
    rows: dict[bytes, bytes | None] = {}
    view = LinkView(stored_states(rows), now_ms=clock.now_ms)
    events = [signup(f"u-{n}", START + n * 1000) for n in range(30)]
    for n, event in enumerate(events):
        clock.now += 10
        if n % 5 == 4:  # the link stage passes all but the last three
            rows.update(stored(*events[: n - 3]))
        fresh = LinkView(view.state_of, now_ms=clock.now_ms)
        fresh.overlay = {k: type(r)(r, r.maxlen) for k, r in view.overlay.items()}
        expected = fresh.facts(event)  # a fold of the whole overlay, from the view's state
        steps.clear()
        assert view.facts(event) == expected
        view.decided(event)
        assert steps == []  # read over the kept fold, laid over it with that very pass


def test_an_event_is_held_from_its_facts_to_its_decision_only() -> None:
    """The pass kept for ``decided`` does not keep the event in memory longer than the
    overlay would (docs/privacy.md): it goes with the decision, or with the next prune
    for an event read and never decided."""
    clock = FakeClock()
    view = LinkView(stored_states({}), now_ms=clock.now_ms)
    decided = signup("u-1")
    decide(view, decided)
    assert view.last_read[0] is None
    view.facts(signup("u-2"))  # a repeat or a dead letter: read, never decided
    view.prune()
    assert view.last_read[0] is None
