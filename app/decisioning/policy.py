"""Policies: how a decision chooses among the rewards that passed every gate.

The engine gates every reward of the program (eligibility, contact, consent,
budgets, stock), scores each survivor (propensity x value x lever, less the
risk-weighted cost) and hands the :class:`Candidate` list, best first, to a
:class:`Policy`. The policy returns a :class:`Pick`: the candidate to offer (or
none) and the probability it had of making exactly that choice. Every decision
logs that probability (``propensity``), which is what evaluating another policy
on the decision log needs; a policy must therefore say it truthfully.

A policy never sees a reward the gates refused, so no policy can break the
program's limits. Shipped: :class:`EpsilonGreedy` (the program's default) and
:class:`Uniform` (uniformly at random among the eligible rewards: the standard
baseline), chosen by the program's ``learning.exploration``; any object with a
``choose`` method of the same shape can be passed to ``Engine(policy=...)``.
Randomness comes from :func:`app.models.explore_draw`, fixed by the seed and the
decision id, so replay and a restarted worker choose exactly as before.

Evaluating a policy offline (:mod:`app.evaluation`) needs more than the probability of
the action it took: it needs the probability of every action it could have taken. A
policy says so with ``distribution(candidates, situation)`` (both shipped policies
have it, and it agrees with ``choose`` to the last bit); :func:`choice_probabilities`
asks any policy for it and says clearly when a custom policy cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from app.contract.records import Event
from app.features.state import UserState
from app.models import explore_draw
from app.programs import Learning, Program, Reward


class Candidate(msgspec.Struct, frozen=True, gc=False):
    """A reward that passed every gate, with its score."""

    reward: Reward
    channel: str | None
    value: float
    cost: float
    propensity: float  # the model's P(redeemed | offered now), blended with the user's answers
    lever: float
    priority: float
    features: dict[str, float]  # the model's inputs, the profile's among them
    rule_codes: tuple[str, ...]
    profile_codes: tuple[float, ...] = ()  # the profile's groups, stored with an offer


class Situation(msgspec.Struct, frozen=True, gc=False):
    """What a policy may know of one decision besides its candidates."""

    event: Event
    user: UserState
    decision_id: str
    program: Program


class Pick(msgspec.Struct, frozen=True, gc=False):
    """A policy's answer: the candidate to offer (None: no reward), the probability the
    policy had of this very answer, and how it chose (a reason code word:
    ``exploit``, ``explore``, ``below_minimum``, or a custom policy's own)."""

    chosen: Candidate | None
    probability: float
    mode: str


class Policy(Protocol):
    """Chooses among gated candidates (``candidates`` is never empty, best first)."""

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick: ...


# What a decision does, as its record's ``action`` says: a reward id, or None (no reward).
Action = str | None


@runtime_checkable
class DistributionPolicy(Policy, Protocol):
    """A policy that can also say the probability of every action it could take: each
    candidate's reward id and None (no reward), summing to 1, and for the action
    ``choose`` takes, exactly the probability it logs. Optional for running the engine;
    needed to evaluate the policy offline (see :func:`choice_probabilities`)."""

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]: ...


# How far from 1 a policy's probabilities may sum: float rounding, nothing more.
SUM_TOLERANCE = 1e-9


def choice_probabilities(
    policy: Policy, candidates: Sequence[Candidate], situation: Situation
) -> dict[Action, float]:
    """The probability of every action ``policy`` could take, checked: a key for each
    candidate's reward id and None, none negative, summing to 1. Raises TypeError for a
    policy without ``distribution`` and ValueError for one whose probabilities are not a
    distribution over these candidates."""
    if not isinstance(policy, DistributionPolicy):
        raise TypeError(
            f"{type(policy).__name__} has no distribution(candidates, situation): "
            "evaluating a policy offline needs the probability of every action it could "
            "take, not only of the one it took; add the method (see "
            "app.decisioning.policy.EpsilonGreedy.distribution)"
        )
    given = policy.distribution(candidates, situation)
    actions = [*(c.reward.id for c in candidates), None]
    if strangers := set(given) - set(actions):
        raise ValueError(
            f"{type(policy).__name__} gave probability to {sorted(map(str, strangers))}, "
            "which are not among the candidates"
        )
    probabilities = {action: given.get(action, 0.0) for action in actions}
    total = sum(probabilities.values())
    if min(probabilities.values()) < 0.0 or abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(
            f"{type(policy).__name__}.distribution is not a distribution: "
            f"probabilities {probabilities} sum to {total}"
        )
    return probabilities


class EpsilonGreedy:
    """The best candidate, or with probability epsilon (per user, decaying with their
    answers: ``learning.epsilon_for``) one drawn uniformly; no reward when the best
    scores under ``learning.min_priority``, unless exploration drew another."""

    def __init__(self, learning: Learning, *, seed: int) -> None:
        self.learning = learning
        self.seed = seed

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        best, n = candidates[0], len(candidates)
        epsilon, below = self._epsilon(situation.user), self._below_minimum(best)
        # With one candidate, exploring only matters below the minimum priority: it is how
        # a reward that looks not worth it gets the answers that could prove otherwise.
        if explore_draw(self.seed, situation.decision_id, "explore") < epsilon:
            pick = candidates[int(explore_draw(self.seed, situation.decision_id, "pick") * n)]
            if below or pick is not best:
                return Pick(pick, epsilon / n, "explore")
        if below:
            return Pick(None, 1.0 - epsilon, "below_minimum")
        return Pick(best, 1.0 - epsilon + epsilon / n, "exploit")

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        """Every candidate epsilon / n; then 1 - epsilon goes to no reward when the best
        is below the minimum priority, and to the best otherwise."""
        best, n = candidates[0], len(candidates)
        epsilon, below = self._epsilon(situation.user), self._below_minimum(best)
        actions: dict[Action, float] = {c.reward.id: epsilon / n for c in candidates}
        # The same expressions as choose, so the logged probability matches to the bit.
        if below:
            actions[None] = 1.0 - epsilon
        else:
            actions[None] = 0.0
            actions[best.reward.id] = 1.0 - epsilon + epsilon / n
        return actions

    def _epsilon(self, user: UserState) -> float:
        """The user's exploration rate, decaying with the offers they have answered."""
        answered = sum(r.offered for r in user.responses.values()) - len(user.pending)
        return self.learning.epsilon_for(max(0, answered))

    def _below_minimum(self, best: Candidate) -> bool:
        return best.priority < self.learning.min_priority


class Uniform:
    """Uniformly at random among the eligible rewards, whatever their scores: the
    random baseline a team compares its program with (``exploration: uniform``)."""

    def __init__(self, *, seed: int) -> None:
        self.seed = seed

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        # Drawn among the candidates in the program's order, not ranked by score: the
        # same event picks the same reward whatever the models have learned, so two
        # runs of the baseline differ only where their gates do.
        listed = {reward.id: i for i, reward in enumerate(situation.program.rewards)}
        ordered = sorted(candidates, key=lambda c: listed.get(c.reward.id, len(listed)))
        n = len(ordered)
        pick = ordered[int(explore_draw(self.seed, situation.decision_id, "pick") * n)]
        return Pick(pick, 1.0 / n, "explore")

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        """1 / n for every candidate; never no reward."""
        n = len(candidates)
        return {None: 0.0} | {c.reward.id: 1.0 / n for c in candidates}


class Softmax:
    """Each candidate with probability proportional to ``exp(priority / temperature)``,
    and no reward as if it were a candidate scoring ``learning.min_priority``: rewards
    near the best are tried often, far below it rarely, and every probability is exact
    (what the decision logs is what the draw had)."""

    def __init__(self, learning: Learning, *, seed: int) -> None:
        self.learning = learning
        self.seed = seed

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        weights = self._weights(candidates)
        draw = explore_draw(self.seed, situation.decision_id, "softmax") * sum(weights)
        options: list[Candidate | None] = [*candidates, None]
        for option, weight in zip(options, weights, strict=True):
            if draw < weight:
                return self._pick(option, weight, weights, candidates)
            draw -= weight
        # Rounding left the draw past the last weight: it falls on the last option.
        return self._pick(options[-1], weights[-1], weights, candidates)

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        weights = self._weights(candidates)
        total = sum(weights)
        # The same expressions as choose, so the logged probability matches to the bit.
        actions: dict[Action, float] = {
            c.reward.id: w / total for c, w in zip(candidates, weights[:-1], strict=True)
        }
        actions[None] = weights[-1] / total
        return actions

    def _weights(self, candidates: Sequence[Candidate]) -> list[float]:
        """exp((score - best score) / temperature) per candidate, then for no reward."""
        scores = [c.priority for c in candidates] + [self.learning.min_priority]
        top = max(scores)
        return [math.exp((score - top) / self.learning.temperature) for score in scores]

    @staticmethod
    def _pick(
        option: Candidate | None,
        weight: float,
        weights: list[float],
        candidates: Sequence[Candidate],
    ) -> Pick:
        probability = weight / sum(weights)
        if option is None:
            return Pick(None, probability, "below_minimum")
        return Pick(option, probability, "exploit" if option is candidates[0] else "explore")


def policy_for(program: Program, *, seed: int) -> Policy:
    """The policy a program asks for (``learning.exploration``)."""
    if program.learning.exploration == "uniform":
        return Uniform(seed=seed)
    if program.learning.exploration == "softmax":
        return Softmax(program.learning, seed=seed)
    return EpsilonGreedy(program.learning, seed=seed)
