"""The fraud layer, signal by signal, then in the engine: holds, blocks, labels and alerts.

Pure code: events in event time, no Kafka, no clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import fastjsonschema
import orjson
import pytest

from app.contract import Decision, Event, FraudAlert
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.erasure import link_without, newly_named
from app.features import UserState
from app.fraud import Linker, LinkState, observe_link
from app.fraud.links import LinkFacts, Referral, network_of
from app.fraud.scoring import noisy_or
from app.fraud.signals import (
    Activity,
    activity_signals,
    link_signals,
    observe_activity,
    redemption_signals,
    referral_signals,
)
from app.programs import ContactPolicy, load_builtin

check_decision = fastjsonschema.compile(load_schema("decision"))
check_alert = fastjsonschema.compile(load_schema("fraud_alert"))
T0 = 1_772_366_400_000
SECOND, MINUTE, HOUR = 1_000, 60_000, 3_600_000
RETAIL = load_builtin("retail-loyalty")
# The shipped program holds a new account's first reward for 12 h; most tests look at
# risk alone, without that pending period.
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
ids = itertools.count()


def event(type_: str, ts: int = T0, user: str = "u-1", **fields: Any) -> Event:
    return Event(event_id=f"e{next(ids)}", user_id=user, type=type_, ts=ts, **fields)


def codes(signals: list[Any]) -> set[str]:
    return {s.code for s in signals}


# ------------------------------------------------------------------ per-user signals


def run_activity(events: list[Event]) -> tuple[Activity, list[Any]]:
    activity, signals = Activity(), []
    for item in events:
        after = observe_activity(activity, item)
        signals = activity_signals(activity, after, item)
        activity = after
    return activity, signals


def test_a_burst_of_tiny_purchases_is_flagged_and_a_shopper_is_not() -> None:
    bot = [event("purchase", T0 + i * 5 * SECOND, amount=1.5, currency="EUR") for i in range(5)]
    assert "purchase.tiny_burst" in codes(run_activity(bot)[1])
    shopper = [event("purchase", T0 + i * 2 * HOUR, amount=1.5, currency="EUR") for i in range(5)]
    assert run_activity(shopper)[1] == []


def test_purchases_minutes_apart_are_velocity_and_hours_apart_are_not() -> None:
    fast = [event("purchase", T0 + i * MINUTE, amount=40.0, currency="EUR") for i in range(5)]
    assert "velocity.purchases" in codes(run_activity(fast)[1])
    slow = [event("purchase", T0 + i * HOUR, amount=40.0, currency="EUR") for i in range(5)]
    assert "velocity.purchases" not in codes(run_activity(slow)[1])


def test_many_events_in_a_minute_is_velocity() -> None:
    burst = [event("page_view", T0 + i * SECOND) for i in range(40)]
    found = run_activity(burst)[1]
    assert "velocity.events_per_minute" in codes(found)
    assert "events in a minute" in next(
        s.evidence for s in found if s.code == "velocity.events_per_minute"
    )


def test_events_arriving_out_of_order_are_not_a_burst() -> None:
    # A day of hourly visits, delivered newest first (a backfill, or two devices' paths).
    visits = [event("session_start", T0 + i * HOUR) for i in range(24)]
    assert run_activity(list(reversed(visits)))[1] == []
    activity = run_activity(list(reversed(visits)))[0]
    assert activity.rate("events_1h") < 2.0


def test_redemptions_in_a_burst_are_flagged_only_on_redemptions() -> None:
    redeemed = [
        event("reward_redeemed", T0 + i * 10 * SECOND, decision_id=f"d-{i}") for i in range(6)
    ]
    assert "redemption.burst" in codes(run_activity(redeemed)[1])
    spaced = [event("reward_redeemed", T0 + i * HOUR, decision_id=f"d-{i}") for i in range(6)]
    assert run_activity(spaced)[1] == []


def test_an_amount_far_from_the_users_history_is_an_outlier() -> None:
    history = [event("purchase", T0 + i * HOUR, amount=30.0 + i, currency="EUR") for i in range(6)]
    huge = event("purchase", T0 + 7 * HOUR, amount=5000.0, currency="EUR")
    assert "purchase.amount_outlier" in codes(run_activity([*history, huge])[1])
    usual = event("purchase", T0 + 7 * HOUR, amount=33.0, currency="EUR")
    assert run_activity([*history, usual])[1] == []


def test_a_redemption_of_someone_elses_decision_is_foreign_and_of_an_own_refusal_weak() -> None:
    redeemed = event("reward_redeemed", decision_id="d-x")
    [foreign] = redemption_signals(redeemed, granted=False, granted_ts=None, own=False)
    assert foreign.code == "redemption.foreign"
    assert foreign.weight < 0.5  # one alone may be an answer that overtook its decision
    [third] = redemption_signals(redeemed, granted=False, granted_ts=None, own=False, foreign=3)
    assert third.weight >= 0.9
    [weak] = redemption_signals(redeemed, granted=False, granted_ts=None, own=True)
    assert weak.code == "redemption.not_granted"
    assert weak.weight < 0.5
    assert redemption_signals(redeemed, granted=True, granted_ts=T0 - HOUR, own=True) == []
    [fast] = redemption_signals(redeemed, granted=True, granted_ts=T0 - 10 * SECOND, own=True)
    assert fast.code == "redemption.fast"


def test_self_referral_is_flagged() -> None:
    own = event("referral", attributes={"referred_user_id": "u-1"})
    assert codes(referral_signals(own)) == {"referral.self"}
    friend = event("referral", attributes={"referred_user_id": "u-2"})
    assert referral_signals(friend) == []


def test_noisy_or_adds_up_but_never_reaches_certainty() -> None:
    assert noisy_or([0.5, 0.5]) == pytest.approx(0.75)
    assert noisy_or([]) == 0.0
    assert noisy_or([0.3] * 20) < 1.0


def test_noisy_or_reads_weights_outside_zero_to_one_as_their_nearest_end() -> None:
    """A weight comes from a model or a program's file: out of range it must not turn
    a score negative, above one, or into NaN."""
    assert noisy_or([-0.4, 0.5]) == 0.5
    assert noisy_or([1.7, 0.2]) == 1.0
    assert noisy_or([float("nan"), 0.5]) == 0.5
    assert noisy_or([float("inf")]) == 1.0
    assert noisy_or([float("-inf"), 0.0]) == 0.0


# ------------------------------------------------------------------ link signals


def test_networks_group_addresses_by_slash_24_and_slash_64() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8::1") == "2001:db8::/64"
    assert network_of("not-an-ip") == "not-an-ip"


def test_sign_ups_on_one_device_are_counted_and_name_the_other_accounts() -> None:
    linker = Linker()
    facts: tuple[LinkFacts, ...] = ()
    for n in range(4):
        facts = linker.link(event("signup", T0 + n * MINUTE, user=f"f{n}", device_id="dev-1"))
    [device] = facts
    assert (device.signups_24h, device.accounts_24h) == (4, 4)
    assert set(device.related) == {"f0", "f1", "f2"}
    [signal] = link_signals(facts)
    assert signal.code == "device.signups"
    assert signal.weight >= 0.9
    assert signal.shared


def test_a_household_of_two_is_not_a_farm() -> None:
    linker = Linker()
    linker.link(event("signup", T0, user="mum", device_id="tablet", ip="198.51.100.4"))
    facts = linker.link(
        event("signup", T0 + HOUR, user="son", device_id="tablet", ip="198.51.100.4")
    )
    assert link_signals(facts) == []


def test_the_same_event_twice_counts_once() -> None:
    state = LinkState()
    signup = event("signup", user="a", device_id="dev-1")
    state, first = observe_link(state, signup, "device")
    again, second = observe_link(state, signup, "device")
    assert again == state
    assert first == second


def test_an_event_older_than_every_account_a_full_network_keeps_still_has_its_facts() -> None:
    """A network keeps its 64 most recent accounts: a late event of a 65th account falls
    off at once, and its facts are read all the same (it used to end as an internal
    error, a dead letter)."""
    state = LinkState()
    for n in range(64):
        user = f"u-{n}"
        state, _ = observe_link(state, event("page_view", T0 + n, user, ip="198.51.100.7"), "net")
    late = event("page_view", T0 - 24 * HOUR, "u-late", ip="198.51.100.9")
    after, facts = observe_link(state, late, "net")
    assert "u-late" not in {seen.user_id for seen in after.accounts}
    # The 64 kept (a day ahead of it, so within its 24 h); none on its address.
    assert (facts.accounts_24h, facts.same_ip_24h) == (64, 0)
    assert len(facts.related) == 10


def test_a_link_state_says_when_it_last_saw_anything_whatever_order_events_come_in() -> None:
    """Its time to live is read from ``last_ts`` for every event: events out of order,
    accounts coming back, a full network, a referral, and an account erased."""
    rng = random.Random(3)
    state = LinkState()
    newest = None
    for n in range(300):
        ts = T0 + rng.randrange(0, 48 * HOUR)
        kind = "referral" if n % 50 == 0 else "page_view"
        fields: dict[str, Any] = {"ip": f"198.51.100.{n % 7}"}
        if kind == "referral":
            fields["attributes"] = {"referred_user_id": f"friend-{n}"}
        state, _ = observe_link(state, event(kind, ts, f"u-{rng.randrange(90)}", **fields), "net")
        newest = ts if newest is None else max(newest, ts)
        seen = [*(a.last_ts for a in state.accounts), *(r.ts for r in state.referrals)]
        assert state.last_ts == max(seen)
        keys = [(a.last_ts, a.user_id) for a in state.accounts]
        assert keys == sorted(keys)
    assert state.last_ts == newest
    assert len(state.accounts) == 64  # full: the oldest fell off
    for account in state.accounts[::-1][:5]:  # the newest first
        state = link_without(state, account.user_id)
        seen = [*(a.last_ts for a in state.accounts), *(r.ts for r in state.referrals)]
        assert state.last_ts == max(seen)
    assert LinkState().last_ts is None


def test_referrals_out_of_order_are_kept_in_time_order_and_the_newest_64_stay() -> None:
    """A device's referrals stay oldest first whatever order their events come in: the
    newest is read without a walk, the expired ones leave as a prefix, a full device keeps
    the 64 newest in time, and the erasure index learns the names of a late referral."""
    rng = random.Random(5)
    state = LinkState()
    sent: dict[str, int] = {}
    for n in range(150):
        ts = T0 + rng.randrange(0, 6 * 24 * HOUR)  # within the 7 days a referral is kept
        friend = f"friend-{n}"
        late = event("referral", ts, f"u-{n % 9}", attributes={"referred_user_id": friend})
        before = state
        state, _ = observe_link(state, late, "device")
        sent[friend] = ts
        times = [r.ts for r in state.referrals]
        assert times == sorted(times)
        assert state.last_ts == max(times)
        if friend in {r.referred for r in state.referrals}:  # not older than the 64 kept
            assert {friend, late.user_id} <= set(newly_named(before, state, late.user_id, ts))
    assert len(state.referrals) == 64
    newest = sorted(sent.values())[-64:]
    assert [r.ts for r in state.referrals] == newest
    # A week after the first kept one: the ones older than seven days are gone.
    cut = state.referrals[10].ts
    after, _ = observe_link(state, event("page_view", cut + 7 * 24 * HOUR, "u-x"), "device")
    assert [r.ts for r in after.referrals] == [t for t in newest if t > cut]


def test_a_stored_link_row_with_referrals_out_of_time_order_is_read_in_order() -> None:
    """Rows written before referrals were kept in time order read back in that order."""
    referrals = tuple(Referral(f"f-{ts}", "u-1", T0 + ts) for ts in (5, 1, 3))
    raw = LinkState(referrals=referrals).to_bytes()
    read = LinkState.from_bytes(raw)
    assert [r.ts - T0 for r in read.referrals] == [1, 3, 5]
    assert read.last_ts == T0 + 5
    in_order = LinkState(referrals=read.referrals)
    assert LinkState.from_bytes(in_order.to_bytes()) == in_order


def test_a_friend_who_joins_on_the_referrers_device_is_linked_and_a_ring_closing_too() -> None:
    linker = Linker()
    linker.link(event("signup", T0, user="a", device_id="dev-r"))
    linker.link(
        event(
            "referral",
            T0 + MINUTE,
            user="a",
            device_id="dev-r",
            attributes={"referred_user_id": "b"},
        )
    )
    joined = linker.link(event("signup", T0 + 10 * MINUTE, user="b", device_id="dev-r"))
    assert codes(link_signals(joined)) >= {"referral.linked_device"}
    assert link_signals(joined)[0].related == ("a",)
    closing = linker.link(
        event(
            "referral", T0 + HOUR, user="b", device_id="dev-r", attributes={"referred_user_id": "a"}
        )
    )
    assert "referral.to_linked_device" in codes(link_signals(closing))


def test_a_friend_referred_from_elsewhere_is_not_linked() -> None:
    linker = Linker()
    linker.link(
        event(
            "referral",
            T0,
            user="a",
            device_id="dev-a",
            ip="203.0.113.9",
            attributes={"referred_user_id": "b"},
        )
    )
    joined = linker.link(event("signup", T0 + HOUR, user="b", device_id="dev-b", ip="192.0.2.1"))
    assert link_signals(joined) == []


# ------------------------------------------------------------------ in the engine


class Stream:
    """Several users through one engine and one linker, as offline replay runs them."""

    def __init__(self, program: Any = PROGRAM) -> None:
        self.engine = Engine(program, seed=7)
        self.linker = Linker()
        self.users: dict[str, UserState] = {}
        self.ledger = Ledger()

    def send(self, item: Event) -> tuple[Decision | None, list[FraudAlert]]:
        links = self.linker.link(item)
        outcome = self.engine.process(
            self.users.get(item.user_id, UserState()), self.ledger, item, links=links
        )
        self.users[item.user_id], self.ledger = outcome.user, outcome.ledger
        decisions = [r for r in outcome.records if isinstance(r, Decision)]
        alerts = [r for r in outcome.records if isinstance(r, FraudAlert)]
        for record in decisions:
            check_decision(orjson.loads(record.to_json()))
        for alert in alerts:
            check_alert(orjson.loads(alert.to_json()))
        return (decisions[0] if decisions else None), alerts


def farm(stream: Stream, accounts: int) -> list[tuple[Decision | None, list[FraudAlert]]]:
    return [
        stream.send(
            event(
                "signup",
                T0 + n * 5 * MINUTE,
                user=f"farm-{n}",
                device_id="dev-farm",
                channel="mobile",
                attributes={"age": 25, "country": "DE"},
            )
        )
        for n in range(accounts)
    ]


def test_a_farm_is_paid_until_it_shows_then_blocked_with_reasons_and_alerts() -> None:
    results = farm(Stream(), 6)
    statuses = [d.status for d, _ in results if d]
    # Up to three sign-ups on one device can be a family: paid (the third priced by its risk).
    assert statuses[:3] == ["granted", "granted", "granted"]
    assert "fraud.device.signups" in results[2][0].reasons  # type: ignore[union-attr]
    assert all(s in ("held", "blocked") for s in statuses[3:])
    fourth, alerts = results[3]
    assert fourth is not None
    assert fourth.risk >= PROGRAM.fraud.hold
    assert "fraud.device.signups" in fourth.reasons
    assert "4 accounts signed up on this device in 24 h" in fourth.explanation
    [alert] = alerts
    assert alert.reasons[0] == "device.signups"
    assert set(alert.related_users) == {"farm-0", "farm-1", "farm-2"}


# Without contact limits, so that the fifth purchase of a day can still earn a reward.
UNLIMITED = dataclasses.replace(PROGRAM, contact=ContactPolicy())


def rushed_buyer(stream: Stream, user: str = "rush") -> Decision | None:
    """Five real-sized purchases a minute apart: risky enough to hold, not to block."""
    decision = None
    for k in range(5):
        decision, _ = stream.send(
            event(
                "purchase", T0 + k * MINUTE, user=user, amount=60.0, currency="EUR", channel="web"
            )
        )
    return decision


def test_a_held_reward_is_released_by_a_cleared_label_and_cancelled_by_a_confirmed_one() -> None:
    for verdict, status in (("cleared", "granted"), ("confirmed", "blocked")):
        stream = Stream(UNLIMITED)
        held = rushed_buyer(stream)
        assert held is not None
        assert held.status == "held"
        assert "fraud.velocity.purchases" in held.reasons
        assert "purchases in 10 minutes" in held.explanation
        spent = stream.ledger.spent_total
        label = event("fraud_label", T0 + HOUR, user="rush", attributes={"label": verdict})
        decision, _ = stream.send(label)
        assert decision is not None
        assert decision.status == status
        assert decision.action == held.action
        assert f"hold.{'released' if verdict == 'cleared' else 'cancelled'}:{held.decision_id}" in (
            decision.reasons
        )
        charged = stream.ledger.spent_total - spent
        assert charged == (held.cost if verdict == "cleared" else 0.0)
        assert stream.users["rush"].risk.hold is None


def test_a_cleared_user_is_not_flagged_again_for_sharing_but_a_confirmed_one_is_blocked() -> None:
    stream = Stream()
    farm(stream, 4)
    stream.send(event("fraud_label", T0 + HOUR, user="farm-3", attributes={"label": "cleared"}))
    later, alerts = stream.send(
        event("session_start", T0 + 2 * HOUR, user="farm-3", device_id="dev-farm", channel="web")
    )
    assert later is not None
    assert later.risk < PROGRAM.fraud.hold
    assert alerts == []
    stream.send(event("fraud_label", T0 + HOUR, user="farm-1", attributes={"label": "confirmed"}))
    blocked, _ = stream.send(
        event("purchase", T0 + 3 * HOUR, user="farm-1", amount=80.0, currency="EUR", channel="web")
    )
    assert blocked is not None
    assert blocked.risk == 1.0
    assert blocked.status in ("blocked", "none")


def test_an_unlabelled_hold_expires_with_a_reason_in_the_next_decision() -> None:
    stream = Stream(UNLIMITED)
    held = rushed_buyer(stream)
    assert held is not None
    assert held.status == "held"
    week_later = T0 + 8 * 24 * HOUR
    decision, _ = stream.send(event("page_view", week_later, user="rush"))
    assert decision is not None
    assert f"hold.expired:{held.decision_id}" in decision.reasons


def test_a_replay_with_other_content_is_not_decided_and_makes_the_user_risky() -> None:
    stream = Stream()
    original = event("purchase", T0, user="u-9", amount=30.0, currency="EUR", channel="web")
    stream.send(original)
    bigger = Event(
        event_id=original.event_id,
        user_id="u-9",
        type="purchase",
        ts=T0 + HOUR,
        amount=300.0,
        currency="EUR",
        channel="web",
    )
    decision, [alert] = stream.send(bigger)
    assert decision is None
    assert alert.reasons == ("event.replayed_altered",)
    after, _ = stream.send(
        event("purchase", T0 + 2 * HOUR, user="u-9", amount=60.0, currency="EUR", channel="web")
    )
    assert after is not None
    assert after.risk >= PROGRAM.fraud.hold


def test_normal_customers_are_not_flagged() -> None:
    stream = Stream()
    for n in range(20):
        user = f"c{n}"
        stream.send(
            event(
                "signup",
                T0 + n * HOUR,
                user=user,
                device_id=f"d{n}",
                ip=f"10.0.{n}.1",
                attributes={"age": 30, "country": "DE"},
            )
        )
        for k in range(1, 4):
            decision, alerts = stream.send(
                event(
                    "purchase",
                    T0 + n * HOUR + k * 5 * HOUR,
                    user=user,
                    device_id=f"d{n}",
                    ip=f"10.0.{n}.1",
                    amount=25.0 + k,
                    currency="EUR",
                    channel="web",
                )
            )
            assert alerts == []
            assert decision is not None
            assert decision.risk == 0.0


# ------------------------------------------------------------------ pending period


def test_a_new_accounts_first_reward_waits_out_the_pending_period_then_is_released() -> None:
    assert RETAIL.fraud.new_account_pending is not None
    stream = Stream(RETAIL)
    signup = event("signup", T0, user="new", channel="web", attributes={"age": 30})
    held, alerts = stream.send(signup)
    assert held is not None
    assert (held.status, held.action) == ("held", "welcome-points")
    assert "fraud.new_account_pending" in held.reasons
    assert held.explanation.startswith("Held welcome-points until this new account's 12h")
    assert "flagged" not in held.explanation
    assert alerts == []  # waiting is not suspicion
    assert stream.ledger.spent_total == 0.0
    purchase = event("purchase", T0 + HOUR, user="new", amount=80.0, currency="EUR", channel="web")
    second, _ = stream.send(purchase)
    assert second is not None
    assert (second.status, second.action) == ("none", None)
    assert "hold.pending_open" in second.reasons
    assert second.explanation.startswith("No reward: this new account already has a reward")
    later, _ = stream.send(event("page_view", T0 + 13 * HOUR, user="new", channel="web"))
    assert later is not None
    assert (later.status, later.action) == ("granted", "welcome-points")
    assert f"hold.released:{held.decision_id}" in later.reasons
    assert stream.ledger.spent_total == held.cost
    # Answers to the released reward go to the decision that released it.
    assert stream.users["new"].granted(later.decision_id) is not None


def test_an_account_that_turns_risky_in_its_pending_period_is_not_released() -> None:
    stream = Stream(RETAIL)
    stream.send(event("signup", T0, user="bot", channel="web", attributes={"age": 30}))
    for k in range(10):
        stream.send(
            event("purchase", T0 + HOUR + k * 5 * SECOND, user="bot", amount=1.0, currency="EUR")
        )
    later, _ = stream.send(event("page_view", T0 + 13 * HOUR, user="bot"))
    assert later is not None
    assert later.status == "none"
    assert stream.users["bot"].risk.hold is not None  # waits for an analyst, or expires


def test_link_facts_are_recorded_with_their_counts_and_without_empty_fields() -> None:
    """The form the decision record's ``links`` holds, and replay reads back."""
    bare = LinkFacts("device", accounts_24h=1, signups_24h=0)
    assert bare.to_document() == {
        "kind": "device",
        "accounts_24h": 1,
        "signups_24h": 0,
        "same_ip_24h": 0,
    }
    full = LinkFacts("net", 5, 3, 2, referred_by="u-1", refers_linked="u-2", related=("u-3",))
    assert list(full.to_document().items()) == [
        ("kind", "net"),
        ("accounts_24h", 5),
        ("signups_24h", 3),
        ("same_ip_24h", 2),
        ("referred_by", "u-1"),
        ("refers_linked", "u-2"),
        ("related", ["u-3"]),
    ]
    for facts in (bare, full):
        assert LinkFacts.from_document(facts.to_document()) == facts
