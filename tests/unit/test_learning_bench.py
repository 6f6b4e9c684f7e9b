"""The learning benchmark: runs end to end, and its audit catches broken limits."""

from __future__ import annotations

import dataclasses

import pytest

from app.programs import load_builtin
from harness.bench.learning import audit, lift_share, run_benchmark, targets_markdown
from harness.simulation.closed_loop import LoopStats

PROGRAM = load_builtin("retail-loyalty")
DAY = 86_400_000


def test_small_run_reports_all_policies_and_keeps_every_limit() -> None:
    report = run_benchmark(PROGRAM, events=3_000, users=200, seed=3, days=5)
    assert set(report["policies"]) == {"engine", "random", "oracle", "undefended"}
    for policy in report["policies"].values():
        assert policy["granted"] > 0
        assert policy["limit_violations"] == []
        assert 0.0 <= policy["redemption_rate"] <= 1.0
    # The oracle knows the users' tastes: it must beat a random choice.
    assert (
        report["policies"]["oracle"]["redemption_rate"]
        > report["policies"]["random"]["redemption_rate"]
    )
    table = targets_markdown(report)
    assert "| engine / random redemption rate >= 2.0 |" in table
    assert "| share of the oracle's lift over random captured >= 0.80 |" in table
    engine, random_, oracle = (
        report["policies"][p]["redemption_rate"] for p in ("engine", "random", "oracle")
    )
    assert report["lift_share"] == pytest.approx((engine - random_) / (oracle - random_), abs=1e-3)
    assert len(report["lift_share_by_fifth"]) == 5
    # The first fifth by reward adds up to the first fifth's rate.
    for policy in report["policies"].values():
        counts = policy["first_fifth_by_reward"].values()
        rate = sum(r for _, r in counts) / sum(g for g, _ in counts)
        assert rate == pytest.approx(policy["redemption_rate_by_fifth"][0], abs=1e-3)
    assert "| reward | engine | oracle |" in table


def test_the_lift_share_is_none_where_the_oracle_does_not_beat_random() -> None:
    assert lift_share(0.3, 0.2, 0.4) == 0.5
    assert lift_share(0.1, 0.2, 0.4) == -0.5  # worse than random
    assert lift_share(0.3, 0.2, 0.2) is None


def test_audit_finds_each_kind_of_broken_limit() -> None:
    program = dataclasses.replace(
        PROGRAM,
        budgets=dataclasses.replace(PROGRAM.budgets, total=10.0, per_user=4.0),
    )
    stats = LoopStats()
    stats.grants = [(i * 60_000, "u1", "welcome-points", 3.0) for i in range(5)]
    problems = audit(program, stats)
    assert "total budget exceeded" in problems
    assert "per-user budget exceeded" in problems
    assert "daily contact limit exceeded" in problems
    assert audit(program, LoopStats()) == []


def test_audit_checks_rolling_windows_not_calendar_days() -> None:
    stats = LoopStats()
    # 4,000 late on one day and 4,000 early the next: 8,000 within one rolling day.
    stats.grants = [(DAY - 60_000, f"u{i}", "discount-10", 4.0) for i in range(1000)]
    stats.grants += [(DAY + 60_000, f"v{i}", "discount-10", 4.0) for i in range(1000)]
    assert "1d budget exceeded" in audit(PROGRAM, stats)


def test_every_baseline_comes_from_program_settings_or_the_public_policy_interface() -> None:
    """The random baseline is ``exploration: uniform`` (every decision 1/n among the
    eligible, whatever the program's epsilon decay), the undefended engine is
    ``fraud.enabled: false`` without a pending period, and the oracle is a custom
    policy given to ``Engine(policy=...)``."""
    from harness.bench.learning import OraclePolicy, run_policy, with_exploration

    program = dataclasses.replace(
        PROGRAM,
        learning=dataclasses.replace(PROGRAM.learning, epsilon_half_after=2.0, min_epsilon=0.01),
    )
    assert with_exploration(program, "uniform").learning.exploration == "uniform"
    random_stats, random_problems = run_policy(
        "random", program, events=2_000, users=150, seed=4, days=4
    )
    assert random_problems == []
    assert random_stats.granted > 0
    # Fresh grants are uniform draws (the others release pending holds, or are the
    # standard reward of users who declined personalization); tests/unit/test_policy.py
    # checks the draw itself.
    assert random_stats.explored > 0.6 * random_stats.granted
    undefended, problems = run_policy(
        "undefended", program, events=2_000, users=150, seed=4, days=4
    )
    assert problems == []
    defended, _ = run_policy("engine", program, events=2_000, users=150, seed=4, days=4)
    # Without the pending period new users' first rewards are paid at once: more grants.
    assert undefended.granted > defended.granted
    assert OraclePolicy.choose is not None  # a plain class: no engine internals overridden


def test_closed_loop_runs_in_process_from_the_cli() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "simulate",
            "--closed-loop",
            "--in-process",
            "--events",
            "2000",
            "--users",
            "100",
            "--days",
            "2",
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    summary = result.stderr.decode()
    assert "rewards granted" in summary
    granted = int(summary.split(" rewards granted")[0].rsplit(" ", 1)[1])
    assert granted > 0
