"""The decision core, concern by concern: rules, budgets, stock, contact, arbitration,
exploration, consent, explanations and learning. Pure: no Kafka, no clock."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastjsonschema
import msgspec
import orjson
import pytest

from app.contract import Decision, Event, decision_id_for
from app.contract.schemas import load_schema
from app.decisioning import Answer, Engine, Outcome
from app.decisioning.engine import REPEAT_WEIGHT
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.features.derive import from_vector, model_features
from app.programs import Budgets, ModelProfileField, Program, load_builtin, load_program

check_decision = fastjsonschema.compile(load_schema("decision"))
T0 = 1_772_366_400_000
HOUR = 3_600_000
DAY = 24 * HOUR
PROGRAM = load_program(Path(__file__).parents[1] / "fixtures" / "test-program.yaml")


def tuned(program: Program = PROGRAM, **learning: Any) -> Program:
    return dataclasses.replace(program, learning=dataclasses.replace(program.learning, **learning))


def decided(outcome: Outcome) -> Decision:
    """The decision of ``outcome``: its first record (any fraud alerts follow it)."""
    decision = outcome.records[0]
    assert isinstance(decision, Decision)
    return decision


class Run:
    """One user's stream through one engine, keeping state and ledger between events."""

    def __init__(self, engine: Engine, user: str = "u-1") -> None:
        self.engine, self.user = engine, user
        self.state, self.ledger = UserState(), Ledger()
        self.counter = itertools.count()

    def send(self, type_: str, ts: int = T0, **fields: Any) -> Decision:
        event = Event(
            event_id=f"e{next(self.counter)}", user_id=self.user, type=type_, ts=ts, **fields
        )
        outcome = self.engine.process(self.state, self.ledger, event)
        self.state, self.ledger = outcome.user, outcome.ledger
        [decision] = outcome.records
        assert isinstance(decision, Decision)
        check_decision(orjson.loads(decision.to_json()))
        return decision

    def signup(self, **attributes: Any) -> Decision:
        return self.send("signup", channel="web", attributes=attributes)


def new_buyer(n: int) -> Event:
    """The first event of user ``n``: a 30 EUR purchase on the web."""
    return Event(
        event_id=f"e{n}",
        user_id=f"u{n}",
        type="purchase",
        ts=T0,
        amount=30.0,
        currency="EUR",
        channel="web",
    )


def actions(decisions: Iterable[Decision]) -> list[str | None]:
    return [d.action for d in decisions]


# ------------------------------------------------------------------ rules


def test_credit_card_goes_only_to_adults_in_the_bank_program() -> None:
    bank = load_builtin("bank-rewards")
    card = bank.reward("credit-card")
    env = {"age": 17, "country": "DE", "days_since_signup": 30.0}
    from app.decisioning.checks import eligibility

    assert eligibility(card, env)[0].code == "rule.adult:failed"
    assert eligibility(card, {**env, "age": 18})[0].passed
    assert eligibility(card, {**env, "age": None})[0].code == "rule.adult:unknown"


def test_a_failed_rule_is_named_in_reasons_and_sentence() -> None:
    run = Run(Engine(PROGRAM))
    run.signup(age=16)
    decision = run.send("session_start", ts=T0 + HOUR, channel="email")
    assert decision.action != "card"
    assert "skip.card:rule.adult:failed" in decision.reasons
    assert "card (rule adult failed)" in decision.explanation


def test_unknown_age_means_no_card() -> None:
    run = Run(Engine(PROGRAM))
    run.signup()
    decision = run.send("session_start", ts=T0 + HOUR)
    assert "skip.card:rule.adult:unknown" in decision.reasons


def test_cashback_value_follows_the_purchase() -> None:
    run = Run(Engine(tuned(min_priority=0.0)))
    run.signup()
    small = run.send("purchase", ts=T0 + DAY, amount=5.0, currency="EUR", channel="web")
    assert "skip.cashback:rule.min-basket:failed" in small.reasons
    big = run.send("purchase", ts=T0 + 2 * DAY, amount=80.0, currency="EUR", channel="web")
    assert (big.action, big.value, big.cost) == ("cashback", 5.0, 5.0)


# ------------------------------------------------------------------ budgets and stock


def test_per_user_budget_is_never_exceeded() -> None:
    run = Run(Engine(PROGRAM))
    decisions = [run.send("session_start", ts=T0 + i * DAY, channel="web") for i in range(20)]
    granted = [d for d in decisions if d.status == "granted"]
    assert sum(d.cost for d in granted) <= 8
    assert any("budget.per_user:exhausted" in r for d in decisions for r in d.reasons)


def test_total_and_daily_budgets_hold_across_users() -> None:
    engine = Engine(PROGRAM)
    ledger = Ledger()
    spent_by_day: dict[int, float] = {}
    for n in range(60):
        event = Event(
            event_id=f"e{n}",
            user_id=f"u{n}",
            type="session_start",
            ts=T0 + (n // 10) * HOUR,
            channel="web",
        )
        outcome = engine.process(UserState(), ledger, event)
        ledger = outcome.ledger
        decision = decided(outcome)
        spent_by_day[0] = spent_by_day.get(0, 0) + decision.cost
    assert ledger.spent_total <= 12  # the 1-day limit binds before the total of 20
    assert spent_by_day[0] == ledger.spent_total


def test_budget_share_per_partition_splits_the_total() -> None:
    engine = Engine(PROGRAM, partitions=4)  # each partition may spend 20 / 4 = 5
    ledger = Ledger()
    for n in range(30):
        event = Event(
            event_id=f"e{n}", user_id=f"u{n}", type="session_start", ts=T0 + n * DAY, channel="web"
        )
        ledger = engine.process(UserState(), ledger, event, partition=1).ledger
    assert ledger.spent_total == 5


def test_stock_runs_out() -> None:
    engine = Engine(PROGRAM)
    ledger = Ledger()
    cards = 0
    for n in range(6):
        state = UserState()
        for type_, ts, channel in (("signup", T0, "web"), ("session_start", T0 + HOUR, "email")):
            event = Event(
                event_id=f"e{n}{type_}",
                user_id=f"u{n}",
                type=type_,
                ts=ts + n * DAY,
                channel=channel,
                attributes={"age": 30},
            )
            outcome = engine.process(state, ledger, event)
            state, ledger = outcome.user, outcome.ledger
            cards += decided(outcome).action == "card"
    assert cards == 2
    assert ledger.stock_taken("card") == 2


# ------------------------------------------------------------------ contact policy


def test_daily_contact_limit() -> None:
    run = Run(Engine(tuned(min_priority=0.0)))
    decisions = [run.send("session_start", ts=T0 + i * 60_000, channel="web") for i in range(6)]
    assert sum(d.status == "granted" for d in decisions) == 3
    assert "skip.points:contact.daily_limit" in decisions[-1].reasons


def test_email_channel_limit_moves_delivery_to_another_channel() -> None:
    run = Run(Engine(PROGRAM))
    first = run.send("session_start", ts=T0, channel="email")
    second = run.send("session_start", ts=T0 + DAY, channel="email")
    assert (first.action, first.channel) == ("points", "email")
    assert (second.action, second.channel) == ("points", "web")


def test_suppression_after_repeated_dismissals() -> None:
    run = Run(Engine(PROGRAM))
    for day in (0, 1):
        granted = run.send("session_start", ts=T0 + day * DAY, channel="web")
        run.send("reward_dismissed", ts=T0 + day * DAY + HOUR, decision_id=granted.decision_id)
    suppressed = run.send("session_start", ts=T0 + 2 * DAY, channel="web")
    assert suppressed.status == "none"
    assert "skip.points:contact.suppressed" in suppressed.reasons
    later = run.send("session_start", ts=T0 + 6 * DAY, channel="web")
    assert later.status == "granted"


# ------------------------------------------------------------------ arbitration and exploration


def test_highest_priority_wins_and_ties_go_to_the_first_listed() -> None:
    run = Run(Engine(PROGRAM))
    # cashback value 3 x prior 0.5 = 1.5 beats points 2 x 0.5 = 1.0
    assert run.send("purchase", amount=30.0, currency="EUR", channel="web").action == "cashback"
    run2 = Run(Engine(PROGRAM), user="u-2")
    # cashback worth exactly 2: a tie with points, which is listed first
    tie = run2.send("purchase", amount=20.0, currency="EUR", channel="web")
    assert tie.action == "points"
    assert "policy.exploit" in tie.reasons


def test_no_reward_when_nothing_is_worth_it() -> None:
    run = Run(Engine(tuned(min_priority=5.0)))
    decision = run.send("session_start", channel="web")
    assert (decision.status, decision.action) == ("none", None)
    assert decision.reasons[0] == "policy.below_minimum"
    assert "under the program's minimum" in decision.explanation


def test_logged_propensities_are_the_true_choice_probabilities() -> None:
    epsilon = 0.3
    engine = Engine(tuned(epsilon=epsilon), seed=11)
    picks: dict[str | None, list[float]] = {}
    for n in range(3000):
        decision = decided(engine.process(UserState(), Ledger(), new_buyer(n)))
        picks.setdefault(decision.action, []).append(decision.propensity)
    # Two candidates: the best with 1 - eps + eps/2, the other with eps/2.
    assert all(p == pytest.approx(1 - epsilon + epsilon / 2) for p in picks["cashback"])
    assert all(p == pytest.approx(epsilon / 2) for p in picks["points"])
    assert len(picks["points"]) / 3000 == pytest.approx(epsilon / 2, abs=0.03)


def test_exploration_is_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[str | None]:
        engine = Engine(tuned(epsilon=0.5), seed=seed)
        events = [new_buyer(n) for n in range(200)]
        return [decided(engine.process(UserState(), Ledger(), e)).action for e in events]

    assert run(1) == run(1)
    assert run(1) != run(2)


# ------------------------------------------------------------------ consent


def test_personalization_opt_out_gets_only_the_default_and_trains_nothing() -> None:
    engine = Engine(PROGRAM)
    run = Run(engine)
    run.send("consent_updated", attributes={"personalization": False})
    decision = run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    assert (decision.action, decision.propensity) == ("points", 1.0)
    assert decision.reasons[0] == "policy.default"
    run.send("reward_redeemed", ts=T0 + 2 * HOUR, decision_id=decision.decision_id)
    assert engine.models.updates == 0


def offer_prediction(engine: Engine, state: UserState, decision: Decision) -> float:
    """What the model predicts now for the offer ``decision`` made the user."""
    [offer] = [p for p in state.pending if p.decision_id == decision.decision_id]
    return engine.models.predict_one(offer.kind, engine.offer_inputs(offer))


def test_an_answer_carries_the_prediction_the_model_made_before_learning_from_it() -> None:
    engine = Engine(PROGRAM)
    run = Run(engine)
    run.send("signup", channel="web")
    teach = run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    run.send("reward_redeemed", ts=T0 + 2 * HOUR, decision_id=teach.decision_id)
    granted = run.send("purchase", ts=T0 + 3 * HOUR, amount=30.0, currency="EUR", channel="web")
    before = offer_prediction(engine, run.state, granted)
    event = Event(
        event_id="answer",
        user_id=run.user,
        type="reward_dismissed",
        ts=T0 + 4 * HOUR,
        decision_id=granted.decision_id,
    )
    outcome = engine.process(run.state, run.ledger, event)
    assert outcome.answers == (Answer(str(granted.action), False, before),)
    assert outcome.learned == 1
    assert offer_prediction(engine, run.state, granted) < before


def test_an_offer_left_unanswered_is_a_no_and_an_opted_out_user_trains_nothing() -> None:
    engine = Engine(PROGRAM)
    run = Run(engine)
    granted = run.send("session_start", channel="web")
    before = offer_prediction(engine, run.state, granted)
    later = Event(event_id="later", user_id=run.user, type="page_view", ts=T0 + 2 * DAY)
    outcome = engine.process(run.state, run.ledger, later)
    assert outcome.answers == (Answer(str(granted.action), False, before),)

    opted_out = Run(engine, user="u-2")
    opted_out.send("consent_updated", attributes={"personalization": False})
    default = opted_out.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    redeemed = Event(
        event_id="yes",
        user_id="u-2",
        type="reward_redeemed",
        ts=T0 + 2 * HOUR,
        decision_id=default.decision_id,
    )
    outcome = engine.process(opted_out.state, opted_out.ledger, redeemed)
    assert outcome.answers == (Answer("points", True, None),)
    assert outcome.learned == 0


def test_marketing_opt_out_removes_marketing_channels_from_the_next_event_on() -> None:
    run = Run(Engine(PROGRAM))
    run.signup(age=30)
    consent = run.send("consent_updated", ts=T0 + HOUR, attributes={"marketing": False})
    assert consent.status == "none"
    decision = run.send("session_start", ts=T0 + 2 * HOUR, channel="email")
    assert "skip.card:consent.marketing" in decision.reasons
    assert decision.channel != "email"


# ------------------------------------------------------------------ explanations and learning


def test_granted_decision_explains_rules_budget_and_priority() -> None:
    run = Run(Engine(PROGRAM))
    decision = run.send("purchase", amount=30.0, currency="EUR", channel="web")
    assert decision.reasons[:3] == ("policy.exploit", "rule.min-basket:passed", "budget:ok")
    assert decision.explanation.startswith("Granted cashback (worth 3.00 EUR) via web")
    assert "propensity 0.500 x value 3.00 x lever 1.00" in decision.explanation


def test_outcomes_change_the_decisions_that_follow() -> None:
    engine = Engine(tuned(min_priority=0.0))
    before = Run(engine, user="probe").send("purchase", amount=30.0, currency="EUR", channel="web")
    assert before.action == "cashback"
    # Many users dismiss cashback and redeem points: the model must learn it.
    for n in range(40):
        run = Run(engine, user=f"u{n}")
        cashback = run.send("purchase", ts=T0 + n * DAY, amount=30.0, currency="EUR", channel="web")
        assert cashback.action in ("cashback", "points")
        outcome = "reward_redeemed" if cashback.action == "points" else "reward_dismissed"
        run.send(outcome, ts=T0 + n * DAY + HOUR, decision_id=cashback.decision_id)
        points = run.send("session_start", ts=T0 + n * DAY + 2 * HOUR, channel="web")
        if points.action == "points":
            run.send("reward_redeemed", ts=T0 + n * DAY + 3 * HOUR, decision_id=points.decision_id)
    after = Run(engine, user="probe-2").send(
        "purchase", ts=T0 + 50 * DAY, amount=30.0, currency="EUR", channel="web"
    )
    assert after.action == "points"
    assert engine.models.updates > 40
    assert any(r.startswith("feature.") for r in after.reasons)


def taught_by_tenure(program: Program) -> tuple[str | None, str | None]:
    """Customers of few years redeem cashback and dismiss points, long-standing ones
    the reverse; then what a new and an old customer are offered at their first
    purchase here."""
    program = dataclasses.replace(program, profile_fields=(*program.profile_fields, "tenure"))
    engine = Engine(dataclasses.replace(tuned(program, min_priority=0.0), budgets=Budgets()))
    for n in range(60):
        run = Run(engine, user=f"u{n}")
        young = n % 2 == 0
        run.send("consent_updated", ts=T0 + n * DAY, attributes={"tenure": 1 if young else 12})
        for step in range(2):
            ts = T0 + n * DAY + (2 * step + 1) * HOUR
            event = run.send("purchase", ts=ts, amount=30.0, currency="EUR", channel="web")
            if event.action is None:
                continue
            liked = "cashback" if young else "points"
            outcome = "reward_redeemed" if event.action == liked else "reward_dismissed"
            run.send(outcome, ts=ts + HOUR, decision_id=event.decision_id)

    def first_offer(user: str, tenure: int) -> str | None:
        run = Run(engine, user=user)
        run.send("consent_updated", ts=T0 + 70 * DAY, attributes={"tenure": tenure})
        decision = run.send(
            "purchase", ts=T0 + 70 * DAY + HOUR, amount=30.0, currency="EUR", channel="web"
        )
        return decision.action

    return first_offer("new", 2), first_offer("old", 9)


def test_a_model_learns_from_the_profile_fields_the_program_names() -> None:
    by_tenure = dataclasses.replace(
        PROGRAM, model_profile=(ModelProfileField("tenure", bands=(3.0, 8.0)),)
    )
    assert taught_by_tenure(by_tenure) == ("cashback", "points")
    # Without model_profile the models see behaviour only: two users who have done
    # nothing here yet look the same to them, whatever their profile.
    new, old = taught_by_tenure(PROGRAM)
    assert new == old


def test_an_explanation_names_the_profile_group_that_moved_the_score() -> None:
    engine = Engine(
        dataclasses.replace(
            tuned(min_priority=0.0),
            budgets=Budgets(),
            model_profile=(ModelProfileField("country", values=("DE", "FR")),),
        )
    )
    for n in range(30):
        # Users in DE dismiss what they are offered; users elsewhere redeem it.
        for user, country, answer in ((f"u{n}", "DE", "dismissed"), (f"v{n}", "NL", "redeemed")):
            run = Run(engine, user=user)
            run.send("consent_updated", ts=T0 + n * DAY, attributes={"country": country})
            granted = run.send("purchase", ts=T0 + n * DAY + HOUR, amount=30.0, currency="EUR")
            if granted.action is not None:
                answered = T0 + n * DAY + 2 * HOUR
                run.send(f"reward_{answer}", ts=answered, decision_id=granted.decision_id)
    run = Run(engine, user="probe")
    run.send("consent_updated", ts=T0 + 40 * DAY, attributes={"country": "IT"})
    decision = run.send("purchase", ts=T0 + 40 * DAY + HOUR, amount=30.0, currency="EUR")
    codes = [r for r in decision.reasons if r.startswith("feature.profile_country.")]
    # IT counts as "other", the group that redeemed: being in it, and not in DE, raised
    # the score.
    assert any(code.startswith("feature.profile_country.other:+") for code in codes)
    assert not any(code.startswith("feature.profile_country.DE:-") for code in codes)


def test_an_offer_stores_its_profile_groups_and_reads_them_only_under_the_same_fields() -> None:
    tenure = ModelProfileField("tenure", bands=(30.0,))
    country = ModelProfileField("country", values=("DE",))
    program = dataclasses.replace(
        PROGRAM, profile_fields=("country", "tenure"), model_profile=(tenure, country)
    )
    run = Run(Engine(program))
    run.send("consent_updated", attributes={"tenure": 41})  # no country
    granted = run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    [offer] = [p for p in run.state.pending if p.decision_id == granted.decision_id]
    assert offer.features[-2:] == (1.0, -1.0)  # tenure 41: the second band; country: none
    inputs = {k: v for k, v in from_vector(offer.features, (tenure, country)).items() if "." in k}
    assert inputs == {
        "profile_tenure.lt30": 0.0,
        "profile_tenure.ge30": 1.0,
        "profile_country.DE": 0.0,
        "profile_country.other": 0.0,
    }
    # Under a program that names other fields (or none), the codes are not read as
    # theirs: the offer is learned from its behaviour alone.
    others = (
        (),
        (tenure,),
        (country, tenure),  # the same fields in another order
        (tenure, ModelProfileField("country", values=("DE", "FR"))),  # other groups
        (tenure, country, ModelProfileField("segment", values=("a",))),
    )
    for fields in others:
        assert not any(k.startswith("profile_") for k in from_vector(offer.features, fields))
    # An offer stored before the program named any field has no codes.
    assert (
        from_vector(offer.features[:-3], (tenure, country)).keys()
        == from_vector(offer.features).keys()
    )


def test_a_model_tells_apart_two_rewards_of_its_kind() -> None:
    points = PROGRAM.reward("points")
    twin = dataclasses.replace(points, id="points-twin")
    program = dataclasses.replace(
        tuned(min_priority=0.0, epsilon=0.5), rewards=(points, twin), budgets=Budgets()
    )
    engine = Engine(program)
    # Users dismiss the first and redeem its twin: one model scores both, and must
    # learn which is which from the reward alone.
    offered: Counter[str | None] = Counter()
    for n in range(60):
        run = Run(engine, user=f"u{n}")
        for step in range(3):
            ts = T0 + n * DAY + 2 * step * HOUR
            decision = run.send("session_start", ts=ts, channel="web")
            offered[decision.action] += 1
            if decision.action is not None:
                redeemed = decision.action == "points-twin"
                answer = "reward_redeemed" if redeemed else "reward_dismissed"
                run.send(answer, ts=ts + HOUR, decision_id=decision.decision_id)
    assert min(offered["points"], offered["points-twin"]) >= 20

    def score(reward: str) -> float:
        event = Event(event_id="probe", user_id="probe", type="session_start", ts=T0, channel="web")
        features = model_features(UserState(), event, kind="points", channel="web")
        return engine.models.predict_one("points", {**features, **engine.reward_indicators[reward]})

    assert score("points-twin") > 0.7 > 0.3 > score("points")


def test_no_answer_within_the_window_counts_as_not_redeemed() -> None:
    engine = Engine(PROGRAM)
    run = Run(engine)
    run.send("session_start", channel="web")
    assert engine.models.updates == 0
    run.send("page_view", ts=T0 + 2 * DAY)
    assert engine.models.updates == 1
    assert run.state.pending == ()


def test_every_event_gets_one_decision_and_repeats_none() -> None:
    engine = Engine(PROGRAM)
    state, ledger = UserState(), Ledger()
    event = Event(event_id="same", user_id="u", type="page_view", ts=T0)
    first = engine.process(state, ledger, event)
    again = engine.process(first.user, first.ledger, event)
    assert len(first.records) == 1
    # The state counts the copy (each copy's alert gets an id of its own) and the risk it
    # carries: a little for one copy (a producer's retry, perhaps), more with each.
    assert again.duplicate
    assert again.user.repeats == 1
    assert again.user.risk.level == pytest.approx(REPEAT_WEIGHT)
    assert msgspec.structs.replace(again.user, repeats=0, risk=first.user.risk) == first.user
    # No second decision; the repeat is reported.
    assert [r.kind for r in again.records] == ["fraud_alert"]
    assert again.records[0].reasons == ("event.replayed",)
    assert decided(first).decision_id == decision_id_for("test-program", "u", "same")


def test_same_stream_same_decisions() -> None:
    def stream() -> list[Decision]:
        run = Run(Engine(tuned(epsilon=0.2), seed=3))
        out = [run.signup(age=40)]
        for i in range(30):
            out.append(
                run.send(
                    "purchase", ts=T0 + i * HOUR * 5, amount=15.0 + i, currency="EUR", channel="web"
                )
            )
        return out

    assert [d.to_json() for d in stream()] == [d.to_json() for d in stream()]


def test_state_survives_serialization() -> None:
    run = Run(Engine(PROGRAM))
    run.signup(age=30, country="DE")
    run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    assert UserState.from_bytes(run.state.to_bytes()) == run.state
    assert Ledger.from_bytes(run.ledger.to_bytes()) == run.ledger
    assert run.state.profile == {"age": 30, "country": "DE"}


def test_a_lone_reward_below_the_minimum_is_still_explored_sometimes() -> None:
    epsilon = 0.2
    engine = Engine(tuned(epsilon=epsilon, min_priority=5.0), seed=5)
    decisions = [
        decided(
            engine.process(
                UserState(),
                Ledger(),
                Event(
                    event_id=f"e{n}", user_id=f"u{n}", type="session_start", ts=T0, channel="web"
                ),
            )
        )
        for n in range(2000)
    ]
    explored = [d for d in decisions if d.status == "granted"]
    assert {d.propensity for d in explored} == {epsilon}
    assert {d.propensity for d in decisions if d.status == "none"} == {1 - epsilon}
    assert len(explored) / len(decisions) == pytest.approx(epsilon, abs=0.03)


def test_opted_out_user_without_an_applicable_default_gets_an_explained_nothing() -> None:
    run = Run(Engine(PROGRAM))
    run.send("consent_updated", attributes={"personalization": False})
    decision = run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    assert decision.action == "points"
    program = dataclasses.replace(PROGRAM, non_personalized_default=None)
    run = Run(Engine(program))
    run.send("consent_updated", attributes={"personalization": False})
    decision = run.send("purchase", ts=T0 + HOUR, amount=30.0, currency="EUR", channel="web")
    assert decision.status == "none"
    assert "consent.personalization:declined" in decision.reasons
    assert "declined personalization" in decision.explanation


def test_decaying_exploration_logs_the_rate_it_used() -> None:
    program = tuned(epsilon=0.4, epsilon_half_after=1.0, min_epsilon=0.1)
    engine = Engine(program, seed=2)
    run = Run(engine)
    new_user = run.send("purchase", amount=30.0, currency="EUR", channel="web")
    assert new_user.propensity in (pytest.approx(1 - 0.4 + 0.2), pytest.approx(0.2))
    run.send("reward_redeemed", ts=T0 + HOUR, decision_id=new_user.decision_id)
    answered_once = run.send("purchase", ts=T0 + DAY, amount=30.0, currency="EUR", channel="web")
    # One answer: epsilon 0.4 x 1 / (1 + 1) = 0.2, over two candidates.
    assert answered_once.propensity in (pytest.approx(1 - 0.2 + 0.1), pytest.approx(0.1))


def test_a_model_snapshot_restores_the_same_predictions() -> None:
    engine = Engine(tuned(min_priority=0.0))
    for n in range(30):
        run = Run(engine, user=f"u{n}")
        granted = run.send("purchase", ts=T0 + n * HOUR, amount=30.0, currency="EUR", channel="web")
        outcome = "reward_redeemed" if n % 3 else "reward_dismissed"
        run.send(outcome, ts=T0 + n * HOUR + 60_000, decision_id=granted.decision_id)
    snapshot = orjson.loads(orjson.dumps(engine.models.snapshot()))  # through JSON, as stored

    restored = Engine(tuned(min_priority=0.0))
    restored.models.restore(snapshot)
    probe_before = Run(engine, user="probe").send(
        "purchase", ts=T0 + 40 * HOUR, amount=30.0, currency="EUR", channel="web"
    )
    probe_after = Run(restored, user="probe").send(
        "purchase", ts=T0 + 40 * HOUR, amount=30.0, currency="EUR", channel="web"
    )
    assert probe_after.to_json() == probe_before.to_json()
    assert restored.models.updates == engine.models.updates > 0


def test_granted_decision_says_what_is_left_of_each_budget_and_the_stock() -> None:
    run = Run(Engine(PROGRAM))
    first = run.send("session_start", channel="web")
    assert first.action == "points"
    assert {"budget.total_left:19.00", "budget.1d_left:11.00", "budget.per_user_left:7.00"} <= set(
        first.reasons
    )
    run.signup(age=30)
    card = run.send("session_start", ts=T0 + 2 * DAY, channel="email")
    assert card.action == "card"
    assert "stock.card_left:1" in card.reasons
    assert "budget.per_user_left:3.00" in card.reasons  # 8 - 1 (points) - 1 (welcome) - 3


def test_a_repeat_charges_a_grant_the_ledger_lost_and_only_once() -> None:
    """A crash can persist the user's state (the grant) and lose the ledger's charge; the
    event comes back as a repeat, and the ledger must end up charged exactly once."""
    engine = Engine(PROGRAM)
    event = new_buyer(1)
    first = engine.process(UserState(), Ledger(), event)
    [decision] = [r for r in first.records if isinstance(r, Decision)]
    assert decision.status == "granted"
    lost = Ledger()  # the ledger as recovered: without the charge
    again = engine.process(first.user, lost, event)
    assert again.duplicate
    assert again.ledger.spent_total == pytest.approx(decision.cost)
    once_more = engine.process(again.user, again.ledger, event)
    assert once_more.ledger.spent_total == pytest.approx(decision.cost)
