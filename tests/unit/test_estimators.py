"""Off-policy estimators on a synthetic contextual bandit whose truth is known exactly
(app.evaluation.estimators): 8 kinds of situation with known frequencies, 3 actions (two
rewards and no reward) with known redemption probabilities, epsilon-greedy policies
with known action probabilities. A policy's true value per decision is then a finite
sum, and every estimate can be held against it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from app.evaluation import (
    Insufficient,
    LoggedChoice,
    LoggedRounds,
    Valued,
    cross_fitted_rewards,
    doubly_robust,
    effective_sample_size,
    evaluate,
    tabulate,
)
from app.evaluation.estimators import FloatArray, IntArray

ACTIONS = ("points", "cashback", None)
SITUATIONS = 8
ROUNDS = 10_000
SEEDS = range(20)
# At 10,000 rounds an estimate's standard error is 0.009 (DR, SNIPS) to 0.011 (IPS), so
# the mean of 20 has one near 0.0025: 0.01 is four of those. Ignoring the weights (the
# logging policy's own mean) misses this candidate's value by 0.06.
BIAS_TOLERANCE = 0.01

_world = np.random.default_rng(2024)
FEATURES = _world.normal(size=(SITUATIONS, 2))  # what a reward model may see
FREQUENCY = _world.dirichlet(np.ones(SITUATIONS))
# Redemption is logistic in the features: the logistic reward model is well specified.
TRUE_MEAN = 1.0 / (
    1.0 + np.exp(-(FEATURES @ _world.normal(size=(2, 3)) + np.array([-1.0, -0.5, -1.5])))
)
# The logging policy's idea of the best action: the truth seen through noise.
GUESSED_BEST = np.argmax(TRUE_MEAN + _world.normal(scale=0.15, size=TRUE_MEAN.shape), axis=1)
TRUE_BEST = np.argmax(TRUE_MEAN, axis=1)


def epsilon_greedy(best: IntArray, epsilon: float, among: int = 3) -> FloatArray:
    """Per situation, 1 - epsilon on ``best`` and epsilon spread over the first
    ``among`` actions (the others never taken)."""
    table = np.zeros((SITUATIONS, 3))
    table[:, :among] = epsilon / among
    table[np.arange(SITUATIONS), best] += 1.0 - epsilon
    return table


def true_value(policy: FloatArray) -> float:
    """A policy's expected reward per decision: exact, by summing over situations."""
    return float(FREQUENCY @ (policy * TRUE_MEAN).sum(axis=1))


@dataclass(frozen=True)
class Log:
    situation: IntArray
    rounds: LoggedRounds


def logged(
    logging: FloatArray, target: FloatArray, seed: int, *, rounds: int = ROUNDS, known: bool = True
) -> Log:
    """``rounds`` decisions of the ``logging`` policy with Bernoulli rewards, and the
    ``target`` policy's probabilities beside them (the logging distribution only if
    ``known``)."""
    rng = np.random.default_rng(seed)
    situation = rng.choice(SITUATIONS, size=rounds, p=FREQUENCY)
    drawn = rng.random(rounds)[:, None]
    action = (drawn > np.cumsum(logging[situation], axis=1)).sum(axis=1).astype(np.intp)
    reward = (rng.random(rounds) < TRUE_MEAN[situation, action]).astype(np.float64)
    return Log(situation, as_rounds(situation, action, reward, logging, target, known=known))


def as_rounds(
    situation: IntArray,
    action: IntArray,
    reward: FloatArray,
    logging: FloatArray,
    target: FloatArray,
    *,
    known: bool = True,
    unit: IntArray | None = None,
) -> LoggedRounds:
    """The logged rounds of these draws, the policies' tables read at each situation."""
    return LoggedRounds(
        actions=ACTIONS,
        action=action,
        propensity=logging[situation, action],
        reward=reward,
        target_probability=target[situation, action],
        target=target[situation],
        logging=logging[situation] if known else None,
        unit=unit,
    )


LOGGING = epsilon_greedy(GUESSED_BEST, 0.3)
# Near the logging policy: explores a little less, around the true best action.
NEAR = epsilon_greedy(TRUE_BEST, 0.2)


def valued(log: Log, *, features: bool = True) -> Valued:
    predicted = cross_fitted_rewards(log.rounds, FEATURES[log.situation] if features else None)
    result = evaluate(log.rounds, predicted)
    assert isinstance(result, Valued), result
    return result


def test_the_world_makes_the_candidate_worth_evaluating() -> None:
    assert not np.array_equal(GUESSED_BEST, TRUE_BEST)
    assert true_value(NEAR) - true_value(LOGGING) > 0.05


def test_a_nearby_candidate_is_estimated_without_bias_and_dr_covers_the_truth() -> None:
    truth = true_value(NEAR)
    estimates: dict[str, list[float]] = {"ips": [], "snips": [], "dr": [], "dr_mean_model": []}
    covered = 0
    for seed in SEEDS:
        log = logged(LOGGING, NEAR, seed)
        result = valued(log)
        assert result.dr is not None
        for estimate in (result.ips, result.snips, result.dr):
            estimates[estimate.estimator].append(estimate.value)
        covered += result.dr.low <= truth <= result.dr.high
        # A reward model that ignores the situation is wrong; DR stays unbiased anyway,
        # since the propensities are right.
        wrong = cross_fitted_rewards(log.rounds, seed=seed)
        estimates["dr_mean_model"].append(doubly_robust(log.rounds, wrong).value)
    for name, values in estimates.items():
        assert np.mean(values) == pytest.approx(truth, abs=BIAS_TOLERANCE), name
    assert covered >= 18


def test_a_candidate_taking_what_the_log_never_took_gets_no_number() -> None:
    never_none = epsilon_greedy(GUESSED_BEST % 2, 0.3, among=2)  # never "no reward"
    assert np.all(never_none[:, 2] == 0.0)
    strays = 0.7 * epsilon_greedy(TRUE_BEST % 2, 0.2, among=2)
    strays[:, 2] += 0.3
    for known in (True, False):  # an exact support, then one estimated from the weights
        result = evaluate(logged(never_none, strays, seed=1, known=known).rounds)
        assert isinstance(result, Insufficient)
        assert result.insufficient.startswith("insufficient support: ")
        assert "the logging policy never takes" in result.insufficient
        # Exact from the logging distribution; from the weights, an estimate of the same.
        assert result.overlap.support == pytest.approx(0.7, abs=1e-12 if known else 0.03)
        assert result.overlap.support_exact == (1.0 if known else 0.0)
        assert not hasattr(result, "ips")  # no value to misread


def test_a_candidate_identical_to_the_logging_policy_estimates_the_on_policy_mean() -> None:
    log = logged(LOGGING, LOGGING, seed=7)
    result = valued(log)
    on_policy = float(np.mean(log.rounds.reward))
    assert result.ips.value == pytest.approx(on_policy, abs=1e-12)
    assert result.snips.value == pytest.approx(on_policy, abs=1e-12)
    assert result.overlap.effective_sample_size == pytest.approx(ROUNDS)
    assert result.overlap.support == pytest.approx(1.0)
    assert result.dr is not None
    assert result.dr.low <= true_value(LOGGING) <= result.dr.high


def test_the_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(250)) == 250.0
    assert effective_sample_size(np.array([1.0, 1.0, 2.0, 0.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.array([0.0, 40.0, 0.0])) == 1.0


def test_too_few_effective_rounds_gets_no_number() -> None:
    # The logging policy all but always takes its best; the candidate never does, so a
    # few rounds in a hundred carry every weight.
    stubborn = epsilon_greedy(GUESSED_BEST, 0.03)
    contrary = epsilon_greedy((GUESSED_BEST + 1) % 3, 0.0)
    result = evaluate(logged(stubborn, contrary, seed=2, rounds=2_000).rounds)
    assert isinstance(result, Insufficient)
    assert result.overlap.support == 1.0
    assert "importance weights are worth" in result.insufficient
    assert result.overlap.effective_sample_size < 100


def test_cross_fitting_keeps_each_rounds_own_reward_out_of_its_prediction() -> None:
    rounds = logged(LOGGING, NEAR, seed=3, rounds=400).rounds
    flipped = LoggedRounds(
        actions=rounds.actions,
        action=rounds.action,
        propensity=rounds.propensity,
        reward=np.where(np.arange(400) == 0, 1.0 - rounds.reward, rounds.reward),
        target_probability=rounds.target_probability,
        target=rounds.target,
    )
    features = np.random.default_rng(0).normal(size=(400, 2))
    for given in (None, features):
        before = cross_fitted_rewards(rounds, given, seed=9)
        after = cross_fitted_rewards(flipped, given, seed=9)
        np.testing.assert_array_equal(before[0], after[0])  # round 0's own model: unchanged
        assert not np.array_equal(before, after)  # the other fold's model learnt it


def test_logged_rounds_refuse_what_cannot_be_a_log() -> None:
    rounds = logged(LOGGING, NEAR, seed=4, rounds=10).rounds
    with pytest.raises(ValueError, match=r"propensity must be in \(0, 1\]"):
        LoggedRounds(ACTIONS, rounds.action, np.zeros(10), rounds.reward, rounds.target_probability)
    assert rounds.logging is not None
    drifted = rounds.logging.copy()
    drifted[3] = 1.0 / 3.0  # a replay that no longer takes 0.8 or 0.1 of any action
    with pytest.raises(ValueError, match="round 3: logging gives its logged action"):
        LoggedRounds(
            ACTIONS,
            rounds.action,
            rounds.propensity,
            rounds.reward,
            rounds.target_probability,
            rounds.target,
            drifted,
        )


def test_tabulate_lays_out_choice_probabilities_by_action() -> None:
    choices = [
        LoggedChoice("points", 0.8, 1.0, {"points": 0.5, None: 0.5}, {"points": 0.8, None: 0.2}),
        LoggedChoice(None, 0.2, 0.0, {"points": 1.0}),
    ]
    rounds = tabulate(choices, ACTIONS)
    np.testing.assert_array_equal(rounds.action, [0, 2])
    np.testing.assert_array_equal(rounds.target_probability, [0.5, 0.0])
    assert rounds.target is not None
    assert rounds.logging is not None
    np.testing.assert_array_equal(rounds.target, [[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    assert np.isnan(rounds.logging[1]).all()  # not known: the weights estimate its support
    with pytest.raises(ValueError, match="not among the actions"):
        tabulate([LoggedChoice("car", 1.0, 0.0, {"car": 1.0})], ACTIONS)


# How far one user's redemption odds sit from the situation's (standard deviation, logits).
TASTE = 1.2


def users_log(seed: int, *, users: int = 400, each: int = 30) -> tuple[LoggedRounds, float]:
    """``users`` users of ``each`` decisions of the logging policy, each user's redemption
    odds moved by a taste of their own (``TASTE`` logits, shared by all their decisions); and
    the candidate's true value for users drawn like these (the population's, not these
    users' own)."""
    rng = np.random.default_rng(seed)
    rounds = users * each
    unit = np.repeat(np.arange(users), each).astype(np.intp)
    taste = rng.normal(scale=TASTE, size=users)[unit]
    situation = rng.choice(SITUATIONS, size=rounds, p=FREQUENCY)
    drawn = rng.random(rounds)[:, None]
    action = (drawn > np.cumsum(LOGGING[situation], axis=1)).sum(axis=1).astype(np.intp)
    odds = np.log(TRUE_MEAN / (1.0 - TRUE_MEAN))
    mean = 1.0 / (1.0 + np.exp(-(odds[situation, action] + taste)))
    reward = (rng.random(rounds) < mean).astype(np.float64)
    log = as_rounds(situation, action, reward, LOGGING, NEAR, unit=unit)
    # The population's value, by a large sample of fresh users' tastes.
    tastes = np.random.default_rng(10_000 + seed).normal(scale=TASTE, size=(4_000, 1, 1))
    population = 1.0 / (1.0 + np.exp(-(odds[None] + tastes)))  # (users, situations, actions)
    truth = float(FREQUENCY @ (NEAR * population.mean(axis=0)).sum(axis=1))
    return log, truth


def test_intervals_take_users_as_independent_when_the_rounds_name_them() -> None:
    # One user's decisions share that user's taste: an interval that counts each of a
    # user's 30 decisions as independent is too narrow for users like these, and covers
    # the population's value far less often than 95% (0.79 here; 0.96 by users).
    covered = {"units": 0, "rounds": 0}
    widths = {"units": 0.0, "rounds": 0.0}
    seeds = range(200)  # 40 would leave the coverage itself too noisy to hold to 0.92
    for seed in seeds:
        log, truth = users_log(seed)
        independent = dataclasses.replace(log, unit=None)
        for name, rounds in (("units", log), ("rounds", independent)):
            result = evaluate(rounds, cross_fitted_rewards(rounds, seed=seed))
            assert isinstance(result, Valued)
            assert result.dr is not None
            for estimate in (result.ips, result.snips, result.dr):
                covered[name] += estimate.low <= truth <= estimate.high
            widths[name] += result.dr.high - result.dr.low
    trials = 3 * len(seeds)
    assert covered["units"] >= 0.92 * trials, covered
    assert covered["rounds"] <= 0.85 * trials, covered
    assert widths["units"] > 1.5 * widths["rounds"]


def test_tabulate_numbers_the_units_and_drops_them_when_one_is_unknown() -> None:
    choices = [
        LoggedChoice("points", 0.8, 1.0, {"points": 1.0}, unit="u-7"),
        LoggedChoice(None, 0.2, 0.0, {"points": 1.0}, unit="u-3"),
        LoggedChoice("points", 0.8, 0.0, {"points": 1.0}, unit="u-7"),
    ]
    rounds = tabulate(choices, ACTIONS)
    assert rounds.unit is not None
    np.testing.assert_array_equal(rounds.unit, [0, 1, 0])
    assert tabulate([*choices, LoggedChoice(None, 0.2, 0.0, {"points": 1.0})], ACTIONS).unit is None
