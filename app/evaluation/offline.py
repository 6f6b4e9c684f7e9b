"""Candidate policies valued on a log of events, by replaying the logging program over it.

A decision's record holds the probability its policy had of its action, but not the
candidates it chose among, their scores, or what another policy would have done with
them. Those come back by replaying the events through the program that logged them:
the replay reproduces every decision (the engine is deterministic for a seed, and the
decision log can be checked against it), and at each choice :class:`RecordingPolicy`
decides exactly as the logging policy does while writing down, for that very
situation, the logging policy's whole distribution and each candidate policy's.
The answers that followed (``reward_redeemed`` events naming the decision) are the
rewards. :func:`value_candidates` then hands the rounds to
:mod:`app.evaluation.estimators`.

A candidate is a policy over the same gated candidates: another exploration rate,
another minimum priority, uniform choice, or any policy with ``distribution``. Its
program's gates (rules, budgets, contact limits, consent) are not what is evaluated
here; the logged program's are kept, because only the situations the log holds can
be valued from it. Changing gates changes which situations arise at all: that is what
replaying the events under another program compares, not this.

In a program that runs an experiment, the rounds are the choices of the arms that
choose with the program's own policy; an arm with a learning block of its own, a
control and a holdout make no such choices, and their decisions are not valued here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.contract.records import decision_id_for
from app.decisioning.engine import Engine
from app.decisioning.policy import (
    Action,
    Candidate,
    Pick,
    Policy,
    Situation,
    choice_probabilities,
    policy_for,
)
from app.evaluation.estimators import (
    DEFAULT_THRESHOLDS,
    Estimate,
    Insufficient,
    LoggedChoice,
    LoggedRounds,
    Thresholds,
    Valued,
    cross_fitted_rewards,
    evaluate,
    tabulate,
)
from app.programs import Program, load_program
from app.replay import replay
from app.shadow import SHADOW_KIND

# The decision log keeps a propensity to 6 decimals (app.decisioning.engine).
LOGGED_PROPENSITY_DECIMALS = 6
REDEEMED = "reward_redeemed"


@dataclass(frozen=True, slots=True)
class Round:
    """One choice the logging policy made: among which rewards, what it took and with
    what probability, its whole distribution there, each candidate's distribution
    there, and each reward's value to the program."""

    decision_id: str
    user_id: str
    action: Action
    propensity: float
    logging: Mapping[Action, float]
    targets: tuple[Mapping[Action, float], ...]
    values: Mapping[Action, float]
    # The channel each reward would go out on (what a simulator's answer depends on).
    channels: Mapping[Action, str | None] = field(default_factory=dict)
    # The logging program's modelled chance that each reward is redeemed here (its
    # candidates' propensity, before any policy chose): what doubly robust's reward
    # model reads, so that it knows a reward's chance where it was the model's pick
    # from its chance where exploration drew it.
    scores: Mapping[Action, float] = field(default_factory=dict)


class RecordingPolicy:
    """Chooses as ``logging`` does (the very same draws, so a replay decides as the log
    did) and records a :class:`Round` at every choice, with the distribution of each
    of ``candidates`` in the same situation."""

    def __init__(self, logging: Policy, candidates: Sequence[Policy]) -> None:
        self.logging = logging
        self.candidates = tuple(candidates)
        self.rounds: list[Round] = []

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        pick = self.logging.choose(candidates, situation)
        logging = choice_probabilities(self.logging, candidates, situation)
        chosen = None if pick.chosen is None else pick.chosen.reward.id
        self.rounds.append(
            Round(
                decision_id=situation.decision_id,
                user_id=situation.event.user_id,
                action=chosen,
                propensity=pick.probability,
                logging=logging,
                targets=tuple(
                    choice_probabilities(p, candidates, situation) for p in self.candidates
                ),
                values={c.reward.id: c.value for c in candidates},
                channels={c.reward.id: c.channel for c in candidates},
                scores={c.reward.id: c.propensity for c in candidates},
            )
        )
        return pick

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        return choice_probabilities(self.logging, candidates, situation)


class LogMismatchError(ValueError):
    """The replay does not reproduce the decision log it is checked against."""


def redeemed_decisions(lines: Iterable[bytes]) -> Iterator[str]:
    """The decision ids that ``reward_redeemed`` events among ``lines`` name (lines that
    are not such events, or not JSON, are skipped: the replay dead-letters them)."""
    for line in lines:
        if REDEEMED.encode() not in line:
            continue  # most lines: no parse
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(document, dict) and document.get("type") == REDEEMED:
            decision = document.get("decision_id")
            if isinstance(decision, str):
                yield decision


def check_against_log(rounds: Sequence[Round], decisions: Iterable[Mapping[str, object]]) -> int:
    """Check each round against the logged decision of the same id (its action and its
    propensity as logged); return how many were checked. Raises
    :class:`LogMismatchError` at the first that differs: the estimates would then be of
    a log other than the one the replay made."""
    logged = {
        d["decision_id"]: d
        for d in decisions
        if d.get("kind", "decision") == "decision" and isinstance(d.get("decision_id"), str)
    }
    checked = 0
    for found in rounds:
        record = logged.get(found.decision_id)
        if record is None:
            continue
        expected = round(found.propensity, LOGGED_PROPENSITY_DECIMALS)
        # A chosen reward that its verdict then refused (a second reward in a new
        # account's pending period) is logged with no action: only its propensity shows.
        action = record.get("action")
        if (action is not None and action != found.action) or record.get("propensity") != expected:
            raise LogMismatchError(
                f"decision {found.decision_id}: the log says action {record.get('action')!r} "
                f"with propensity {record.get('propensity')}, the replay {found.action!r} "
                f"with {expected} (another program, seed or partition count than the log's?)"
            )
        checked += 1
    return checked


@dataclass(frozen=True, slots=True)
class CandidateValue:
    """One candidate's estimates: the redemption rate and the value per decision
    (each Valued, or Insufficient with why)."""

    name: str
    redemption: Valued | Insufficient
    value: Valued | Insufficient


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the log says of each candidate, and of the logging policy itself."""

    rounds: int
    redeemed: int
    observed_redemption: float
    observed_value: float
    candidates: tuple[CandidateValue, ...] = field(default=())
    # What a reader must know about what was and was not valued.
    notes: tuple[str, ...] = ()


def value_candidates(
    rounds: Sequence[Round],
    names: Sequence[str],
    redeemed: set[str],
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    seed: int = 0,
) -> Evaluation:
    """Each candidate's redemption rate and value per decision (the reward's value when
    redeemed, else 0) on ``rounds``, by IPS, SNIPS and cross-fitted doubly robust, or
    insufficient support."""
    if len(rounds) < 2:
        raise ValueError(f"the log holds {len(rounds)} choices; at least 2 are needed")
    actions = sorted({a for r in rounds for a in r.logging}, key=lambda a: (a is None, a or ""))
    took = [r.action is not None and r.decision_id in redeemed for r in rounds]
    outcomes = {
        "redemption": [1.0 if t else 0.0 for t in took],
        "value": [
            r.values.get(r.action, 0.0) if t else 0.0 for r, t in zip(rounds, took, strict=True)
        ],
    }
    # The reward model: per action, a logistic regression of redemption on the logging
    # program's scores of every reward in the situation (0 where one was not a
    # candidate); a value is the reward's value times its chance of redemption.
    scores = np.array([[r.scores.get(a, 0.0) if a else 0.0 for a in actions] for r in rounds])
    values = np.array([[r.values.get(a, 0.0) if a else 0.0 for a in actions] for r in rounds])

    def table(k: int, rewards: list[float]) -> LoggedRounds:
        return tabulate(
            [
                LoggedChoice(
                    r.action, r.propensity, reward, r.targets[k], r.logging, unit=r.user_id
                )
                for r, reward in zip(rounds, rewards, strict=True)
            ],
            actions,
        )

    if not names:
        raise ValueError("no candidate to value")
    # Fitted on the actions and answers alone: the same for every candidate.
    redemption = cross_fitted_rewards(table(0, outcomes["redemption"]), scores, seed=seed)
    predicted = {"redemption": redemption, "value": values * redemption}
    valued = []
    for k, name in enumerate(names):
        found: dict[str, Valued | Insufficient] = {}
        for outcome, rewards in outcomes.items():
            found[outcome] = evaluate(table(k, rewards), predicted[outcome], thresholds=thresholds)
        valued.append(CandidateValue(name, found["redemption"], found["value"]))
    return Evaluation(
        rounds=len(rounds),
        redeemed=sum(took),
        observed_redemption=float(np.mean(outcomes["redemption"])),
        observed_value=float(np.mean(outcomes["value"])),
        candidates=tuple(valued),
    )


# ---------------------------------------------------------------- from events to estimates

# What a candidate's spec may change of the logged program's learning settings.
TUNABLE_RANGES = {
    "epsilon": (0.0, 1.0),
    "min_epsilon": (0.0, 1.0),
    "min_priority": (0.0, float("inf")),
    "epsilon_half_after": (1e-9, float("inf")),
}
TUNABLE = tuple(TUNABLE_RANGES)


def candidate_policy(spec: str, logged: Program, *, seed: int) -> Policy:
    """The policy ``spec`` names: ``uniform``; ``NAME=NUMBER`` for the logged program
    with one learning setting changed (``epsilon``, ``min_priority``,
    ``epsilon_half_after``, ``min_epsilon``); or a program file, whose policy
    (``learning``) is taken and whose gates are not (see the module)."""
    if spec == "uniform":
        learning = dataclasses.replace(logged.learning, exploration="uniform")
        return policy_for(dataclasses.replace(logged, learning=learning), seed=seed)
    if "=" in spec and not spec.endswith((".yaml", ".yml")):
        name, _, number = spec.partition("=")
        if name not in TUNABLE:
            raise ValueError(f"{spec!r}: a candidate may change {', '.join(TUNABLE)}, not {name!r}")
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"{spec!r}: {number!r} is not a number") from None
        low, high = TUNABLE_RANGES[name]
        if not low <= amount <= high:
            raise ValueError(f"{spec!r}: {name} must be between {low} and {high}")
        changes: dict[str, Any] = {name: amount}
        learning = dataclasses.replace(logged.learning, **changes)
        return policy_for(dataclasses.replace(logged, learning=learning), seed=seed)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"{spec!r} is neither uniform, NAME=NUMBER ({', '.join(TUNABLE)}) nor a program file"
        )
    return policy_for(load_program(path), seed=seed)


@dataclass(frozen=True, slots=True)
class ShadowChoices:
    """What a shadow program chose (app.shadow), by the live decision of the same event."""

    program: str
    # The live decision id of each event the shadow decided -> the reward its policy chose
    # there (None: no reward), whatever its verdict did with it, as the live rounds have it.
    by_live_decision: Mapping[str, Action]
    # Shadow records on events the live program made no choice on, with a reward chosen:
    # the log holds no answer for them, so they are not valued (reported, not hidden).
    unvalued: int = 0


def shadow_choices(
    records: Iterable[Mapping[str, Any]], *, live_program: str, valued: set[str] | None = None
) -> ShadowChoices:
    """The choices in a shadow program's log (its ``shadow-decisions`` records), keyed by
    the live decision of the same event. ``valued``: the live decision ids that are
    rounds of the live log, to count the shadow's choices outside them."""
    chosen: dict[str, Action] = {}
    programs = set()
    for record in records:
        if record.get("kind") != SHADOW_KIND:
            raise ValueError(
                f"a record of kind {record.get('kind')!r} in the shadow log: expected "
                f"{SHADOW_KIND} records only (the shadow-decisions topic)"
            )
        programs.add(str(record["program"]))
        live_id = decision_id_for(live_program, str(record["user_id"]), str(record["event_id"]))
        # What its policy chose (a record names no reward when its verdict paid none).
        action = record["chosen"] if "chosen" in record else record.get("action")
        chosen[live_id] = None if action is None else str(action)
    if len(programs) > 1:
        raise ValueError(f"the shadow log mixes programs {sorted(programs)}: give one at a time")
    if not programs:
        raise ValueError("the shadow log holds no decisions")
    (program,) = programs
    if program == live_program:
        raise ValueError(f"the shadow log is the live program's own ({program})")
    unvalued = 0
    if valued is not None:
        unvalued = sum(1 for k, a in chosen.items() if a is not None and k not in valued)
    return ShadowChoices(program, chosen, unvalued)


def with_shadow(rounds: Sequence[Round], shadow: ShadowChoices) -> tuple[list[Round], int]:
    """``rounds`` with the shadow's choice at each as one more target (the shadow's own
    draw, taken as given: valuing the realised choice of a policy that drew it
    independently of the log is unbiased for that policy's value), and how many rounds
    had no shadow decision (dropped: the shadow failed or was not running)."""
    kept = []
    for r in rounds:
        if r.decision_id not in shadow.by_live_decision:
            continue
        target = {shadow.by_live_decision[r.decision_id]: 1.0}
        kept.append(dataclasses.replace(r, targets=(*r.targets, target)))
    return kept, len(rounds) - len(kept)


def evaluate_events(
    logged: Program,
    lines: Sequence[bytes],
    specs: Sequence[str],
    *,
    seed: int,
    partitions: int,
    max_event_bytes: int,
    state_ttl_ms: int | None,
    decisions: Iterable[Mapping[str, object]] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    shadow: Iterable[Mapping[str, Any]] | None = None,
) -> tuple[Evaluation, int]:
    """Replay ``lines`` (events, as ``rewardstream replay`` reads them) through the
    logged program, recording every choice (:func:`record_rounds`); check the rounds
    against ``decisions`` (a decision log of the same events) if given; value the
    logging policy itself (its estimates must equal what it observed: a check of the
    whole path), each of ``specs``, and the choices of a ``shadow`` program's log if
    given (named ``shadow <program>``; only the rounds it decided are valued then).
    Returns the evaluation and how many rounds the log confirmed."""
    rounds = record_rounds(
        logged,
        lines,
        specs,
        seed=seed,
        partitions=partitions,
        max_event_bytes=max_event_bytes,
        state_ttl_ms=state_ttl_ms,
    )
    checked = 0 if decisions is None else check_against_log(rounds, decisions)
    names = ["logged (check)", *specs]
    notes: tuple[str, ...] = ()
    if shadow is not None:
        found = shadow_choices(
            shadow, live_program=logged.id, valued={r.decision_id for r in rounds}
        )
        rounds, missing = with_shadow(rounds, found)
        names.append(f"shadow {found.program}")
        notes = (
            f"Shadow {found.program}: {missing:,} live choices without a shadow decision "
            f"(not valued), {found.unvalued:,} shadow choices on events the live program "
            "made no choice on (no answer in the log: not valued).",
        )
    evaluation = value_candidates(
        rounds,
        names,
        set(redeemed_decisions(lines)),
        thresholds=thresholds,
        seed=seed,
    )
    return dataclasses.replace(evaluation, notes=notes), checked


def record_rounds(
    logged: Program,
    lines: Iterable[bytes],
    specs: Sequence[str],
    *,
    seed: int,
    partitions: int,
    max_event_bytes: int,
    state_ttl_ms: int | None,
) -> list[Round]:
    """Every choice the logged program makes over ``lines``, with the distribution of the
    logging policy and (in this order) of itself and each of ``specs`` there."""
    policies = [policy_for(logged, seed=seed)]
    policies += [candidate_policy(spec, logged, seed=seed) for spec in specs]
    recorder = RecordingPolicy(policy_for(logged, seed=seed), policies)
    engine = Engine(logged, seed=seed, partitions=partitions, policy=recorder)
    for _ in replay(
        engine,
        lines,
        source_name="evaluate",
        max_event_bytes=max_event_bytes,
        state_ttl_ms=state_ttl_ms,
    ):
        pass
    return recorder.rounds


def render(evaluation: Evaluation) -> str:
    """The evaluation as a table a person reads: per candidate, each estimator's value
    with its 95% interval, the effective sample size and the support, or why not."""
    lines = [
        f"{evaluation.rounds:,} choices in the log, {evaluation.redeemed:,} redeemed: "
        f"redemption {evaluation.observed_redemption:.4f} and value "
        f"{evaluation.observed_value:.4f} per choice, as logged.",
        "",
        f"{'candidate':<24} {'outcome':<10} {'IPS':>26} {'SNIPS':>26} {'DR':>26} "
        f"{'ESS':>8} {'support':>8}",
    ]
    for candidate in evaluation.candidates:
        for outcome, found in (("redemption", candidate.redemption), ("value", candidate.value)):
            head = f"{candidate.name:<24} {outcome:<10}"
            over = found.overlap
            tail = f"{over.effective_sample_size:>8,.0f} {over.support:>8.1%}"
            if isinstance(found, Insufficient):
                lines.append(f"{head} {found.insufficient}  [{tail.strip()}]")
                continue
            cells = [_cell(e) for e in (found.ips, found.snips, found.dr)]
            lines.append(f"{head} {cells[0]:>26} {cells[1]:>26} {cells[2]:>26} {tail}")
    lines += [
        "",
        "Each estimate is per choice, with its 95% interval, for the immediate answer only: "
        "the logged situations, budgets, contact limits and holds are taken as they were "
        "(see app/evaluation/estimators.py). Intervals take users, not choices, as "
        "independent.",
        *evaluation.notes,
    ]
    return "\n".join(lines)


def _cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}]"
