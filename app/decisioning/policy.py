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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.contract.records import Event
from app.features.state import UserState
from app.models import explore_draw
from app.programs import Learning, Program, Reward


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reward that passed every gate, with its score."""

    reward: Reward
    channel: str | None
    value: float
    cost: float
    propensity: float  # the model's P(redeemed | offered now), blended with the user's answers
    lever: float
    priority: float
    features: dict[str, float]
    rule_codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Situation:
    """What a policy may know of one decision besides its candidates."""

    event: Event
    user: UserState
    decision_id: str
    program: Program


@dataclass(frozen=True, slots=True)
class Pick:
    """A policy's answer: the candidate to offer (None: no reward), the probability the
    policy had of this very answer, and how it chose (a reason code word:
    ``exploit``, ``explore``, ``below_minimum``, or a custom policy's own)."""

    chosen: Candidate | None
    probability: float
    mode: str


class Policy(Protocol):
    """Chooses among gated candidates (``candidates`` is never empty, best first)."""

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick: ...


class EpsilonGreedy:
    """The best candidate, or with probability epsilon (per user, decaying with their
    answers: ``learning.epsilon_for``) one drawn uniformly; no reward when the best
    scores under ``learning.min_priority``, unless exploration drew another."""

    def __init__(self, learning: Learning, *, seed: int) -> None:
        self.learning = learning
        self.seed = seed

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        best, n = candidates[0], len(candidates)
        user = situation.user
        answered = sum(r.offered for r in user.responses.values()) - len(user.pending)
        epsilon = self.learning.epsilon_for(max(0, answered))
        below = best.priority < self.learning.min_priority
        # With one candidate, exploring only matters below the minimum priority: it is how
        # a reward that looks not worth it gets the answers that could prove otherwise.
        if explore_draw(self.seed, situation.decision_id, "explore") < epsilon:
            pick = candidates[int(explore_draw(self.seed, situation.decision_id, "pick") * n)]
            if below or pick is not best:
                return Pick(pick, epsilon / n, "explore")
        if below:
            return Pick(None, 1.0 - epsilon, "below_minimum")
        return Pick(best, 1.0 - epsilon + epsilon / n, "exploit")


class Uniform:
    """Uniformly at random among the eligible rewards, whatever their scores: the
    random baseline a team compares its program with (``exploration: uniform``)."""

    def __init__(self, *, seed: int) -> None:
        self.seed = seed

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        n = len(candidates)
        pick = candidates[int(explore_draw(self.seed, situation.decision_id, "pick") * n)]
        return Pick(pick, 1.0 / n, "explore")


def policy_for(program: Program, *, seed: int) -> Policy:
    """The policy a program asks for (``learning.exploration``)."""
    if program.learning.exploration == "uniform":
        return Uniform(seed=seed)
    return EpsilonGreedy(program.learning, seed=seed)
