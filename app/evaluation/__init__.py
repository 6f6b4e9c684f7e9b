"""Offline policy evaluation: what a policy would be worth, read from the decision log.

Every decision logs the probability its policy had of its action (``propensity``), and
every shipped policy can state the probability of each action it could take
(:func:`app.decisioning.policy.choice_probabilities`). From the two,
:mod:`app.evaluation.estimators` estimates a candidate policy's value per decision on
decisions another policy took (IPS, self-normalised IPS, doubly robust, each with a
95% interval), and refuses to give a number where the log cannot speak for the
candidate (:class:`Insufficient`). Pure functions over numpy arrays: no Kafka, no
engine state. The estimates cover each decision's immediate answer only; the
estimators' module says what budgets, contact limits and holds do to them.

What changing a program's gates would do (grants, budgets, audit groups) is a replay of
the same events under both programs: :mod:`app.evaluation.whatif`.
"""

from app.evaluation.estimators import (
    Estimate,
    Insufficient,
    LoggedChoice,
    LoggedRounds,
    Overlap,
    Thresholds,
    Valued,
    cross_fitted_rewards,
    doubly_robust,
    effective_sample_size,
    evaluate,
    importance_weights,
    ips,
    snips,
    tabulate,
)

__all__ = [
    "Estimate",
    "Insufficient",
    "LoggedChoice",
    "LoggedRounds",
    "Overlap",
    "Thresholds",
    "Valued",
    "cross_fitted_rewards",
    "doubly_robust",
    "effective_sample_size",
    "evaluate",
    "importance_weights",
    "ips",
    "snips",
    "tabulate",
]
