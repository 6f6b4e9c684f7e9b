"""The decision core: one decision per new event, repeats ignored, ids deterministic."""

from __future__ import annotations

import fastjsonschema
import orjson
import pytest

from app.contract import Decision, Event, decision_id_for
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.features import UserState

check_decision = fastjsonschema.compile(load_schema("decision"))
T0 = 1_772_366_400_000


def ev(event_id: str, type_: str = "page_view", **fields: object) -> Event:
    return Event(event_id=event_id, user_id="u-1", type=type_, ts=T0, **fields)  # type: ignore[arg-type]


def decide(engine: Engine, state: UserState, event: Event) -> tuple[UserState, Decision]:
    outcome = engine.process(state, event)
    assert len(outcome.records) == 1
    record = outcome.records[0]
    assert isinstance(record, Decision)
    check_decision(orjson.loads(record.to_json()))
    return outcome.state, record


def test_signup_grants_the_welcome_reward_once() -> None:
    engine = Engine(program="p")
    state, first = decide(engine, UserState(), ev("e1", "signup", channel="web"))
    assert (first.status, first.action, first.channel) == ("granted", "welcome-points", "web")
    assert first.reasons
    assert first.explanation
    _, second = decide(engine, state, ev("e2", "signup"))
    assert (second.status, second.action) == ("none", None)
    assert "before" in second.explanation


@pytest.mark.parametrize(
    ("amount", "status", "value"),
    [
        (10.0, "none", 0.0),
        (50.0, "granted", 2.5),
        (120.0, "granted", 6.0),
        (1000.0, "granted", 20.0),
    ],
)
def test_cashback_threshold_and_cap(amount: float, status: str, value: float) -> None:
    _, decision = decide(
        Engine(program="p"), UserState(), ev("e1", "purchase", amount=amount, currency="EUR")
    )
    assert (decision.status, decision.value, decision.cost) == (status, value, value)
    assert f"{amount:.2f} EUR" in decision.explanation


def test_every_valid_event_gets_exactly_one_decision() -> None:
    engine = Engine(program="p")
    state = UserState()
    for i, type_ in enumerate(["session_start", "page_view", "survey", "referral"]):
        state, decision = decide(engine, state, ev(f"e{i}", type_))
        assert decision.status == "none"
    assert state.events == 4


def test_repeated_event_id_changes_nothing_and_yields_nothing() -> None:
    engine = Engine(program="p")
    state, _ = decide(engine, UserState(), ev("e1", "purchase", amount=80.0, currency="EUR"))
    repeat = engine.process(state, ev("e1", "purchase", amount=80.0, currency="EUR"))
    assert repeat.duplicate
    assert repeat.records == ()
    assert repeat.state == state


def test_decision_id_depends_only_on_program_user_and_event() -> None:
    _, a = decide(Engine(program="p"), UserState(), ev("e1"))
    _, b = decide(Engine(program="p"), UserState(events=9), ev("e1"))
    _, c = decide(Engine(program="q"), UserState(), ev("e1"))
    assert a.decision_id == b.decision_id == decision_id_for("p", "u-1", "e1")
    assert a.decision_id != c.decision_id


def test_state_tracks_spend_and_rewards_and_survives_serialization() -> None:
    engine = Engine(program="p")
    state, _ = decide(engine, UserState(), ev("e1", "purchase", amount=60.0, currency="EUR"))
    state, _ = decide(engine, state, ev("e2", "purchase", amount=5.0, currency="EUR"))
    assert (state.purchases, state.spend, state.rewards_granted, state.reward_cost) == (
        2,
        65.0,
        1,
        3.0,
    )
    assert UserState.from_bytes(state.to_bytes()) == state
    assert UserState.from_bytes(None) == UserState()
