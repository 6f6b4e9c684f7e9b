"""What attackers take: the budget an engine grants to attack traffic, per scenario.

Replays labelled attack traffic (:mod:`harness.simulation.attacks`) through the
same pipeline as the worker and counts, per scenario, the rewards and their cost
granted to attacker accounts, beside what normal users got. Run against the
engine as it is, it gives the undefended baseline that the fraud layer is
measured against.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.decisioning.engine import Engine
from app.programs import Program, load_builtin
from app.replay import replay
from harness.simulation.attacks import (
    SCENARIOS,
    AttackConfig,
    LabelledEvent,
    attacker_accounts,
    generate,
)
from harness.simulation.events import START_MS


@dataclass
class Take:
    """Rewards granted to one group of users."""

    accounts: int = 0
    events: int = 0
    granted: int = 0
    cost: float = 0.0
    actions: dict[str, int] = field(default_factory=dict)


def attack_take(engine: Engine, events: list[LabelledEvent]) -> dict[str, Take]:
    """Per scenario (and ``normal``), what ``engine`` granted to those accounts."""
    owners = _scenario_by_account(events)
    takes: dict[str, Take] = defaultdict(Take)
    for scenario, users in attacker_accounts(events).items():
        takes[scenario].accounts = len(users)
    takes["normal"].accounts = len({e.document["user_id"] for e in events} - owners.keys())
    for labelled in events:
        takes[labelled.scenario or "normal"].events += 1
    lines = [orjson.dumps(e.document) for e in events]
    for value in replay(engine, lines, source_name="attacks", max_event_bytes=65_536):
        record: dict[str, Any] = orjson.loads(value)
        if record.get("kind") != "decision" or record["status"] != "granted":
            continue
        take = takes[owners.get(record["user_id"], "normal")]
        take.granted += 1
        take.cost += record["cost"]
        take.actions[record["action"]] = take.actions.get(record["action"], 0) + 1
    return dict(takes)


def _scenario_by_account(events: list[LabelledEvent]) -> dict[str, str]:
    """Attacker account -> its scenario. Replays of normal users' events do not make
    those users attackers: only accounts whose every event is labelled count."""
    labels: dict[str, set[str | None]] = defaultdict(set)
    for labelled in events:
        labels[labelled.document["user_id"]].add(labelled.scenario)
    return {
        user: next(iter(scenarios))  # type: ignore[misc]
        for user, scenarios in labels.items()
        if len(scenarios) == 1 and None not in scenarios
    }


# --- the attack benchmark -------------------------------------------------------------

HOUR_MS = 3_600_000
REPLAY_CODES = ("event.replayed", "event.replayed_altered")
# The seeds the fraud layer's signals, weights and thresholds were set against, by hand,
# looking at this benchmark's figures (`rewardstream bench-fraud`'s default seeds). Figures
# on them are in-sample; any other seed was not looked at while setting them.
TUNING_SEEDS = (1, 2)
# The held-out check the docs quote (docs/benchmarks.md): run after the thresholds were set.
HELD_OUT_SEEDS = (3, 4)


@dataclass
class Detection:
    """Alerts against the truth for one run: units are attacker accounts (or, for
    replayed events, the replayed copies), false flags are normal accounts."""

    positives: int = 0
    caught: int = 0
    false_flags: int = 0  # normal accounts named by an alert
    normal_accounts: int = 0

    @property
    def recall(self) -> float:
        return self.caught / self.positives if self.positives else 1.0

    @property
    def precision(self) -> float:
        flagged = self.caught + self.false_flags
        return self.caught / flagged if flagged else 1.0

    @property
    def false_flag_rate(self) -> float:
        return self.false_flags / self.normal_accounts if self.normal_accounts else 0.0


def detection(
    events: list[LabelledEvent], records: list[dict[str, Any]], scenario: str
) -> Detection:
    """Score the alerts of one run (normal traffic plus ``scenario``) against its labels."""
    owners = _scenario_by_account(events)
    # Normal: accounts none of whose events is an attack (a buyer whose events were
    # replayed sent the replays: not a normal account any more).
    touched = {e.document["user_id"] for e in events if e.scenario is not None}
    normal = {e.document["user_id"] for e in events} - touched
    alerts = [r for r in records if r.get("kind") == "fraud_alert"]
    flagged: set[str] = set()
    for alert in alerts:
        if scenario == "replayed_events" and set(alert["reasons"]) & set(REPLAY_CODES):
            continue  # a replay alert is about the event, counted below, not the account
        flagged.add(alert["user_id"])
        flagged.update(alert["related_users"])
    result = Detection(normal_accounts=len(normal), false_flags=len(flagged & normal))
    if scenario == "replayed_events":
        copies = Counter(e.document["event_id"] for e in events if e.scenario == "replayed_events")
        reported = Counter(a["event_id"] for a in alerts if set(a["reasons"]) & set(REPLAY_CODES))
        result.positives = sum(copies.values())
        result.caught = sum(min(n, reported[event_id]) for event_id, n in copies.items())
        wrong = sum(max(0, n - copies.get(event_id, 0)) for event_id, n in reported.items())
        result.false_flags += wrong
        return result
    attackers = {user for user, owner in owners.items() if owner == scenario}
    result.positives = len(attackers)
    result.caught = len(attackers & flagged)
    return result


def _records(engine: Engine, events: list[LabelledEvent]) -> list[dict[str, Any]]:
    lines = [orjson.dumps(e.document) for e in events]
    return [
        orjson.loads(value)
        for value in replay(engine, lines, source_name="attacks", max_event_bytes=65_536)
    ]


def run_scenario(
    scenario: str | None,
    *,
    seed: int,
    hours: float,
    normal_users: int,
    normal_events: int,
    undefended: bool = True,
) -> dict[str, Any]:
    """One run: normal traffic plus ``scenario`` (None: every scenario), with the fraud layer
    and (``undefended``) without. Returns detection and what attackers took each way."""
    config = AttackConfig(
        seed=seed,
        start_ms=START_MS,
        duration_ms=int(hours * HOUR_MS),
        normal_users=normal_users,
        normal_events=normal_events,
        scenarios=(scenario,) if scenario else SCENARIOS,
    )
    events = generate(config)
    program = load_builtin(config.program)
    owners = _scenario_by_account(events)
    records = _records(Engine(program, seed=seed, partitions=4), events)
    result: dict[str, Any] = {
        "detection": detection(events, records, scenario or "__none__"),
        "lost": _lost(records, owners, events),
        "normal_cost": _granted_cost(records, lambda user: user not in owners),
        "held_normal": _normal_holds(records, owners, "risk"),
        "pending_normal": _normal_holds(records, owners, "pending"),
    }
    if undefended:
        # The same traffic under the program's variants, each from the program alone:
        # without the pending period, with fraud scoring off too (undefended), and each
        # of the three again with budgets that never run out (what attackers would take
        # if nothing else stopped them).
        for budgets in ("shipped", "unlimited"):
            base = program if budgets == "shipped" else unlimited_budgets(program)
            for name, variant in (
                ("defended", base),
                ("without_pending", without_pending(base)),
                ("undefended", undefended_program(base)),
            ):
                if (budgets, name) == ("shipped", "defended"):
                    continue  # the run above
                plain = _records(Engine(variant, seed=seed, partitions=4), events)
                result[f"{budgets}_{name}_lost"] = _lost(plain, owners, events)
                result[f"{budgets}_{name}_normal_cost"] = _granted_cost(
                    plain, lambda user: user not in owners
                )
    return result


def without_pending(program: Program) -> Program:
    """``program`` with no pending period for new accounts (fraud scoring still on)."""
    return dataclasses.replace(
        program, fraud=dataclasses.replace(program.fraud, new_account_pending=None)
    )


def undefended_program(program: Program) -> Program:
    """``program`` with no defence at all: fraud scoring off and no pending period."""
    return dataclasses.replace(
        program,
        fraud=dataclasses.replace(program.fraud, enabled=False, new_account_pending=None),
    )


def unlimited_budgets(program: Program) -> Program:
    """``program`` with budgets and stock that never run out."""
    budgets = dataclasses.replace(program.budgets, total=None, per_user=None, periods=())
    rewards = tuple(dataclasses.replace(r, stock=None) for r in program.rewards)
    return dataclasses.replace(program, budgets=budgets, rewards=rewards)


def _normal_holds(records: list[dict[str, Any]], owners: dict[str, str], hold: str) -> int:
    """Normal users' decisions held for ``hold`` (risk: counted with blocks; pending)."""
    return sum(
        1
        for r in records
        if r.get("kind") == "decision"
        and r["user_id"] not in owners
        and (
            r.get("hold") == hold
            if r["status"] == "held"
            else (hold == "risk" and r["status"] == "blocked")
        )
    )


def _granted_cost(records: list[dict[str, Any]], who: Any) -> float:
    return sum(
        r["cost"]
        for r in records
        if r.get("kind") == "decision" and r["status"] == "granted" and who(r["user_id"])
    )


def _lost(
    records: list[dict[str, Any]], owners: dict[str, str], events: list[LabelledEvent]
) -> float:
    """Cost granted to attacker accounts, plus rewards granted to replayed copies (an event
    decided a second time)."""
    replayed = {e.document["event_id"] for e in events if e.scenario == "replayed_events"}
    seen: set[str] = set()
    lost = 0.0
    for record in records:
        if record.get("kind") != "decision":
            continue
        again = record["event_id"] in seen
        seen.add(record["event_id"])
        if record["status"] != "granted":
            continue
        if record["user_id"] in owners or (again and record["event_id"] in replayed):
            lost += record["cost"]
    return lost


def run_fraud_benchmark(
    *, seeds: tuple[int, ...], hours: float, normal_users: int, normal_events: int
) -> dict[str, Any]:
    """Every scenario alone (precision, recall), then all together (false flags, budget)."""
    report: dict[str, Any] = {
        "seeds": list(seeds),
        # Which of them the thresholds were set on (in-sample) and which are held out.
        "tuning_seeds": [s for s in seeds if s in TUNING_SEEDS],
        "held_out_seeds": [s for s in seeds if s not in TUNING_SEEDS],
        "hours": hours,
        "normal_users": normal_users,
        "normal_events": normal_events,
        "scenarios": {},
    }
    for scenario in SCENARIOS:
        total = Detection()
        for seed in seeds:
            found = run_scenario(
                scenario,
                seed=seed,
                hours=hours,
                normal_users=normal_users,
                normal_events=normal_events,
                undefended=False,
            )["detection"]
            total.positives += found.positives
            total.caught += found.caught
            total.false_flags += found.false_flags
            total.normal_accounts += found.normal_accounts
        report["scenarios"][scenario] = {
            "positives": total.positives,
            "caught": total.caught,
            "false_flags": total.false_flags,
            "recall": round(total.recall, 4),
            "precision": round(total.precision, 4),
        }
    together = Detection()
    sums: Counter[str] = Counter()
    for seed in seeds:
        run = run_scenario(
            None, seed=seed, hours=hours, normal_users=normal_users, normal_events=normal_events
        )
        together.false_flags += run["detection"].false_flags
        together.normal_accounts += run["detection"].normal_accounts
        sums.update({k: v for k, v in run.items() if isinstance(v, int | float)})
    lost, undefended_lost = sums["lost"], sums["shipped_undefended_lost"]

    def ratio(budgets: str, name: str) -> float:
        plain = sums[f"{budgets}_undefended_lost"]
        mine = (
            sums["lost"]
            if (budgets, name) == ("shipped", "defended")
            else sums[f"{budgets}_{name}_lost"]
        )
        return round(mine / plain, 4) if plain else 0.0

    report["all_scenarios"] = {
        "normal_accounts": together.normal_accounts,
        "normal_flagged": together.false_flags,
        "false_flag_rate": round(together.false_flag_rate, 4),
        "normal_decisions_held_or_blocked": sums["held_normal"],
        "normal_decisions_pending": sums["pending_normal"],
        "lost_defended": round(lost, 2),
        "lost_undefended": round(undefended_lost, 2),
        "lost_ratio": ratio("shipped", "defended"),
        "normal_cost_defended": round(sums["normal_cost"], 2),
        "normal_cost_undefended": round(sums["shipped_undefended_normal_cost"], 2),
        # The pending period's share of the defence, and budgets that never run out.
        "lost_without_pending": round(sums["shipped_without_pending_lost"], 2),
        "lost_ratio_without_pending": ratio("shipped", "without_pending"),
        "normal_cost_without_pending": round(sums["shipped_without_pending_normal_cost"], 2),
        "unlimited_lost_defended": round(sums["unlimited_defended_lost"], 2),
        "unlimited_lost_without_pending": round(sums["unlimited_without_pending_lost"], 2),
        "unlimited_lost_undefended": round(sums["unlimited_undefended_lost"], 2),
        "unlimited_lost_ratio": ratio("unlimited", "defended"),
        "unlimited_lost_ratio_without_pending": ratio("unlimited", "without_pending"),
    }
    return report


def _seeds(seeds: list[int]) -> str:
    """``seed 3``, ``seeds 1 and 2``, ``seeds 1, 2 and 3``."""
    words = [str(s) for s in seeds]
    if len(words) == 1:
        return f"seed {words[0]}"
    return f"seeds {', '.join(words[:-1])} and {words[-1]}"


def _are(seeds: list[int]) -> str:
    return "is" if len(seeds) == 1 else "are"


def seeds_sentence(seeds: list[int]) -> str:
    """Which of ``seeds`` chose the fraud layer's thresholds and which are held out."""
    tuned = [s for s in seeds if s in TUNING_SEEDS]
    held = [s for s in seeds if s not in TUNING_SEEDS]
    said = (
        "The fraud layer's signals, weights and thresholds were set by hand while looking "
        f"at {_seeds(list(TUNING_SEEDS))} (the default of `rewardstream bench-fraud`)"
    )
    if not held:
        held_out = " ".join(str(s) for s in HELD_OUT_SEEDS)
        return (
            f"{said}: {_seeds(tuned)} {_are(tuned)} in-sample, not a held-out test "
            f"(held out: `rewardstream bench-fraud --seeds {held_out}`)."
        )
    if not tuned:
        return f"{said}; {_seeds(held)} {_are(held)} held out: not looked at while setting them."
    return (
        f"{said}; here {_seeds(tuned)} {_are(tuned)} in-sample and {_seeds(held)} "
        f"{_are(held)} held out, their figures summed together."
    )


def fraud_markdown(report: dict[str, Any]) -> str:
    """The report as markdown, with the targets beside the figures and which seeds chose
    the thresholds."""
    rows = [
        "| scenario | attackers (or replayed copies) | caught | recall | false flags "
        "| precision | recall >= 0.9 | precision >= 0.95 |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, s in report["scenarios"].items():
        rows.append(
            f"| {name} | {s['positives']} | {s['caught']} | {s['recall']:.3f} "
            f"| {s['false_flags']} | {s['precision']:.3f} | {_yes(s['recall'] >= 0.9)} "
            f"| {_yes(s['precision'] >= 0.95)} |"
        )
    a = report["all_scenarios"]
    seeds = ", ".join(str(s) for s in report["seeds"])
    return "\n".join(
        [
            f"Seeds {seeds}; each run {report['hours']:g} h of {report['normal_users']:,} normal "
            f"users ({report['normal_events']:,} events) plus the attacks of "
            "`harness/simulation/attacks.py`; retail program, 4 partitions, offline replay "
            f"(the same stages as the worker). {seeds_sentence(report['seeds'])} "
            "Each scenario alone:",
            "",
            *rows,
            "",
            "Every scenario together:",
            "",
            "| figure | value | target | met |",
            "|---|---:|---:|---|",
            f"| normal users flagged | {a['normal_flagged']} of {a['normal_accounts']} "
            f"({a['false_flag_rate']:.2%}) | at most 1% | {_yes(a['false_flag_rate'] <= 0.01)} |",
            f"| budget lost to attackers, defended | {a['lost_defended']:.2f} | | |",
            f"| budget lost to attackers, undefended | {a['lost_undefended']:.2f} | | |",
            f"| defended / undefended | {a['lost_ratio']:.3f} | at most 0.05 "
            f"| {_yes(a['lost_ratio'] <= 0.05)} |",
            f"| normal users' decisions held for risk or blocked "
            f"| {a['normal_decisions_held_or_blocked']} | | |",
            f"| normal users' first rewards held for the pending period "
            f"| {a['normal_decisions_pending']} | | |",
            f"| normal users' granted cost, defended / undefended "
            f"| {a['normal_cost_defended']:.2f} / {a['normal_cost_undefended']:.2f} | | |",
            "",
            "What the pending period (`fraud.new_account_pending`) adds: the same traffic "
            "without it (fraud scoring on), and with budgets and stock that never run out "
            "(what attackers take when nothing else stops them). Lost / undefended lost:",
            "",
            "| budgets | with the pending period | without it | undefended lost |",
            "|---|---:|---:|---:|",
            f"| the program's | {a['lost_ratio']:.3f} ({a['lost_defended']:.2f}) "
            f"| {a['lost_ratio_without_pending']:.3f} ({a['lost_without_pending']:.2f}) "
            f"| {a['lost_undefended']:.2f} |",
            f"| never run out | {a['unlimited_lost_ratio']:.3f} "
            f"({a['unlimited_lost_defended']:.2f}) "
            f"| {a['unlimited_lost_ratio_without_pending']:.3f} "
            f"({a['unlimited_lost_without_pending']:.2f}) "
            f"| {a['unlimited_lost_undefended']:.2f} |",
            "",
            f"Normal users' granted cost without the pending period: "
            f"{a['normal_cost_without_pending']:.2f} (with it: {a['normal_cost_defended']:.2f}).",
        ]
    )


def targets_met(report: dict[str, Any]) -> bool:
    a = report["all_scenarios"]
    return (
        all(s["recall"] >= 0.9 and s["precision"] >= 0.95 for s in report["scenarios"].values())
        and a["false_flag_rate"] <= 0.01
        and a["lost_ratio"] <= 0.05
    )


def _yes(condition: bool) -> str:
    return "yes" if condition else "no"
