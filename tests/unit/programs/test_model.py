"""The program's values: durations, amounts, levers, lookups, immutability."""

from __future__ import annotations

import dataclasses
import math

import pytest

from app.programs import (
    FrozenMap,
    Program,
    Reward,
    Window,
    compile_expression,
    load_builtin,
    resolve_amount,
)
from app.programs.names import expression_names


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("12h", 43_200),
        ("1d", 86_400),
        ("7d", 604_800),
        ("4w", 2_419_200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert Window.parse(text) == Window(seconds, text)


@pytest.mark.parametrize("text", ["0d", "-1d", "1.5h", "1 d", "d", "7", "7y", "07d", "7D", ""])
def test_bad_durations_say_what_a_duration_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="positive whole number and a unit"):
        Window.parse(text)


def test_resolve_amount() -> None:
    cashback = compile_expression(
        "min(0.05 * amount, 20)", known_names=expression_names([]), where="test"
    )
    assert resolve_amount(4.5, {}) == 4.5
    assert resolve_amount(cashback, {"amount": 64.0}) == pytest.approx(3.2)
    assert resolve_amount(cashback, {"amount": 500}) == 20.0
    assert isinstance(resolve_amount(cashback, {"amount": 500}), float)
    assert resolve_amount(cashback, {"amount": None}) is None
    assert resolve_amount(cashback, {}) is None


@pytest.mark.parametrize(
    ("source", "env"),
    [
        ("amount - 100", {"amount": 50.0}),  # negative
        ("amount > 5", {"amount": 50.0}),  # a truth value, not an amount
        ("channel", {"channel": "web"}),  # text
        ("amount * 10", {"amount": math.inf}),
        ("amount", {"amount": math.nan}),
    ],
)
def test_resolve_amount_refuses_what_is_not_an_amount(source: str, env: dict[str, object]) -> None:
    expression = compile_expression(source, known_names=expression_names([]), where="test")
    assert resolve_amount(expression, env) is None


def test_lever_is_the_rewards_times_its_kinds() -> None:
    program = load_builtin("retail-loyalty")
    cashback = program.reward("cashback")
    assert program.lever_for(cashback) == pytest.approx(cashback.lever * program.levers["cashback"])
    promoted = dataclasses.replace(cashback, lever=2.0)
    assert program.lever_for(promoted) == pytest.approx(2.0 * program.levers["cashback"])
    unlisted = dataclasses.replace(cashback, kind="gift", lever=0.7)
    assert "gift" not in program.levers
    assert program.lever_for(unlisted) == pytest.approx(0.7)


def test_reward_lookup() -> None:
    program = load_builtin("retail-loyalty")
    assert program.reward("vip-badge").kind == "badge"
    with pytest.raises(KeyError, match="no reward 'nope'"):
        program.reward("nope")


def test_programs_are_immutable_and_hashable() -> None:
    first, second = load_builtin("retail-loyalty"), load_builtin("retail-loyalty")
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, load_builtin("bank-rewards")}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.levers["points"] = 9.0  # type: ignore[index]


def test_frozen_map() -> None:
    source = {"a": 1}
    frozen = FrozenMap(source)
    source["b"] = 2  # the map took a copy
    assert dict(frozen) == {"a": 1}
    assert frozen == {"a": 1}
    assert hash(frozen) == hash(FrozenMap({"a": 1}))
    assert frozen.get("z", 5) == 5


def test_defaults_of_a_program_built_in_code() -> None:
    reward = Reward("r", "points", 1.0, 0.1, ("web",), ("signup",))
    program = Program("p", "P", "EUR", ("signup",), (reward,))
    assert program.lever_for(reward) == 1.0
    assert program.consent_defaults.marketing is False
    assert program.learning.epsilon == 0.1
    assert program.learning.response_window.text == "3d"
    assert program.contact.per_channel == {}


def test_exploration_decays_with_a_users_answers_down_to_its_floor() -> None:
    from app.programs import Learning

    fixed = Learning(epsilon=0.1)
    assert [fixed.epsilon_for(n) for n in (0, 5, 500)] == [0.1, 0.1, 0.1]
    decaying = Learning(epsilon=0.1, epsilon_half_after=3, min_epsilon=0.01)
    assert decaying.epsilon_for(0) == 0.1
    assert decaying.epsilon_for(3) == pytest.approx(0.05)
    assert decaying.epsilon_for(6) == pytest.approx(0.1 / 3)
    assert decaying.epsilon_for(10_000) == 0.01
