"""The learning benchmark: runs end to end, and its audit catches broken limits."""

from __future__ import annotations

import dataclasses

from app.programs import load_builtin
from harness.bench.learning import audit, run_benchmark, targets_markdown
from harness.simulation.closed_loop import LoopStats

PROGRAM = load_builtin("retail-loyalty")
DAY = 86_400_000


def test_small_run_reports_all_policies_and_keeps_every_limit() -> None:
    report = run_benchmark(PROGRAM, events=3_000, users=200, seed=3, days=5)
    assert set(report["policies"]) == {"engine", "random", "oracle"}
    for policy in report["policies"].values():
        assert policy["granted"] > 0
        assert policy["limit_violations"] == []
        assert 0.0 <= policy["redemption_rate"] <= 1.0
    # The oracle knows the users' tastes: it must beat a random choice.
    assert (
        report["policies"]["oracle"]["redemption_rate"]
        > report["policies"]["random"]["redemption_rate"]
    )
    assert "| engine / random redemption rate >= 2.0 |" in targets_markdown(report)


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


def test_random_and_oracle_policies_do_not_inherit_the_programs_exploration_decay() -> None:
    from harness.bench.learning import _with_epsilon

    program = dataclasses.replace(
        PROGRAM,
        learning=dataclasses.replace(PROGRAM.learning, epsilon_half_after=2.0, min_epsilon=0.01),
    )
    random_policy = _with_epsilon(program, 1.0).learning
    oracle_policy = _with_epsilon(program, 0.0).learning
    assert [random_policy.epsilon_for(n) for n in (0, 10, 1000)] == [1.0, 1.0, 1.0]
    assert [oracle_policy.epsilon_for(n) for n in (0, 10, 1000)] == [0.0, 0.0, 0.0]


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
