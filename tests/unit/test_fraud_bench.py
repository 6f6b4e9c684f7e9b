"""The attack-take harness: what an engine grants to attack traffic, per scenario."""

from __future__ import annotations

from typing import Any

from app.bench.fraud import (
    HELD_OUT_SEEDS,
    TUNING_SEEDS,
    attack_take,
    fraud_markdown,
    seeds_sentence,
)
from app.decisioning.engine import Engine
from app.programs import load_builtin
from app.simulation.attacks import AttackConfig, attacker_accounts, generate


def test_undefended_engine_pays_the_farms_their_sign_up_rewards() -> None:
    config = AttackConfig(
        seed=3,
        start_ms=1_767_225_600_000,
        duration_ms=24 * 3_600_000,
        normal_users=200,
        normal_events=3_000,
    )
    events = generate(config)
    takes = attack_take(
        Engine(load_builtin("retail-loyalty"), seed=7, partitions=4, defend=False), events
    )

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
