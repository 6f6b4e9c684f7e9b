"""The attack-take harness: what an engine grants to attack traffic, per scenario."""

from __future__ import annotations

from typing import Any

from app.decisioning.engine import Engine
from app.programs import load_builtin
from harness.bench.fraud import (
    HELD_OUT_SEEDS,
    TUNING_SEEDS,
    attack_take,
    fraud_markdown,
    seeds_sentence,
    undefended_program,
    unlimited_budgets,
    without_pending,
)
from harness.simulation.attacks import AttackConfig, attacker_accounts, generate
from harness.simulation.events import START_MS


def test_undefended_engine_pays_the_farms_their_sign_up_rewards() -> None:
    config = AttackConfig(
        seed=3,
        start_ms=START_MS,
        duration_ms=24 * 3_600_000,
        normal_users=200,
        normal_events=3_000,
    )
    events = generate(config)
    program = undefended_program(load_builtin("retail-loyalty"))
    takes = attack_take(Engine(program, seed=7, partitions=4), events)

    farms = takes["account_farm"]
    assert farms.accounts == len(attacker_accounts(events)["account_farm"])
    # Nothing stops a farm yet: nearly every fresh account collects its welcome points
    # (an account that browses before signing up may have been rewarded already).
    assert farms.actions.get("welcome-points", 0) >= 0.9 * farms.accounts
    assert farms.cost > 0
    assert takes["normal"].granted > 0
    assert sum(t.events for t in takes.values()) == len(events)


def fraud_report(seeds: list[int]) -> dict[str, Any]:
    scenario = {"positives": 8, "caught": 8, "false_flags": 0, "recall": 1.0, "precision": 1.0}
    return {
        "seeds": seeds,
        "hours": 36.0,
        "normal_users": 1_000,
        "normal_events": 30_000,
        "scenarios": {"bot_burst": scenario},
        "all_scenarios": {
            "normal_accounts": 1_994,
            "normal_flagged": 0,
            "false_flag_rate": 0.0,
            "normal_decisions_held_or_blocked": 10,
            "lost_defended": 8.0,
            "lost_undefended": 177.8,
            "lost_ratio": 0.045,
            "normal_cost_defended": 9_989.53,
            "normal_cost_undefended": 17_705.11,
            "normal_decisions_pending": 1_250,
            "lost_without_pending": 20.5,
            "lost_ratio_without_pending": 0.1153,
            "normal_cost_without_pending": 10_400.0,
            "unlimited_lost_defended": 9.0,
            "unlimited_lost_without_pending": 30.0,
            "unlimited_lost_undefended": 300.0,
            "unlimited_lost_ratio": 0.03,
            "unlimited_lost_ratio_without_pending": 0.1,
        },
    }


def test_the_table_says_which_seeds_chose_the_thresholds_and_which_are_held_out() -> None:
    assert TUNING_SEEDS == (1, 2)
    assert not set(HELD_OUT_SEEDS) & set(TUNING_SEEDS)
    tuned = fraud_markdown(fraud_report([1, 2]))
    assert "set by hand while looking at seeds 1 and 2" in tuned
    assert "seeds 1 and 2 are in-sample, not a held-out test" in tuned
    assert "`rewardstream bench-fraud --seeds 3 4`" in tuned
    held = fraud_markdown(fraud_report([3, 4]))
    assert "seeds 3 and 4 are held out: not looked at while setting them" in held
    assert "in-sample" not in held
    # The sentence comes before the table it is about.
    assert held.index("held out") < held.index("| scenario |")
    mixed = seeds_sentence([2, 5])
    assert "here seed 2 is in-sample and seed 5 is held out" in mixed


def test_the_variants_are_the_program_with_one_defence_taken_away() -> None:
    retail = load_builtin("retail-loyalty")
    assert retail.fraud.enabled
    assert retail.fraud.new_account_pending is not None
    assert without_pending(retail).fraud.new_account_pending is None
    assert without_pending(retail).fraud.enabled
    assert not undefended_program(retail).fraud.enabled
    assert undefended_program(retail).fraud.new_account_pending is None
    unlimited = unlimited_budgets(retail)
    assert (unlimited.budgets.total, unlimited.budgets.per_user) == (None, None)
    assert unlimited.budgets.periods == ()
    assert all(r.stock is None for r in unlimited.rewards)


def test_the_report_shows_what_the_pending_period_adds() -> None:
    text = fraud_markdown(fraud_report([3, 4]))
    assert "| the program's | 0.045 (8.00) | 0.115 (20.50) | 177.80 |" in text
    assert "| never run out | 0.030 (9.00) | 0.100 (30.00) | 300.00 |" in text
    assert "first rewards held for the pending period | 1250 |" in text
