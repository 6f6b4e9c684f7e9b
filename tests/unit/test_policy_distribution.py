"""Every shipped policy states the probability of every action it could take, and that
statement is exact: it sums to 1, it is what ``choose`` logs for its pick, and it is how
often ``choose`` takes each action over many decisions (app.decisioning.policy)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.contract import Event
from app.decisioning.policy import (
    Action,
    Candidate,
    DistributionPolicy,
    EpsilonGreedy,
    Pick,
    Situation,
    Softmax,
    Uniform,
    choice_probabilities,
)
from app.features import UserState
from app.features.state import KindResponse
from app.programs import Learning, load_program

FIXTURES = Path(__file__).parents[1] / "fixtures"
PROGRAM = load_program(FIXTURES / "test-program.yaml")
T0 = 1_772_366_400_000
REDRAWS = 100_000
# Each frequency is a mean of 100,000 draws: its standard error is at most 0.0016, so
# 0.01 is six of them; a wrong probability (an epsilon / n off, a branch forgotten) is not.
FREQUENCY_TOLERANCE = 0.01


def candidates(rng: random.Random, n: int) -> tuple[Candidate, ...]:
    """``n`` candidates with distinct reward ids and random scores, best first."""
    template = PROGRAM.rewards[0]
    drawn = [
        Candidate(
            reward=dataclasses.replace(template, id=f"reward-{k}"),
            channel="web",
            value=rng.uniform(0.5, 5.0),
            cost=rng.uniform(0.5, 5.0),
            propensity=rng.random(),
            lever=1.0,
            priority=rng.uniform(0.0, 2.0),
            features={},
            rule_codes=(),
        )
        for k in range(n)
    ]
    return tuple(sorted(drawn, key=lambda c: -c.priority))


def situation(rng: random.Random, decision_id: str = "d-0") -> Situation:
    """A session of a user who has answered a random number of offers."""
    user = UserState(responses={"points": KindResponse(offered=rng.randrange(0, 40))})
    event = Event(event_id="e", user_id="u", type="session_start", ts=T0, channel="web")
    return Situation(event, user, decision_id, PROGRAM)


def random_learning(rng: random.Random, *, below: bool, best: Candidate) -> Learning:
    """An exploration rate anywhere from none to always, decaying with answers or not,
    and a minimum priority the best candidate is below, or not, as asked."""
    margin = rng.uniform(0.01, 1.0)
    return dataclasses.replace(
        PROGRAM.learning,
        epsilon=rng.choice((0.0, 1.0, rng.random(), rng.random(), rng.random())),
        epsilon_half_after=rng.choice((None, rng.uniform(1.0, 20.0))),
        min_epsilon=rng.uniform(0.0, 0.05),
        min_priority=best.priority + margin if below else best.priority - margin,
    )


def random_cases(count: int, seed: int) -> list[tuple[DistributionPolicy, Sequence[Candidate]]]:
    """Random candidate sets, one policy each: in turn epsilon-greedy with the best
    candidate above the minimum priority, epsilon-greedy with it below, uniform, and
    softmax at a random temperature and minimum priority."""
    rng = random.Random(seed)
    cases: list[tuple[DistributionPolicy, Sequence[Candidate]]] = []
    for k in range(count):
        offered = candidates(rng, rng.randint(1, 4))
        policy: DistributionPolicy
        if k % 4 == 2:
            policy = Uniform(seed=rng.randrange(1000))
        elif k % 4 == 3:
            learning = dataclasses.replace(
                random_learning(rng, below=rng.random() < 0.5, best=offered[0]),
                exploration="softmax",
                temperature=rng.choice((0.05, 0.2, 1.0, 5.0)),
            )
            policy = Softmax(learning, seed=rng.randrange(1000))
        else:
            learning = random_learning(rng, below=k % 4 == 1, best=offered[0])
            policy = EpsilonGreedy(learning, seed=rng.randrange(1000))
        cases.append((policy, offered))
    return cases


def chosen_action(pick: Pick) -> Action:
    return None if pick.chosen is None else pick.chosen.reward.id


def test_every_distribution_sums_to_one_and_names_every_action() -> None:
    rng = random.Random(11)
    for policy, offered in random_cases(400, seed=1):
        here = situation(rng)
        distribution = policy.distribution(offered, here)
        assert set(distribution) == {None, *(c.reward.id for c in offered)}
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(distribution.values()) >= 0.0
        assert choice_probabilities(policy, offered, here) == distribution


@pytest.mark.parametrize(("policy", "offered"), random_cases(8, seed=2))
def test_choose_takes_each_action_as_often_as_its_distribution_says(
    policy: DistributionPolicy, offered: Sequence[Candidate]
) -> None:
    here = situation(random.Random(len(offered)))
    distribution = policy.distribution(offered, here)
    taken: Counter[Action] = Counter()
    for k in range(REDRAWS):
        pick = policy.choose(offered, Situation(here.event, here.user, f"d-{k}", PROGRAM))
        action = chosen_action(pick)
        # What the decision record logs is the distribution's own number, to the bit.
        assert pick.probability == distribution[action]
        taken[action] += 1
    for action, probability in distribution.items():
        assert taken[action] / REDRAWS == pytest.approx(probability, abs=FREQUENCY_TOLERANCE)


def test_the_edges_of_epsilon_greedy() -> None:
    rng = random.Random(3)
    offered = candidates(rng, 3)
    here = situation(rng)
    greedy = dataclasses.replace(PROGRAM.learning, epsilon=0.0, min_priority=-1.0)
    assert EpsilonGreedy(greedy, seed=1).distribution(offered, here) == {
        offered[0].reward.id: 1.0,
        offered[1].reward.id: 0.0,
        offered[2].reward.id: 0.0,
        None: 0.0,
    }
    # Below the minimum priority and never exploring: no reward, certainly.
    stingy = dataclasses.replace(greedy, min_priority=10.0)
    assert EpsilonGreedy(stingy, seed=1).distribution(offered, here)[None] == 1.0
    # Always exploring: uniform over the candidates, whatever the minimum priority.
    always = dataclasses.replace(stingy, epsilon=1.0, epsilon_half_after=None)
    spread = EpsilonGreedy(always, seed=1).distribution(offered, here)
    uniform: dict[Action, float] = {c.reward.id: 1 / 3 for c in offered}
    assert spread == {**uniform, None: 0.0}


class CheapestFirst:
    """A custom policy that chooses but cannot say how likely its other actions were."""

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        return Pick(min(candidates, key=lambda c: c.cost), 1.0, "cheapest")


class Boastful(CheapestFirst):
    """A custom policy whose distribution is not one."""

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        return {c.reward.id: 1.0 for c in candidates}


class Inventive(CheapestFirst):
    """A custom policy that gives probability to a reward the gates did not pass."""

    def distribution(
        self, candidates: Sequence[Candidate], situation: Situation
    ) -> dict[Action, float]:
        return {"free-car": 1.0}


def test_choice_probabilities_says_clearly_what_a_custom_policy_lacks() -> None:
    rng = random.Random(4)
    offered, here = candidates(rng, 2), situation(rng)
    with pytest.raises(TypeError, match="CheapestFirst has no distribution"):
        choice_probabilities(CheapestFirst(), offered, here)
    with pytest.raises(ValueError, match="sum to 2"):
        choice_probabilities(Boastful(), offered, here)
    with pytest.raises(ValueError, match="free-car"):
        choice_probabilities(Inventive(), offered, here)


def test_a_deterministic_custom_policy_can_state_its_distribution() -> None:
    class Certain(CheapestFirst):
        def distribution(
            self, candidates: Sequence[Candidate], situation: Situation
        ) -> dict[Action, float]:
            return {chosen_action(self.choose(candidates, situation)): 1.0}

    rng = random.Random(5)
    offered, here = candidates(rng, 3), situation(rng)
    probabilities = choice_probabilities(Certain(), offered, here)
    cheapest = min(offered, key=lambda c: c.cost).reward.id
    assert probabilities[cheapest] == 1.0
    assert sum(probabilities.values()) == 1.0  # the others filled in at 0
