"""Policies a team can express: the random baseline and fraud switched off from the program
file alone, and any policy through the public interface (app.decisioning.policy)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from app.contract import Decision, Event
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.decisioning.policy import Candidate, Pick, Situation, Uniform
from app.features import UserState
from app.fraud import LinkFacts
from app.programs import ProgramError, load_builtin, load_program

T0 = 1_772_366_400_000
DAY = 86_400_000
FIXTURES = Path(__file__).parents[1] / "fixtures"


def program_file(tmp_path: Path, **sections: str) -> Path:
    """The unit-test program with some top-level sections replaced by ``sections``."""
    text = (FIXTURES / "test-program.yaml").read_text()
    kept = []
    skipping = False
    for line in text.splitlines():
        top = line and not line.startswith((" ", "#"))
        if top:
            skipping = line.split(":")[0] in sections
        if not skipping:
            kept.append(line)
    path = tmp_path / "program.yaml"
    path.write_text("\n".join(kept) + "\n" + "\n".join(sections.values()) + "\n")
    return path


def session_decisions(engine: Engine, users: int) -> list[Decision]:
    """One session for each of ``users`` adults who signed up a day before."""
    decided: list[Decision] = []
    for n in range(users):
        user, ledger = UserState(), Ledger()
        for k, (kind, ts) in enumerate((("signup", T0 - DAY), ("session_start", T0))):
            event = Event(
                event_id=f"e{n}-{k}",
                user_id=f"u-{n}",
                type=kind,
                ts=ts,
                channel="web",
                attributes={"age": 30},
            )
            outcome = engine.process(user, ledger, event)
            user = outcome.user
        decision = outcome.records[0]
        assert isinstance(decision, Decision)
        decided.append(decision)
    return decided


def test_exploration_uniform_in_the_program_file_is_the_random_baseline(tmp_path: Path) -> None:
    learning = "learning:\n  exploration: uniform\n  prior: 0.5\n  min_priority: 0.0"
    program = load_program(program_file(tmp_path, learning=learning))
    assert program.learning.exploration == "uniform"
    decisions = [d for d in session_decisions(Engine(program, seed=5), 600) if d.action]
    # The session's eligible rewards for an adult: points and the card (stock 2, email):
    # each pick logs 1/n, and the picks spread over the candidates.
    picked = Counter(d.action for d in decisions)
    assert set(picked) == {"points", "card"}
    assert all(d.reasons[0] == "policy.explore" for d in decisions)
    assert {d.propensity for d in decisions} <= {0.5, 1.0}
    assert picked["points"] > 100


def test_the_uniform_pick_does_not_depend_on_the_scores() -> None:
    program = load_program(FIXTURES / "test-program.yaml")
    uniform = Uniform(seed=5)
    event = Event(event_id="e", user_id="u", type="session_start", ts=T0, channel="web")

    def candidates(scores: Sequence[float]) -> list[Candidate]:
        ranked = [
            Candidate(reward, "web", 1.0, 1.0, score, 1.0, score, {}, ())
            for reward, score in zip(program.rewards, scores, strict=True)
        ]
        return sorted(ranked, key=lambda c: -c.priority)  # as the engine hands them over

    picks = []
    for n in range(200):
        situation = Situation(event, UserState(), f"d-{n}", program)
        one = uniform.choose(candidates([0.9, 0.5, 0.1]), situation)
        other = uniform.choose(candidates([0.1, 0.5, 0.9]), situation)
        assert one.chosen is not None
        assert other.chosen is not None
        assert one.chosen.reward.id == other.chosen.reward.id
        assert one.probability == other.probability == 1 / 3
        picks.append(one.chosen.reward.id)
    assert set(picks) == {r.id for r in program.rewards}


def test_epsilon_one_is_allowed_and_over_one_is_not(tmp_path: Path) -> None:
    ok = load_program(program_file(tmp_path, learning="learning:\n  epsilon: 1.0"))
    assert ok.learning.epsilon == 1.0
    with pytest.raises(ProgramError, match="must be at most 1"):
        load_program(program_file(tmp_path, learning="learning:\n  epsilon: 1.2"))
    with pytest.raises(ProgramError, match="must be one of"):
        load_program(program_file(tmp_path, learning="learning:\n  exploration: greedy"))


def test_fraud_enabled_false_turns_risk_off_and_keeps_the_pending_period(tmp_path: Path) -> None:
    retail = load_builtin("retail-loyalty")
    off = dataclasses.replace(retail, fraud=dataclasses.replace(retail.fraud, enabled=False))
    engine = Engine(off, seed=3)
    farm = (LinkFacts("device", accounts_24h=9, signups_24h=9),)
    signup = Event(
        event_id="s", user_id="u", type="signup", ts=T0, channel="web", attributes={"age": 30}
    )
    outcome = engine.process(UserState(), Ledger(), signup, links=farm)
    [decision] = outcome.records  # no alert, however farm-like the device
    assert isinstance(decision, Decision)
    assert (decision.status, decision.hold, decision.risk) == ("held", "pending", 0.0)
    # And the file form of the switch.
    text = "fraud:\n  enabled: false\n  new_account_pending: 1h"
    program = load_program(program_file(tmp_path, fraud=text))
    assert not program.fraud.enabled
    assert program.fraud.new_account_pending is not None


class CheapestFirst:
    """A custom policy: always the cheapest eligible reward, chosen with certainty."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        self.seen.append((len(candidates), situation.decision_id))
        cheapest = min(candidates, key=lambda c: (c.cost, c.reward.id))
        return Pick(cheapest, 1.0, "cheapest")


def test_a_custom_policy_chooses_through_the_public_interface() -> None:
    policy = CheapestFirst()
    program = load_program(FIXTURES / "test-program.yaml")
    decisions = [d for d in session_decisions(Engine(program, policy=policy), 20) if d.action]
    assert decisions
    assert {d.action for d in decisions} == {"points"}  # cost 1, against the card's 3
    assert {d.propensity for d in decisions} == {1.0}
    assert all(d.reasons[0] == "policy.cheapest" for d in decisions)
    # It saw the decision ids the records carry, and only gated candidates.
    ids = {decision_id for _, decision_id in policy.seen}
    assert {d.decision_id for d in decisions} <= ids


class Rogue:
    """A policy that invents a reward the gates never let through."""

    def choose(self, candidates: Sequence[Candidate], situation: Situation) -> Pick:
        invented = msgspec.structs.replace(candidates[0], cost=0.0, priority=99.0)
        return Pick(invented, 1.0, "rogue")


def test_a_policy_cannot_choose_what_the_gates_did_not_pass() -> None:
    program = load_program(FIXTURES / "test-program.yaml")
    with pytest.raises(ValueError, match="not a gated candidate"):
        session_decisions(Engine(program, policy=Rogue()), 1)
