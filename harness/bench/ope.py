"""How far offline evaluation can be trusted: `rewardstream evaluate`'s estimates against
the truth, which the closed-loop simulator knows.

Per seed, the program runs over a closed loop of simulated users (the logging run:
its events and decisions, every answer included), then `evaluate`'s own path
(:func:`app.evaluation.offline.evaluate_events`) values each candidate policy on that
log. The estimand is what `evaluate` promises: the candidate's expected redemptions
per choice on the logged situations, each choice's immediate answer. The simulator
knows every user's true probability of redeeming each reward on each channel, so the
truth of a candidate on a log is, over the logged choices, the sum over actions of
the candidate's probability times that true probability.

So that a choice's answer depends only on the choice, the program runs without its
pending period for new accounts and without the fraud layer (no simulated user here
is an attacker): with them, a reward chosen for a new account is held and its answer
never comes, which no estimator can know from the choice alone (see the estimators'
module). Budgets, stock and contact limits stay: they act before the choice.

Reported per candidate over the seeds: the mean truth and DR estimate, how many seeds
DR fell within ±10% of the truth, how many its 95% interval covered the truth, and how
many seeds the evaluation refused a number (insufficient support). Targets (issue
"Know what a policy is worth"): for candidates with adequate support, DR within ±10%
and covered in at least 18 of 20 seeds; candidates off the log's support always
refused; a 50,000-event log evaluated in at most 60 s.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.evaluation import Insufficient, Valued
from app.evaluation.offline import (
    Round,
    check_against_log,
    evaluate_events,
    record_rounds,
    redeemed_decisions,
    value_candidates,
)
from app.programs import Program
from app.settings import Settings
from harness.simulation.closed_loop import ClosedLoopSimulator
from harness.simulation.logged import START_MS, logged_closed_loop

# Near the logging policy (its exploration rate changed), farther (uniform), and off
# its support (a minimum priority nothing reaches: no reward where it always grants).
CANDIDATES = ("epsilon=0.0", "epsilon=0.1", "epsilon=0.5", "uniform", "min_priority=1000000")
# A candidate the log cannot support; the evaluation must never give it a number.
OFF_SUPPORT = frozenset({"min_priority=1000000"})
TOLERANCE = 0.10
COVERED_SEEDS = 18  # of 20


@dataclasses.dataclass(frozen=True)
class OpePlan:
    seeds: tuple[int, ...] = tuple(range(1, 21))
    events: int = 20_000
    users: int = 1_000
    days: float = 10.0
    # The logging program explores this much (the shipped program explores 5%, decaying
    # to 1%: too little for any candidate far from it to be valued).
    epsilon: float = 0.2
    timed_events: int = 50_000


def without_pending_or_risk(program: Program, epsilon: float) -> Program:
    """The program as the benchmark logs with it (see the module)."""
    fraud = dataclasses.replace(program.fraud, enabled=False, new_account_pending=None)
    learning = dataclasses.replace(program.learning, epsilon=epsilon, epsilon_half_after=None)
    return dataclasses.replace(program, fraud=fraud, learning=learning)


def truth(
    rounds: Sequence[Round],
    candidate: int,
    simulator: ClosedLoopSimulator,
    kinds: Mapping[str, str],
) -> float:
    """The candidate's true redemptions per logged choice (see the module); ``candidate``
    is its column in the rounds' targets, ``kinds`` each reward's kind."""
    total = 0.0
    for found in rounds:
        for action, probability in found.targets[candidate].items():
            if action is None or probability == 0.0:
                continue
            p = simulator.true_probability(found.user_id, kinds[action], found.channels.get(action))
            total += probability * p
    return total / len(rounds)


def run_ope_benchmark(
    settings: Settings, program: Program, plan: OpePlan, *, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every seed, then the timing of a 50,000-event log; the report as a dict."""
    logging = without_pending_or_risk(program, plan.epsilon)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ("logged (check)", *CANDIDATES)}
    for seed in plan.seeds:
        started = time.perf_counter()
        found = one_seed(settings, logging, plan, seed)
        for name, row in found.items():
            rows[name].append(row)
        say(f"seed {seed}: {time.perf_counter() - started:.1f} s")
    say(f"Timing `evaluate` on a {plan.timed_events:,}-event log...")
    timing = time_evaluation(settings, logging, plan)
    return {
        "plan": dataclasses.asdict(plan),
        "candidates": {name: summarise(name, found) for name, found in rows.items()},
        "timing": timing,
    }


def one_seed(
    settings: Settings, logging: Program, plan: OpePlan, seed: int
) -> dict[str, dict[str, Any]]:
    """One logging run and its evaluation: per candidate, the truth and what was said."""
    simulator = ClosedLoopSimulator(users=plan.users, seed=seed, start_ms=START_MS, days=plan.days)
    kinds = {r.id: r.kind for r in logging.rewards}
    run = logged_closed_loop(
        logging,
        events=plan.events,
        users=plan.users,
        seed=seed,
        days=plan.days,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
        simulator=simulator,
        every_answer=True,
    )
    rounds = record_rounds(
        logging,
        run.lines,
        CANDIDATES,
        seed=seed,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )
    check_against_log(rounds, run.decisions)
    names = ["logged (check)", *CANDIDATES]
    evaluation = value_candidates(rounds, names, set(redeemed_decisions(run.lines)), seed=seed)
    found: dict[str, dict[str, Any]] = {}
    for k, candidate in enumerate(evaluation.candidates):
        true_value = truth(rounds, k, simulator, kinds)
        said = candidate.redemption
        row: dict[str, Any] = {"seed": seed, "truth": true_value, "rounds": evaluation.rounds}
        if isinstance(said, Insufficient):
            row["insufficient"] = said.insufficient
        elif isinstance(said, Valued) and said.dr is not None:
            row |= {
                "dr": said.dr.value,
                "low": said.dr.low,
                "high": said.dr.high,
                "ips": said.ips.value,
                "snips": said.snips.value,
                "ess": said.overlap.effective_sample_size,
            }
        found[candidate.name] = row
    return found


def summarise(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    valued = [r for r in rows if "dr" in r]
    within = sum(abs(r["dr"] - r["truth"]) <= TOLERANCE * r["truth"] for r in valued)
    covered = sum(r["low"] <= r["truth"] <= r["high"] for r in valued)

    def mean(key: str) -> float | None:
        return sum(r[key] for r in valued) / len(valued) if valued else None

    return {
        "seeds": len(rows),
        "refused": len(rows) - len(valued),
        "truth": sum(r["truth"] for r in rows) / len(rows),
        "dr": mean("dr"),
        "ips": mean("ips"),
        "snips": mean("snips"),
        "ess": mean("ess"),
        "within_10pct": within,
        "covered": covered,
        "off_support": name in OFF_SUPPORT,
        "rows": rows,
    }


def time_evaluation(settings: Settings, logging: Program, plan: OpePlan) -> dict[str, Any]:
    """Seconds `evaluate` takes over a ``timed_events``-event log with every candidate."""
    run = logged_closed_loop(
        logging,
        events=plan.timed_events,
        users=plan.users * 2,
        seed=1,
        days=plan.days * 2,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
        every_answer=True,
    )
    started = time.perf_counter()
    evaluation, checked = evaluate_events(
        logging,
        run.lines,
        CANDIDATES,
        seed=1,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
        decisions=run.decisions,
    )
    return {
        "lines": len(run.lines),
        "decisions": len(run.decisions),
        "choices": evaluation.rounds,
        "checked": checked,
        "seconds": time.perf_counter() - started,
    }


def missed_targets(report: dict[str, Any], seeds: int) -> list[str]:
    """What missed its target (empty: every target met)."""
    missed = []
    need = max(1, round(COVERED_SEEDS / 20 * seeds))
    for name, found in report["candidates"].items():
        if found["off_support"]:
            if found["refused"] != found["seeds"]:
                missed.append(
                    f"{name}: given a number in {found['seeds'] - found['refused']} seeds"
                )
            continue
        if found["refused"]:
            continue  # refused somewhere: not a candidate with adequate support
        if found["within_10pct"] < need:
            missed.append(f"{name}: DR within 10% in {found['within_10pct']} of {seeds} seeds")
        if found["covered"] < need:
            missed.append(f"{name}: DR's interval covered the truth in {found['covered']}")
    if report["timing"]["seconds"] > 60.0:
        missed.append(f"evaluating {report['timing']['lines']:,} lines took more than 60 s")
    return missed


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as the body of a docs/benchmarks.md section."""
    plan = report["plan"]
    seeds = len(plan["seeds"])
    lines = [
        f"Seeds {plan['seeds'][0]}-{plan['seeds'][-1]}; each a closed loop of "
        f"{plan['events']:,} events of {plan['users']:,} simulated users over "
        f"{plan['days']:g} days (every answer included), logged by the shipped program "
        f"exploring {plan['epsilon']:.0%} without its pending period or fraud layer, "
        "then `evaluate`'s own path over that log. The truth: each candidate's expected "
        "redemptions per logged choice from the simulator's true probabilities. DR is "
        "doubly robust with a cross-fitted reward model (per reward, a logistic regression on "
        "the logging program's scores of the situation's rewards); intervals take users as "
        "independent.",
        "",
        "| candidate | seeds refused | truth | DR (mean) | IPS (mean) | SNIPS (mean) | ESS (mean) "
        "| DR within ±10% | interval covers truth | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    need = max(1, round(COVERED_SEEDS / 20 * seeds))
    for name, found in report["candidates"].items():
        if found["off_support"]:
            target = "refused in every seed"
        elif found["refused"]:
            target = "(support not adequate in every seed)"
        else:
            target = f">= {need} of {seeds} both"
        lines.append(
            f"| {name} | {found['refused']} | {found['truth']:.4f} | {_fmt(found['dr'])} "
            f"| {_fmt(found['ips'])} | {_fmt(found['snips'])} "
            f"| {'-' if found['ess'] is None else format(found['ess'], ',.0f')} "
            f"| {found['within_10pct']} | {found['covered']} | {target} |"
        )
    timing = report["timing"]
    lines += [
        "",
        f"`evaluate` over a log of {timing['lines']:,} events ({timing['choices']:,} choices, "
        f"every one checked against the decision log), with the {len(CANDIDATES)} candidates: "
        f"{timing['seconds']:.1f} s (target <= 60 s).",
        "",
    ]
    missed = missed_targets(report, seeds)
    lines.append(
        "Targets: all met." if not missed else "Targets missed: " + "; ".join(missed) + "."
    )
    return "\n".join(lines) + "\n"
