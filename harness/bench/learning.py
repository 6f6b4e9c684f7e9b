"""Learning-quality benchmark: does the engine learn what users want, within budget?

Every policy below faces the same simulated population (same seed, same events):

- ``engine``: the real engine, learning online from outcomes, exploring with
  the program's epsilon;
- ``random``: the same gates (rules, consent, contact, budgets, stock), then a
  uniformly random eligible reward;
- ``oracle``: the same gates and priority formula, with the users' true
  redemption probabilities instead of learned ones (a custom policy through
  ``Engine(policy=...)``);
- ``oracle_at_reference``: the oracle with the program's minimum priority raised to
  :data:`REFERENCE_MIN_PRIORITY` (only for a program below it); the targets are judged
  against whichever of the two oracles' grants redeem better;
- ``oracle_blind_<k>``: the oracle blind to each user's tastes for the user's first
  ``k`` events: until then it knows only the population's average for the reward's
  kind and channel. How many events a learner may take to know a user decides how
  much of the oracle's lift it can capture; these rows say it in the benchmark's own
  figures (a yardstick, not a target);
- ``undefended``: the engine with fraud scoring and the new-account pending
  period off (``fraud.enabled: false``, no ``new_account_pending``), to show
  what the defences cost learning.

Each is the program's own settings or the public policy interface: nothing
overrides the engine's internals. Every policy runs as the worker runs it: each event
through :class:`app.pipeline.Pipeline` (validation, the user's row, the link facts of
their device, the timers that close offers of users who never answer), on one
partition.

Reported per policy: rewards granted, redemption rate, budget spent, and an
independent audit of every budget, stock and contact limit against the grants.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
from prometheus_client import CollectorRegistry

from app.contract.records import Decision, SourcePosition
from app.decisioning.engine import Engine
from app.decisioning.policy import Candidate, Pick, Situation
from app.features.state import DAY_MS
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables
from app.programs import Program
from app.programs.model import Exploration
from harness.bench.fraud import undefended_program
from harness.simulation.closed_loop import ClosedLoopSimulator, LoopStats
from harness.simulation.logged import START_MS

POLICIES = ("engine", "random", "oracle", "undefended")
# The minimum priority the learning targets were set against. An oracle with the
# program's own minimum grants more low-value rewards as that minimum falls, and its rate
# per grant falls with it (docs/decisions.md §44): a weaker yardstick would read as
# better learning. With a program below this minimum the oracle also runs at it (row
# ``oracle_at_reference``), and the targets are judged against whichever of the two
# oracles redeems the larger share of its grants.
REFERENCE_MIN_PRIORITY = 0.5
REFERENCE_ORACLE = "oracle_at_reference"
# Changed rows are written back once per this many events, as replay does (app.replay).
FLUSH_EVERY = 1000
DECISION = msgspec.json.Decoder(Decision)


class OraclePolicy:
    """A custom policy through the public interface (:mod:`app.decisioning.policy`): the
    engine's gated candidates re-scored with the users' true redemption probabilities
    instead of learned ones, the best chosen with certainty.

    ``blind_events``: for a user's first this many events (the one decided included),
    the oracle knows only the population's average probability for the reward's kind
    and channel, not the user's own; 0 knows every user from their first event."""

    def __init__(
        self, simulator: ClosedLoopSimulator, min_priority: float, *, blind_events: int = 0
    ) -> None:
        self.simulator = simulator
        self.min_priority = min_priority
        self.blind_events = blind_events

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        blind = situation.user.events <= self.blind_events
        user_id = situation.event.user_id

        def true_priority(c: Candidate) -> float:
            risk_cost = c.propensity * c.value * c.lever - c.priority  # the engine's risk term
            p = (
                self.simulator.mean_probability(c.reward.kind, c.channel)
                if blind
                else self.simulator.true_probability(user_id, c.reward.kind, c.channel)
            )
            return p * c.value * c.lever - risk_cost

        best = max(candidates, key=true_priority)  # ties: the engine's order (first listed)
        if true_priority(best) < self.min_priority:
            return Pick(None, 1.0, "below_minimum")
        return Pick(best, 1.0, "exploit")


def with_exploration(program: Program, exploration: Exploration) -> Program:
    """The program with another ``learning.exploration`` (what a program file can say)."""
    return dataclasses.replace(
        program, learning=dataclasses.replace(program.learning, exploration=exploration)
    )


@dataclasses.dataclass(frozen=True)
class Loop:
    """The closed loop a benchmark runs every policy on: the same users and events."""

    events: int
    users: int
    seed: int
    days: float
    members: float = 0.0  # share of users who joined before the run (0: a launch)
    world: str = "default"  # a name in harness.simulation.closed_loop.WORLDS

    def simulator(self) -> ClosedLoopSimulator:
        return ClosedLoopSimulator(
            users=self.users,
            seed=self.seed,
            start_ms=START_MS,
            days=self.days,
            members=self.members,
            world=self.world,
        )


def run_policy(
    policy: str, program: Program, loop: Loop, *, blind_events: int = 0
) -> tuple[LoopStats, list[str]]:
    """Run one policy over the closed loop; return its stats and any limit violations.
    ``blind_events`` is the oracle's (see :class:`OraclePolicy`)."""
    simulator = loop.simulator()
    # Every policy from the program's own settings and the public policy interface.
    custom: OraclePolicy | None = None
    if policy == "random":
        program = with_exploration(program, "uniform")
    elif policy == "undefended":
        program = undefended_program(program)
    elif policy == "oracle":
        custom = OraclePolicy(simulator, program.learning.min_priority, blind_events=blind_events)
    engine = Engine(program, seed=loop.seed, policy=custom)
    pipeline = Pipeline(engine, Metrics(CollectorRegistry()), max_event_bytes=65_536)
    tables = Tables(users={}, ledgers={})
    kinds = {r.id: r.kind for r in program.rewards}
    levers = {r.id: program.lever_for(r) for r in program.rewards}
    stats = LoopStats()
    for number, event in enumerate(simulator.events(loop.events)):
        source = SourcePosition("closed-loop", 0, number, event.user_id.encode())
        value = orjson.dumps(event.to_document())
        outputs = pipeline.handle(tables, source, value, flush=number % FLUSH_EVERY == 0)
        stats.events += 1
        for output in outputs:
            if output.role == "decisions":
                _count(stats, simulator, DECISION.decode(output.value), kinds, levers)
            elif output.role == "dead-letter":  # the simulator's events are all valid
                raise RuntimeError(f"the pipeline dead-lettered {value!r}: {output.value!r}")
    return stats, audit(program, stats)


def _count(
    stats: LoopStats,
    simulator: ClosedLoopSimulator,
    decision: Decision,
    kinds: dict[str, str],
    levers: dict[str, float],
) -> None:
    stats.decisions += 1
    if decision.status != "granted" or decision.action is None:
        return
    stats.granted += 1
    stats.cost += decision.cost
    stats.explored += "policy.explore" in decision.reasons
    stats.grants.append((decision.ts, decision.user_id, decision.action, decision.cost))
    redeemed = simulator.answer(decision, kinds[decision.action])
    stats.redeemed += redeemed
    stats.worth += decision.value * levers[decision.action] if redeemed else 0.0
    stats.answers.append(redeemed)


def audit(program: Program, stats: LoopStats) -> list[str]:
    """Every budget, stock and contact limit, re-checked from the grants alone."""
    problems: list[str] = []
    budgets, grants = program.budgets, sorted(stats.grants)
    if budgets.total is not None and sum(g[3] for g in grants) > budgets.total + 1e-6:
        problems.append("total budget exceeded")
    for period in budgets.periods:
        if _max_window_sum(grants, period.window.seconds * 1000) > period.limit + 1e-6:
            problems.append(f"{period.window.text} budget exceeded")
    per_user: dict[str, list[tuple[int, str, str, float]]] = defaultdict(list)
    for grant in grants:
        per_user[grant[1]].append(grant)
    for user_grants in per_user.values():
        if budgets.per_user is not None:
            window = budgets.per_user_window
            spent = (
                _max_window_sum(user_grants, window.seconds * 1000)
                if window
                else sum(g[3] for g in user_grants)
            )
            if spent > budgets.per_user + 1e-6:
                problems.append("per-user budget exceeded")
        if program.contact.max_per_day is not None and (
            _max_window_count(user_grants, DAY_MS) > program.contact.max_per_day
        ):
            problems.append("daily contact limit exceeded")
    for reward in program.rewards:
        used = sum(1 for g in grants if g[2] == reward.id)
        if reward.stock is not None and used > reward.stock:
            problems.append(f"stock of {reward.id} exceeded")
    return sorted(set(problems))


def _max_window_sum(grants: list[tuple[int, str, str, float]], window_ms: int) -> float:
    best, total, left = 0.0, 0.0, 0
    for right in range(len(grants)):
        total += grants[right][3]
        while grants[left][0] <= grants[right][0] - window_ms:
            total -= grants[left][3]
            left += 1
        best = max(best, total)
    return best


def _max_window_count(grants: list[tuple[int, str, str, float]], window_ms: int) -> int:
    best, left = 0, 0
    for right in range(len(grants)):
        while grants[left][0] <= grants[right][0] - window_ms:
            left += 1
        best = max(best, right - left + 1)
    return best


def run_benchmark(
    program: Program, loop: Loop, *, blind_oracles: Sequence[int] = ()
) -> dict[str, Any]:
    """Every policy on the same loop, and an oracle blind for a user's first ``k``
    events for each ``k`` in ``blind_oracles``; the report as a dict."""
    report: dict[str, Any] = {
        "program": program.id,
        **dataclasses.asdict(loop),
        "policies": {},
    }
    runs = [(policy, policy, 0, program) for policy in POLICIES]
    if program.learning.min_priority < REFERENCE_MIN_PRIORITY:
        at_reference = dataclasses.replace(
            program,
            learning=dataclasses.replace(program.learning, min_priority=REFERENCE_MIN_PRIORITY),
        )
        runs.append((REFERENCE_ORACLE, "oracle", 0, at_reference))
    runs += [(f"oracle_blind_{k}", "oracle", k, program) for k in blind_oracles]
    # Exact rates (the report's are rounded for reading): targets are judged on these, so
    # that rounding never carries a figure over its target.
    exact: dict[str, tuple[float, list[float]]] = {}
    for name, policy, blind_events, run_program in runs:
        started = time.perf_counter()
        stats, problems = run_policy(policy, run_program, loop, blind_events=blind_events)
        exact[name] = (stats.redemption_rate, stats.rate_by_fifth(digits=None))
        report["policies"][name] = {
            "granted": stats.granted,
            "redeemed": stats.redeemed,
            "redemption_rate": round(stats.redemption_rate, 4),
            "cost": round(stats.cost, 2),
            "worth": round(stats.worth, 2),
            "explored": stats.explored,
            "limit_violations": problems,
            "redemption_rate_by_fifth": stats.rate_by_fifth(),
            "first_fifth_by_reward": first_fifth_by_reward(stats),
            "seconds": round(time.perf_counter() - started, 2),
        }
    policies = report["policies"]
    # The stricter yardstick: the oracle whose grants redeem best (see REFERENCE_ORACLE).
    yardstick = max(
        [name for name in ("oracle", REFERENCE_ORACLE) if name in policies],
        key=lambda name: exact[name][0],
    )
    report["yardstick"] = yardstick
    engine, random_, oracle = (exact[name] for name in ("engine", "random", yardstick))
    report["engine_vs_random"] = engine[0] / max(random_[0], 1e-9)
    report["engine_vs_oracle"] = engine[0] / max(oracle[0], 1e-9)
    report["lift_share"] = lift_share(engine[0], random_[0], oracle[0])
    report["engine_first_fifth"] = engine[1][0] if engine[1] else 0.0
    # Not a target: the program's own objective, beside the rate the targets read.
    report["engine_vs_oracle_worth"] = policies["engine"]["worth"] / max(
        policies[yardstick]["worth"], 1e-9
    )
    report["lift_share_by_fifth"] = [
        lift_share(e, r, o) for e, r, o in zip(engine[1], random_[1], oracle[1], strict=True)
    ]
    report["blind_oracles_lift_share"] = {
        str(k): lift_share(exact[f"oracle_blind_{k}"][0], random_[0], exact["oracle"][0])
        for k in blind_oracles
    }
    return report


def first_fifth_by_reward(stats: LoopStats) -> dict[str, list[int]]:
    """Grants and redemptions per reward over the first fifth of the grants (the part of
    ``rate_by_fifth`` where a launch knows least), most granted first."""
    size = len(stats.answers) // 5
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, _, reward, _), redeemed in zip(stats.grants[:size], stats.answers[:size], strict=True):
        counts[reward][0] += 1
        counts[reward][1] += redeemed
    return dict(sorted(counts.items(), key=lambda item: (-item[1][0], item[0])))


def lift_share(engine: float, random: float, oracle: float) -> float | None:
    """The share of the oracle's lift over random that the engine captures (1: all of
    it, 0: none, below 0: worse than random); None where the oracle does not beat
    random."""
    if oracle - random <= 1e-9:
        return None
    return (engine - random) / (oracle - random)


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, figure, met) for each target: the first two since the benchmark began,
    the rest those of the issue "Know what a policy is worth"."""
    vs_random, vs_oracle = report["engine_vs_random"], report["engine_vs_oracle"]
    share = report.get("lift_share")
    first = report["engine_first_fifth"]
    return [
        ("engine / random redemption rate >= 2.0", f"{vs_random:.4f}", vs_random >= 2.0),
        ("engine / oracle redemption rate >= 0.80", f"{vs_oracle:.4f}", vs_oracle >= 0.8),
        (
            "share of the oracle's lift over random captured >= 0.80",
            "-" if share is None else f"{share:.4f}",
            share is not None and share >= 0.8,
        ),
        ("engine redemption rate in the first fifth >= 0.40", f"{first:.4f}", first >= 0.40),
        ("engine / oracle redemption rate >= 0.85", f"{vs_oracle:.4f}", vs_oracle >= 0.85),
        ("engine / random redemption rate >= 2.1", f"{vs_random:.4f}", vs_random >= 2.1),
    ]


def targets_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a table per policy and the targets beside the figures."""
    rows = [
        "| policy | granted | redeemed | redemption rate | by fifth of the run "
        "| redeemed per 1,000 events | worth per 1,000 events | cost | cost per redemption "
        "| explored | limits |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, p in report["policies"].items():
        limits = "all kept" if not p["limit_violations"] else "; ".join(p["limit_violations"])
        fifths = " ".join(f"{r:.2f}" for r in p["redemption_rate_by_fifth"])
        per_1000 = 1000 * p["redeemed"] / max(report["events"], 1)
        worth_per_1000 = 1000 * p.get("worth", 0.0) / max(report["events"], 1)
        per_redemption = p["cost"] / max(p["redeemed"], 1)
        rows.append(
            f"| {name} | {p['granted']} | {p['redeemed']} | {p['redemption_rate']:.3f} "
            f"| {fifths} | {per_1000:.1f} | {worth_per_1000:.1f} | {p['cost']:,.2f} "
            f"| {per_redemption:.2f} "
            f"| {p['explored']} | {limits} |"
        )
    by_fifth = " ".join(
        "-" if share is None else f"{share:.2f}" for share in report.get("lift_share_by_fifth", [])
    )
    first = _first_fifth_rows(report["policies"])
    blind = _blind_oracles_line(report)
    return "\n".join(
        [
            f"Program `{report['program']}`, {report['events']:,} events, "
            f"{report['users']:,} users over {report['days']:g} simulated days, "
            f"seed {report['seed']}, {_population(report.get('members', 0.0))}"
            f"{_world(report.get('world', 'default'))}.",
            "",
            *rows,
            "",
            *_yardstick_line(report),
            *_worth_line(report),
            "Share of the oracle's lift over random (redemption rate) that the engine "
            f"captures, by fifth of the run: {by_fifth}.",
            "",
            *blind,
            *first,
            "| target | figure | met |",
            "|---|---:|---|",
            *(f"| {label} | {figure} | {_met(met)} |" for label, figure, met in targets(report)),
        ]
    )


def _yardstick_line(report: dict[str, Any]) -> list[str]:
    """Which oracle the targets are judged against, where the program's minimum priority
    is below the reference one (see :data:`REFERENCE_ORACLE`)."""
    if REFERENCE_ORACLE not in report["policies"]:
        return []
    return [
        f"Row `{REFERENCE_ORACLE}` is the oracle with the program's minimum priority raised "
        f"to {REFERENCE_MIN_PRIORITY:g}, the one the targets were set against; the ratios "
        f"and shares below, and the targets, are against `{report['yardstick']}`, the "
        "oracle whose grants redeem the larger share.",
        "",
    ]


def _worth_line(report: dict[str, Any]) -> list[str]:
    """The engine's worth redeemed against the yardstick's: the program's own objective,
    which a rate per grant bought with fewer rewards of high value and low odds lowers."""
    if "engine_vs_oracle_worth" not in report:
        return []
    return [
        "Worth is the value x lever of the rewards redeemed, what the program's priority "
        "maximises (not a target): the engine redeems "
        f"{report['engine_vs_oracle_worth']:.4f} of `{report['yardstick']}`'s worth.",
        "",
    ]


def _first_fifth_rows(policies: dict[str, Any]) -> list[str]:
    """The first fifth of the grants by reward, engine beside oracle: what a launch's
    first grants are, and how well each policy could choose them."""
    engine = policies["engine"].get("first_fifth_by_reward")
    oracle = policies["oracle"].get("first_fifth_by_reward")
    if not engine or not oracle:
        return []
    rows = [
        "The first fifth of the grants, by reward (granted, redemption rate):",
        "",
        "| reward | engine | oracle |",
        "|---|---:|---:|",
    ]
    for reward in dict.fromkeys([*engine, *oracle]):
        cells = []
        for found in (engine, oracle):
            granted, redeemed = found.get(reward, (0, 0))
            cells.append(f"{granted} at {redeemed / granted:.2f}" if granted else "0")
        rows.append(f"| {reward} | {cells[0]} | {cells[1]} |")
    return [*rows, ""]


def _blind_oracles_line(report: dict[str, Any]) -> list[str]:
    """What an oracle blind to each user for their first k events captures: how fast a
    learner must know a user to capture a given share."""
    shares = report.get("blind_oracles_lift_share") or {}
    if not shares:
        return []
    policies = report["policies"]
    parts = [
        f"k = {k}: {'-' if share is None else f'{share:.2f}'} "
        f"(first fifth {policies[f'oracle_blind_{k}']['redemption_rate_by_fifth'][0]:.2f})"
        for k, share in shares.items()
    ]
    return [
        "Share of the oracle's lift over random captured by the oracle when it is blind to "
        "each user's tastes for their first k events (it knows the population's average "
        "per reward kind and channel until then; rows `oracle_blind_k`): "
        f"{'; '.join(parts)}.",
        "",
    ]


def _met(condition: bool) -> str:
    return "yes" if condition else "no"


def _world(world: str) -> str:
    if world == "default":
        return ""
    return (
        f"; world `{world}` (tastes other than the default world's: "
        "harness/simulation/closed_loop.py, WORLDS)"
    )


def _population(members: float) -> str:
    if not members:
        return "a launch: every user signs up during the run"
    return f"a running program: {members:.0%} of users joined before the run"
