"""Off-policy estimators: what a candidate policy would have earned per decision, read
from decisions another policy (the logging policy) took.

Each logged round is one decision: the action the logging policy took, the probability
it had of taking it (the record's ``propensity``), the reward observed (1 redeemed, 0
not, or a value), and the candidate's probability of that same action in that same
situation (:func:`app.decisioning.policy.choice_probabilities`). The importance weight
``w = candidate probability / logged propensity`` re-weights the logged rewards into
the candidate's.

- :func:`ips`: inverse propensity scoring, the mean of ``w * reward``.
- :func:`snips`: self-normalised IPS, ``sum(w * reward) / sum(w)``.
- :func:`doubly_robust`: a reward model's prediction of the candidate's value, corrected
  by the weighted error of the model on the logged action; the model comes from
  :func:`cross_fitted_rewards`, so no round is predicted by a model that saw its reward.
- :func:`evaluate`: the three at once, or :class:`Insufficient` instead of any number
  when the log cannot say (the candidate takes actions the logging policy never took
  there, or too few rounds carry the weight: :class:`Overlap`).

Intervals treat the *unit* of each round as independent, not the round: where the
rounds say whose decision each was (``LoggedRounds.unit``, the user in a decision
log), a unit's terms are summed before their variance is taken (the cluster-robust
variance). One user's decisions share that user's tastes and history, so a user who
redeems everything moves many rounds at once; an interval that counted each round as
independent would be too narrow for the policy's value on users like the logged ones
(the experiment report takes users as its unit for the same reason).

What every estimate assumes: the logged propensity is the true probability the logging
policy had of its action (the engine logs it exactly); every action the candidate may
take in a situation, the logging policy could take there too (support); and a
decision's reward depends only on its situation and its action, so the logged
situations are the ones the candidate would have faced.

That last assumption is where this stops: off-policy evaluation covers the immediate
answer only, one decision at a time, in the situations as logged. Budgets, stock,
contact limits and fraud holds make what a policy may grant later depend on what it
granted before, and the models learn from its answers. A candidate that grants more
often, or dearer rewards, than the logging policy would exhaust budgets and contact
limits sooner and face fewer candidates later; here it is credited as if it never
did, so its estimate is optimistic by the value of the grants its own spending would
have made impossible (and a thriftier candidate's is pessimistic). Read an estimate as
"the value per decision of this policy's answers to the situations the log holds",
and test what it spends before trusting it far from the logging policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from app.decisioning.policy import Action

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

# A logged propensity and the logging distribution's figure for the same action are the
# same number, written to JSON and read back: anything beyond rounding is a mismatch.
CONSISTENCY_TOLERANCE = 1e-9


# ---------------------------------------------------------------- the logged rounds


@dataclass(frozen=True, slots=True)
class LoggedRounds:
    """Logged decisions, one row each, over a fixed list of actions (the columns).

    ``actions``: the K actions (reward ids and None: no reward), in column order.
    ``action``: (n,) the column of each round's logged action.
    ``propensity``: (n,) the logging policy's probability of that action, as logged.
    ``reward``: (n,) what was observed.
    ``target_probability``: (n,) the candidate's probability of the logged action.
    ``target``: (n, K) the candidate's whole distribution, when known: doubly robust
    needs it, and it makes the support exact where ``logging`` is known.
    ``logging``: (n, K) the logging policy's whole distribution, when known (a replay of
    the logging policy's ``distribution``); a row of NaN where it is not.
    ``unit``: (n,) the independent unit each round belongs to (a number per user), when
    known: every interval then takes units, not rounds, as independent.
    """

    actions: tuple[Action, ...]
    action: IntArray
    propensity: FloatArray
    reward: FloatArray
    target_probability: FloatArray
    target: FloatArray | None = None
    logging: FloatArray | None = None
    unit: IntArray | None = None

    def __post_init__(self) -> None:
        n, k = len(self.action), len(self.actions)
        for name in ("propensity", "reward", "target_probability"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, not ({n},)")
        if n and (self.action.min() < 0 or self.action.max() >= k):
            raise ValueError(f"an action column is outside the {k} actions")
        if np.any(self.propensity <= 0.0) or np.any(self.propensity > 1.0):
            # A logged action had a positive probability, or it would not have been taken.
            raise ValueError("every logged propensity must be in (0, 1]")
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("every reward must be a finite number")
        if np.any(self.target_probability < 0.0) or np.any(self.target_probability > 1.0):
            raise ValueError("every target probability must be in [0, 1]")
        if self.target is not None:
            _check_table("target", self.target, k, self.action, self.target_probability)
            if np.isnan(self.target).any():
                raise ValueError("the candidate's distribution (target) must be known everywhere")
        if self.logging is not None:
            _check_table("logging", self.logging, k, self.action, self.propensity)
        if self.unit is not None and self.unit.shape != (n,):
            raise ValueError(f"unit has shape {self.unit.shape}, not ({n},)")

    @property
    def rounds(self) -> int:
        return len(self.action)


def _check_table(
    name: str, table: FloatArray, actions: int, action: IntArray, at_logged: FloatArray
) -> None:
    """``table`` is (n, K) distributions (rows of NaN: unknown) that agree with the
    per-round probability of the logged action."""
    if table.shape != (len(action), actions):
        raise ValueError(f"{name} has shape {table.shape}, not ({len(action)}, {actions})")
    known = ~np.isnan(table).any(axis=1)
    rows = table[known]
    if np.any(rows < 0.0) or np.any(np.abs(rows.sum(axis=1) - 1.0) > CONSISTENCY_TOLERANCE):
        raise ValueError(f"every known row of {name} must be a distribution (sums to 1)")
    at_action = table[np.arange(len(action)), action]
    mismatch = known & (np.abs(at_action - at_logged) > CONSISTENCY_TOLERANCE)
    if np.any(mismatch):
        row = int(np.argmax(mismatch))
        raise ValueError(
            f"round {row}: {name} gives its logged action {at_action[row]}, but the round "
            f"says {at_logged[row]} (a replay that no longer matches the log?)"
        )


@dataclass(frozen=True, slots=True)
class LoggedChoice:
    """One logged decision as a reader of the decision log builds it: the logged
    ``action`` and ``propensity``, the ``reward`` observed, the candidate's
    :func:`~app.decisioning.policy.choice_probabilities` in that situation, and the
    logging policy's, when a replay can tell; ``unit`` names the independent unit it
    belongs to (the user), when known."""

    action: Action
    propensity: float
    reward: float
    target: Mapping[Action, float]
    logging: Mapping[Action, float] | None = None
    unit: str | None = None


def tabulate(choices: Sequence[LoggedChoice], actions: Sequence[Action]) -> LoggedRounds:
    """The rounds as arrays, with a column for each of ``actions`` (an action a mapping
    leaves out has probability 0; one outside ``actions`` is an error). Units are kept
    when every choice names one, and dropped (rounds independent) when any does not."""
    column = {action: k for k, action in enumerate(actions)}
    if unknown := {c.action for c in choices} - set(column):
        raise ValueError(f"logged actions {sorted(map(str, unknown))} are not among the actions")
    target = _table([c.target for c in choices], actions)
    logging = _table([c.logging for c in choices], actions)
    logged = np.array([column[c.action] for c in choices], np.intp)
    unit = None
    if choices and all(c.unit is not None for c in choices):
        numbers: dict[str | None, int] = {}
        unit = np.array([numbers.setdefault(c.unit, len(numbers)) for c in choices], np.intp)
    return LoggedRounds(
        actions=tuple(actions),
        action=logged,
        propensity=np.array([c.propensity for c in choices], np.float64),
        reward=np.array([c.reward for c in choices], np.float64),
        target_probability=target[np.arange(len(choices)), logged],
        target=target,
        logging=logging,
        unit=unit,
    )


def _table(rows: Sequence[Mapping[Action, float] | None], actions: Sequence[Action]) -> FloatArray:
    """(n, K) probabilities by action; a row of NaN for a distribution not known."""
    table = np.full((len(rows), len(actions)), np.nan)
    for k, row in enumerate(rows):
        if row is None:
            continue
        if strangers := set(row) - set(actions):
            raise ValueError(f"probabilities for {sorted(map(str, strangers))}, not an action")
        table[k] = [row.get(action, 0.0) for action in actions]
    return table


# ---------------------------------------------------------------- weights and overlap


def importance_weights(rounds: LoggedRounds) -> FloatArray:
    """Per round, the candidate's probability of the logged action over the logging
    policy's: how many of the candidate's decisions this logged one stands for."""
    return rounds.target_probability / rounds.propensity


def effective_sample_size(weights: FloatArray) -> float:
    """(sum w)^2 / sum w^2: the number of equally weighted rounds that would be as
    informative; n when every weight is 1, near 1 when one round carries them all."""
    squares = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / squares if squares > 0.0 else 0.0


def support_terms(rounds: LoggedRounds) -> FloatArray:
    """Per round, the candidate's probability mass on actions the logging policy could
    take in that situation (logging probability > 0): the part of the candidate's
    behaviour the log can speak for.

    Where the logging distribution of a round is known (and the candidate's), this is
    exact: the candidate's mass on the actions the logging policy gives a positive
    probability. Where it is not, the round's importance weight stands in: over the
    logging policy's draws, E[candidate(A) / logging(A)] sums the candidate's
    probability over exactly the actions the logging policy can draw, so its mean is
    an unbiased estimate of the same share (a noisy one when the weights are large:
    replay the logging policy to make it exact). The candidate's probability of the
    logged action alone would not do: it counts every action the logging policy could
    have taken but did not draw this time as unsupported.
    """
    estimated = importance_weights(rounds)
    if rounds.target is None or rounds.logging is None:
        return estimated
    known = ~np.isnan(rounds.logging).any(axis=1)
    covered = np.where(rounds.logging > 0.0, rounds.target, 0.0).sum(axis=1)
    return np.where(known, covered, estimated)


@dataclass(frozen=True, slots=True)
class Overlap:
    """How far the log can speak for the candidate.

    ``support``: the share of the candidate's probability on actions the logging policy
    could take in the logged situations (1: all of it; :func:`support_terms`).
    ``support_exact``: the share of rounds where that was computed from the logging
    distribution rather than estimated from the weights.
    ``effective_sample_size``: see :func:`effective_sample_size`.
    """

    rounds: int
    support: float
    support_exact: float
    effective_sample_size: float
    max_weight: float


def overlap(rounds: LoggedRounds) -> Overlap:
    """The candidate's support and the weights' effective sample size on ``rounds``."""
    if rounds.rounds == 0:
        raise ValueError("no rounds to evaluate")
    weights = importance_weights(rounds)
    exact = 0.0
    if rounds.target is not None and rounds.logging is not None:
        exact = float(np.mean(~np.isnan(rounds.logging).any(axis=1)))
    return Overlap(
        rounds=rounds.rounds,
        # The estimated share can exceed 1 by chance; the share itself cannot.
        support=min(1.0, float(np.mean(support_terms(rounds)))),
        support_exact=exact,
        effective_sample_size=effective_sample_size(weights),
        max_weight=float(weights.max()),
    )


# ---------------------------------------------------------------- estimators


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's value per decision, with its confidence interval."""

    estimator: str
    value: float
    low: float
    high: float
    std_error: float


def _interval(estimator: str, value: float, std_error: float, level: float) -> Estimate:
    """The normal-approximation interval around ``value`` at confidence ``level``."""
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return Estimate(estimator, value, value - z * std_error, value + z * std_error, std_error)


def _sum_standard_error(deviations: FloatArray, unit: IntArray | None) -> float:
    """The standard error of ``sum(deviations)``, each a round's term less the estimate:
    rounds independent (``unit`` None), or units independent, a unit's deviations summed
    first (the cluster-robust variance, with the small-sample factor G / (G - 1))."""
    if unit is None:
        n = len(deviations)
        return float(np.sqrt(np.sum(deviations**2) * n / (n - 1)))
    per_unit = np.bincount(unit, weights=deviations)
    units = int(np.count_nonzero(np.bincount(unit)))
    if units < 2:
        raise ValueError("an interval needs rounds from at least 2 units (users)")
    return float(np.sqrt(np.sum(per_unit**2) * units / (units - 1)))


def _mean_estimate(
    estimator: str, terms: FloatArray, level: float, unit: IntArray | None = None
) -> Estimate:
    """An estimator that is the mean of per-round terms, independent across units (or
    across rounds when ``unit`` is None)."""
    if len(terms) < 2:
        raise ValueError("estimating needs at least 2 rounds")
    value = float(np.mean(terms))
    std_error = _sum_standard_error(terms - value, unit) / len(terms)
    return _interval(estimator, value, std_error, level)


def ips(rounds: LoggedRounds, *, level: float = 0.95) -> Estimate:
    """Inverse propensity scoring: the mean of ``w * reward``.

    Unbiased under the module's assumptions (true propensities, support, rewards that
    depend only on situation and action), whatever the rewards look like; its variance
    grows with the weights, so a candidate far from the logging policy gets a wide
    interval. The interval is the normal approximation on the per-round terms.
    """
    return _mean_estimate("ips", importance_weights(rounds) * rounds.reward, level, rounds.unit)


def snips(rounds: LoggedRounds, *, level: float = 0.95) -> Estimate:
    """Self-normalised IPS: ``sum(w * reward) / sum(w)``.

    Divides by the weights' own sum instead of their expectation n, which trades a bias
    of order 1/n for a much smaller variance when weights are large, and keeps the
    estimate within the range of the rewards. Consistent under the same assumptions as
    IPS; it also silently rescales away mass the candidate puts outside the support, so
    read it with :class:`Overlap`. The interval is the delta method's:
    ``se^2 = sum(w^2 (reward - value)^2) / (sum w)^2``, the terms summed per unit first
    when the rounds name their units.
    """
    weights = importance_weights(rounds)
    total = float(np.sum(weights))
    if len(weights) < 2 or total <= 0.0:
        raise ValueError("SNIPS needs at least 2 rounds, some of them the candidate's actions")
    value = float(np.sum(weights * rounds.reward)) / total
    std_error = _sum_standard_error(weights * (rounds.reward - value), rounds.unit) / total
    return _interval("snips", value, std_error, level)


def doubly_robust(rounds: LoggedRounds, predicted: FloatArray, *, level: float = 0.95) -> Estimate:
    """Doubly robust: per round, the reward model's value of the candidate's whole
    distribution, plus the weighted error of the model on the logged action:
    ``sum_a target(a) q(a) + w * (reward - q(logged action))``.

    ``predicted`` is (n, K): the reward model's q(situation, action) for every action,
    for rounds the model did not learn from (:func:`cross_fitted_rewards`). Unbiased
    when either the propensities are right (with support) or the model is, and with a
    reasonable model its variance is well below IPS's: the weights only carry the
    model's error. Needs the candidate's whole distribution (``rounds.target``). The
    interval is the normal approximation on the per-round terms.
    """
    if rounds.target is None:
        raise ValueError("doubly robust needs the candidate's whole distribution (target)")
    if predicted.shape != rounds.target.shape:
        raise ValueError(f"predicted has shape {predicted.shape}, not {rounds.target.shape}")
    modelled = np.sum(rounds.target * predicted, axis=1)
    at_logged = predicted[np.arange(rounds.rounds), rounds.action]
    correction = importance_weights(rounds) * (rounds.reward - at_logged)
    return _mean_estimate("dr", modelled + correction, level, rounds.unit)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the log is not allowed to speak for a candidate, and how confident to be.

    ``min_support``: the least share of the candidate's probability that must fall on
    actions the logging policy could take. ``min_effective_rounds`` and
    ``min_effective_share``: the effective sample size must reach both this many rounds
    and this share of the rounds. ``level``: the confidence of every interval.
    """

    min_support: float = 0.95
    min_effective_rounds: float = 100.0
    min_effective_share: float = 0.01
    level: float = 0.95


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class Valued:
    """The candidate's value per decision by each estimator (``dr``: None without a
    reward model), and the overlap that allowed it."""

    overlap: Overlap
    ips: Estimate
    snips: Estimate
    dr: Estimate | None


@dataclass(frozen=True, slots=True)
class Insufficient:
    """No value: the log cannot speak for the candidate; ``insufficient`` says why."""

    overlap: Overlap
    insufficient: str


def insufficiency(found: Overlap, thresholds: Thresholds) -> str | None:
    """Why the log cannot speak for the candidate, or None when it can."""
    if found.support < thresholds.min_support:
        return (
            f"insufficient support: {1.0 - found.support:.1%} of the candidate's probability "
            f"is on actions the logging policy never takes in those situations (at most "
            f"{1.0 - thresholds.min_support:.1%} allowed)"
        )
    floor = max(thresholds.min_effective_rounds, thresholds.min_effective_share * found.rounds)
    if found.effective_sample_size < floor:
        return (
            f"insufficient support: the importance weights are worth "
            f"{found.effective_sample_size:.0f} of {found.rounds} rounds (at least "
            f"{floor:.0f} needed; the largest weight is {found.max_weight:.1f})"
        )
    return None


def evaluate(
    rounds: LoggedRounds,
    predicted: FloatArray | None = None,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Valued | Insufficient:
    """The candidate's value per decision by IPS, SNIPS and (given ``predicted``, see
    :func:`doubly_robust`) DR, or :class:`Insufficient` and no number at all when the
    candidate strays where the log has no support or the weights leave too few rounds."""
    found = overlap(rounds)
    if (reason := insufficiency(found, thresholds)) is not None:
        return Insufficient(found, reason)
    level = thresholds.level
    dr = None if predicted is None else doubly_robust(rounds, predicted, level=level)
    return Valued(found, ips(rounds, level=level), snips(rounds, level=level), dr)


# ---------------------------------------------------------------- the reward model


def cross_fitted_rewards(
    rounds: LoggedRounds,
    features: FloatArray | None = None,
    *,
    folds: int = 2,
    seed: int = 0,
    ridge: float = 1.0,
) -> FloatArray:
    """The reward model's prediction q(situation, action) for every round and action,
    (n, K), each round's from a model fitted on the other folds only.

    Cross-fitting keeps a round's own reward out of the model that predicts it; a model
    that had seen it would pull q towards it, and DR's correction would shrink to
    nothing exactly where it is needed. Rounds go to ``folds`` folds at random
    (``seed``). Without ``features``: per action, the mean reward of the other folds'
    rounds that took it. With ``features`` (n, d): per action, a logistic regression
    with an L2 penalty ``ridge`` on the coefficients (rewards must lie in [0, 1]).
    Either way an action the other folds never took is predicted their mean reward.
    """
    if rounds.rounds < folds or folds < 2:
        raise ValueError(f"cross-fitting {folds} folds needs at least 2 folds and as many rounds")
    if features is not None and (np.any(rounds.reward < 0.0) or np.any(rounds.reward > 1.0)):
        raise ValueError("the logistic reward model needs rewards in [0, 1]; pass no features")
    fold = np.random.default_rng(seed).permutation(rounds.rounds) % folds
    predicted = np.empty((rounds.rounds, len(rounds.actions)), np.float64)
    for k in range(folds):
        held_out, training = fold == k, fold != k
        for column in range(len(rounds.actions)):
            took = training & (rounds.action == column)
            if not np.any(took):
                predicted[held_out, column] = np.mean(rounds.reward[training])
            elif features is None:
                predicted[held_out, column] = np.mean(rounds.reward[took])
            else:
                coefficients = _fit_logistic(features[took], rounds.reward[took], ridge)
                predicted[held_out, column] = _logistic(features[held_out], coefficients)
    return predicted


# Newton's method on a penalised logistic loss converges in a handful of steps.
NEWTON_STEPS = 50
NEWTON_TOLERANCE = 1e-10


def _with_intercept(features: FloatArray) -> FloatArray:
    return np.hstack([np.ones((len(features), 1)), features])


def _logistic(features: FloatArray, coefficients: FloatArray) -> FloatArray:
    result: FloatArray = 1.0 / (1.0 + np.exp(-(_with_intercept(features) @ coefficients)))
    return result


def _fit_logistic(features: FloatArray, reward: FloatArray, ridge: float) -> FloatArray:
    """Coefficients (intercept first) minimising log loss + ridge/2 |coefficients|^2."""
    design = _with_intercept(features)
    # The intercept is barely penalised: enough to keep a one-sided fold finite.
    penalty = np.full(design.shape[1], ridge)
    penalty[0] = 1e-6
    coefficients = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(design @ coefficients)))
        gradient = design.T @ (p - reward) + penalty * coefficients
        hessian = (design.T * (p * (1.0 - p))) @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        coefficients = coefficients - step
        if np.max(np.abs(step)) < NEWTON_TOLERANCE:
            break
    return coefficients
