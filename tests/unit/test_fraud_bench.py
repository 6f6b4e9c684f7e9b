"""The attack-take harness: what an engine grants to attack traffic, per scenario."""

from __future__ import annotations

from app.bench.fraud import attack_take
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
