"""Reason codes and one readable sentence for every decision.

Codes are for machines (dashboards, audits, offline analysis): the policy mode,
the chosen reward's rules, budget state, the features that moved its score,
and why each other reward was skipped. The sentence is for people.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.contract.records import Event
from app.fraud import Assessment

if TYPE_CHECKING:
    from app.decisioning.engine import Candidate, Choice, Engine

MAX_SKIPPED_IN_SENTENCE = 3

OUTCOME_SENTENCES = {
    "outcome_redeemed": "Recorded the redemption; the model learned from it.",
    "outcome_dismissed": "Recorded the dismissal; the model learned from it.",
    "outcome_opened": "Recorded that the reward was opened.",
    "outcome_unknown_decision": (
        "Recorded an outcome for a decision this user has no open offer for."
    ),
}


def explain(
    engine: Engine, event: Event, choice: Choice, budget_codes: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], str]:
    """(reason codes, sentence) for ``choice``; ``budget_codes`` say what is left after it."""
    mode = choice.mode
    if mode == "not_a_trigger":
        return ("trigger.not_a_trigger",), f"No reward: a {event.type} event does not lead to one."
    if mode.startswith("outcome"):
        return (mode.replace("_", ".", 1),), OUTCOME_SENTENCES[mode]
    currency = engine.program.currency
    skipped_codes = tuple(f"skip.{s.reward.id}:{s.verdict.code}" for s in choice.skipped)
    chosen = choice.chosen
    if mode == "holdout":
        return (
            ("policy.holdout",),
            "No reward: the user is in the experiment's holdout arm, which gets none.",
        )
    if chosen is None and mode == "control":
        return (
            ("policy.control", *skipped_codes),
            "No reward: the user is in the experiment's control arm, which gets only the "
            "program's standard reward, and it does not apply.",
        )
    if chosen is None and mode == "default":
        return (
            ("policy.default", "consent.personalization:declined", *skipped_codes),
            "No reward: the user declined personalization and the program's standard reward "
            "does not apply.",
        )
    if chosen is None:
        return (f"policy.{mode}", *skipped_codes), _no_reward_sentence(engine, choice)
    codes = (
        f"policy.{mode}",
        *chosen.rule_codes,
        "budget:ok",
        *budget_codes,
        # A standard reward (no personalization, or a control arm) is not the model's
        # choice: the user's features did not move it, and the record says nothing of them.
        *(() if mode in ("default", "control") else _feature_codes(engine, chosen)),
        *skipped_codes,
    )
    return codes, _granted_sentence(choice, chosen, currency)


def _feature_codes(engine: Engine, chosen: Candidate) -> tuple[str, ...]:
    top = engine.models.contributions(chosen.reward.kind, chosen.features)
    return tuple(f"feature.{name}:{weight:+.2f}" for name, weight in top)


def _skipped_words(choice: Choice) -> str:
    parts = [f"{s.reward.id} ({s.verdict.words})" for s in choice.skipped[:MAX_SKIPPED_IN_SENTENCE]]
    more = len(choice.skipped) - MAX_SKIPPED_IN_SENTENCE
    if more > 0:
        parts.append(f"{more} more")
    return ", ".join(parts)


def _granted_sentence(choice: Choice, chosen: Candidate, currency: str) -> str:
    what = f"Granted {chosen.reward.id} (worth {chosen.value:.2f} {currency})"
    via = f" via {chosen.channel}" if chosen.channel else ""
    n = len(choice.candidates)
    if choice.mode == "explore":
        why = (
            f"picked at random to learn, with probability {choice.probability:.3f}, "
            f"among {n} eligible rewards"
        )
    elif choice.mode == "default":
        why = "the program's standard reward, since the user opted out of personalization"
    elif choice.mode == "control":
        why = "the program's standard reward, for the experiment's control arm"
    else:
        field = "the only eligible reward" if n == 1 else f"highest priority among {n} eligible"
        why = (
            f"{field}: propensity {chosen.propensity:.3f}"
            f" x value {chosen.value:.2f} x lever {chosen.lever:.2f} = {chosen.priority:.3f}"
        )
    skipped = f"; not offered: {_skipped_words(choice)}" if choice.skipped else ""
    return f"{what}{via}: {why}{skipped}."


def _no_reward_sentence(engine: Engine, choice: Choice) -> str:
    if choice.mode == "below_minimum" and choice.candidates:
        best = choice.candidates[0]
        return (
            f"No reward: the best option, {best.reward.id}, scores {best.priority:.3f}, under "
            f"the program's minimum of {engine.program.learning.min_priority:.3f}."
        )
    if not choice.skipped:
        return "No reward: no reward of the program applies to this event."
    return f"No reward: nothing is eligible: {_skipped_words(choice)}."


def fraud_codes(assessment: Assessment) -> tuple[str, ...]:
    """The risk and each signal behind it, strongest first."""
    signals = sorted(assessment.signals, key=lambda s: (-s.weight, s.code))
    codes = dict.fromkeys(f"fraud.{s.code}" for s in signals)
    return (f"fraud.risk:{assessment.score:.2f}", *codes)


def fraud_words(status: str, reward_id: str, assessment: Assessment) -> str:
    """Why a reward was held or blocked, in words an analyst and a support agent can use."""
    action = "Held for review" if status == "held" else "Blocked"
    signals = sorted(assessment.signals, key=lambda s: (-s.weight, s.code))
    if signals:
        why = "; ".join(dict.fromkeys(s.evidence for s in signals[:3]))
    else:
        why = "this user was flagged earlier"
    return f"{action}: {reward_id}, at fraud risk {assessment.score:.2f}: {why}."


def risk_words(assessment: Assessment) -> str:
    """What the risk of a user who was not held or blocked did to the choice."""
    top = max(assessment.signals, key=lambda s: (s.weight, s.code))
    return f"Fraud risk {assessment.score:.2f} ({top.evidence}) counted against each reward's cost."
