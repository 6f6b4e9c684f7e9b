"""bench-ope and bench-experiment on small plans: they measure what they say (the
truth from the simulator, refusals, coverage) and their verdicts fail when a target
is missed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.assembly import load_program_setting
from app.settings import Settings
from harness.bench import experiment as bench_experiment
from harness.bench.ope import (
    OFF_SUPPORT,
    OpePlan,
    missed_targets,
    render_markdown,
    run_ope_benchmark,
)


@pytest.fixture(scope="module")
def ope_report() -> dict[str, object]:
    settings = Settings()
    plan = OpePlan(seeds=(1, 2), events=3_000, users=300, days=3, timed_events=2_000)
    return run_ope_benchmark(
        settings, load_program_setting(settings.program), plan, say=lambda _: None
    )


def test_the_off_support_candidate_is_refused_and_the_rest_are_valued(
    ope_report: dict[str, object],
) -> None:
    candidates = ope_report["candidates"]
    assert isinstance(candidates, dict)
    for name, found in candidates.items():
        assert found["seeds"] == 2
        if name in OFF_SUPPORT:
            assert found["refused"] == 2
            assert found["truth"] > 0.0  # it would redeem something: the log cannot say what
        else:
            assert found["refused"] == 0, name
            # Near the log, on the truth the simulator computes, within a few points.
            assert abs(found["dr"] - found["truth"]) < 0.05, name
    logged = candidates["logged (check)"]
    assert logged["ips"] == pytest.approx(logged["snips"])  # every weight 1


def test_a_missed_target_is_reported_as_missed(ope_report: dict[str, object]) -> None:
    broken = copy.deepcopy(ope_report)
    candidates = broken["candidates"]
    assert isinstance(candidates, dict)
    off = next(iter(OFF_SUPPORT))
    candidates[off]["refused"] = 1  # a number given where the log has no support
    candidates["uniform"]["covered"] = 0
    timing = broken["timing"]
    assert isinstance(timing, dict)
    timing["seconds"] = 61.0
    missed = " ".join(missed_targets(broken, 2))
    assert off in missed
    assert "uniform" in missed
    assert "60 s" in missed
    assert "Targets missed" in render_markdown(broken)


def _experiment_bench(**loss: Any) -> dict[str, Any]:
    """The experiment bench on one small seed (and the loss runs ``loss`` asks for)."""
    settings = Settings()
    return bench_experiment.run_experiment_benchmark(
        settings,
        load_program_setting(settings.program),
        seeds=(3,),
        events=3_000,
        users=400,
        days=5,
        holdout=0.2,
        say=lambda _: None,
        **loss,
    )


def test_the_experiment_bench_finds_a_lift_its_interval_covers() -> None:
    found = _experiment_bench()
    (row,) = found["rows"]
    assert row["users"]["holdout"] > 40
    assert found["true_lift"] > 0.0  # the holdout gets nothing, the program something
    assert row["low"] <= found["true_lift"] <= row["high"]
    assert bench_experiment.targets_met(found)
    assert not bench_experiment.targets_met({**found, "srm_passed": 0})


def test_the_experiment_bench_sees_a_loss_of_the_program_arm_where_it_has_the_power() -> None:
    """The loss run drops a share of the program arm's users from the decisions; the
    sample-ratio test must flag it and name that arm, and the split before the loss must
    pass. (Half the arm lost among 2,000 users: far past what the test needs.)"""
    found = _experiment_bench(loss_users=2_000, loss_seeds=(1,), loss=0.5)
    (row,) = found["losses"]
    assert row["users_lost"] > 500
    assert row["loss_flagged"]
    assert row["arm_named"] == bench_experiment.TREATED
    assert not row["correct_mismatch"]
    assert row["detectable_loss"] is not None
    assert row["flag_probability"] > 0.99
    assert bench_experiment.targets_met(found)
    assert "naming the program's arm, in 1 of 1 loss seeds" in bench_experiment.render_markdown(
        found
    )
    unflagged = {**row, "loss_flagged": False}
    assert not bench_experiment.targets_met({**found, "losses": [unflagged]})
