"""app/programs/shipped/: the programs load, say what the reward teams asked, stay documented."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.contract.schemas import load_schema
from app.programs import (
    CHANNELS,
    NEVER_TRIGGERS,
    TRIGGER_TYPES,
    Expression,
    Program,
    evaluate_rule,
    list_builtin,
    load_builtin,
    resolve_amount,
)
from app.programs.loader import BUILTIN_DIR
from app.programs.names import ELIGIBILITY_ONLY, protected_term_in
from app.settings import Settings

SHIPPED = ["bank-rewards", "retail-loyalty"]


def rule(program: Program, reward_id: str, name: str) -> Expression:
    return next(r.expression for r in program.reward(reward_id).eligibility if r.name == name)


def test_the_shipped_programs_are_listed_and_load() -> None:
    assert list_builtin() == SHIPPED
    for name in SHIPPED:
        program = load_builtin(name)
        assert program.id == name
        raw = (BUILTIN_DIR / f"{name}.yaml").read_bytes()
        assert program.source_sha256 == hashlib.sha256(raw).hexdigest()
        assert load_builtin(str(BUILTIN_DIR / f"{name}.yaml")) == program


def test_the_default_setting_names_a_shipped_program() -> None:
    assert Settings.from_env(environ={"HOME": "/home/someone"}).program == "retail-loyalty"
    assert load_builtin("retail-loyalty").currency == "EUR"


def test_retail_loyalty() -> None:
    program = load_builtin("retail-loyalty")
    assert set(program.triggers) == {"signup", "purchase", "session_start", "survey", "referral"}
    assert program.profile_fields == ("age", "country", "segment")
    welcome = program.reward("welcome-points")
    assert (welcome.kind, welcome.triggers, welcome.value, welcome.cost) == (
        "points",
        ("signup",),
        5.0,
        0.5,
    )
    cashback = program.reward("cashback")
    assert cashback.triggers == ("purchase",)
    purchase = {"amount": 60.0, "currency": "EUR"}
    assert resolve_amount(cashback.value, purchase) == pytest.approx(3.0)
    assert resolve_amount(cashback.cost, {"amount": 1000.0}) == 20.0
    assert evaluate_rule(rule(program, "free-shipping", "has-purchased"), {"purchases": 0}) is False
    assert evaluate_rule(rule(program, "vip-badge", "ten-purchases"), {"purchases": 10}) is True
    assert program.reward("referral-bonus").triggers == ("referral",)
    assert any(reward.stock is not None for reward in program.rewards)
    assert program.budgets.total == 100_000
    assert program.budgets.per_user == 200
    assert [(p.window.text, p.limit) for p in program.budgets.periods] == [
        ("1d", 5000),
        ("7d", 25000),
    ]
    contact = program.contact
    assert (contact.max_per_day, contact.max_per_week) == (3, 10)
    assert contact.per_channel["email"].max_per_week == 2
    assert contact.per_channel["sms"].max_per_week == 1
    assert contact.suppression is not None
    suppression = contact.suppression
    assert (suppression.dismissals, suppression.within.text, suppression.lasts.text) == (
        3,
        "14d",
        "30d",
    )
    assert program.marketing_channels == ("email", "sms")
    assert (program.consent_defaults.personalization, program.consent_defaults.marketing) == (
        True,
        True,
    )
    assert program.non_personalized_default == "bonus-points"
    learning = program.learning
    assert (learning.epsilon, learning.prior, learning.response_window.text) == (0.05, 0.15, "3d")
    assert (learning.learning_rate, learning.min_priority) == (0.2, 0.25)
    assert (learning.epsilon_half_after, learning.min_epsilon) == (3, 0.01)


def test_bonus_points_once_a_day_holds_for_a_user_never_rewarded() -> None:
    once_a_day = rule(load_builtin("retail-loyalty"), "bonus-points", "once-a-day")
    assert evaluate_rule(once_a_day, {"rewards_granted": 0}) is True
    assert evaluate_rule(once_a_day, {"rewards_granted": 2, "days_since_last_reward": 0.5}) is False
    assert evaluate_rule(once_a_day, {"rewards_granted": 2, "days_since_last_reward": 3}) is True


@pytest.mark.parametrize(
    ("age", "holds"), [(17, False), (18, True), (64, True), (None, None), ("18", None)]
)
def test_the_credit_card_is_offered_to_adults_only(age: object, holds: bool | None) -> None:
    program = load_builtin("bank-rewards")
    card = program.reward("credit-card")
    assert card.kind == "credit_card"
    assert evaluate_rule(rule(program, "credit-card", "adult"), {"age": age}) is holds


def test_the_credit_card_is_offered_in_licensed_countries_only() -> None:
    licensed = rule(load_builtin("bank-rewards"), "credit-card", "licensed-country")
    assert evaluate_rule(licensed, {"country": "DE"}) is True
    assert evaluate_rule(licensed, {"country": "GB"}) is False
    assert evaluate_rule(licensed, {}) is None


def test_bank_rewards() -> None:
    program = load_builtin("bank-rewards")
    assert {"credit-card", "savings-bonus", "cashback", "fee-free-month"} <= {
        reward.id for reward in program.rewards
    }
    assert program.reward("cashback").triggers == ("purchase",)
    assert program.consent_defaults.marketing is False
    assert program.non_personalized_default == "fee-free-month"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_programs_respect_the_protected_attribute_rules(name: str) -> None:
    program = load_builtin(name)
    assert all(protected_term_in(field) is None for field in program.profile_fields)
    for reward in program.rewards:
        for amount in (reward.value, reward.cost):
            if isinstance(amount, Expression):
                assert not amount.names & ELIGIBILITY_ONLY


def test_the_vocabulary_matches_the_event_contract() -> None:
    properties = load_schema("event")["properties"]
    assert set(CHANNELS) == set(properties["channel"]["enum"])
    assert set(TRIGGER_TYPES) | set(NEVER_TRIGGERS) == set(properties["type"]["enum"])
    assert not set(TRIGGER_TYPES) & set(NEVER_TRIGGERS)


# Keys whose children are names the program's author chooses, not format keys.
_AUTHOR_NAMED = {"eligibility", "levers", "per_channel"}


def _format_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            if key not in _AUTHOR_NAMED:
                yield from _format_keys(value)
            elif key == "per_channel":
                for limits in value.values():
                    yield from _format_keys(limits)
    elif isinstance(node, list):
        for item in node:
            yield from _format_keys(item)


def test_the_readme_documents_every_key_the_shipped_programs_use() -> None:
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    for name in SHIPPED:
        document = yaml.safe_load(Path(BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        for key in set(_format_keys(document)):
            assert f"`{key}`" in readme, f"app/programs/shipped/README.md does not document {key!r}"
