"""`rewardstream evaluate`: candidate policies valued on a log of events by replaying the
logging program over it (app.evaluation.offline), on a closed loop's own log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from app import cli
from app.assembly import load_program_setting
from app.evaluation import Insufficient, Valued
from app.evaluation.offline import (
    LogMismatchError,
    Round,
    candidate_policy,
    check_against_log,
    evaluate_events,
    redeemed_decisions,
    value_candidates,
)
from app.settings import Settings
from harness.simulation.logged import LoggedRun, logged_closed_loop

SEED = 7


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def run(settings: Settings) -> LoggedRun:
    """A small program's launch: 3,000 events of 300 simulated users over 3 days."""
    return logged_closed_loop(
        load_program_setting(settings.program),
        events=3_000,
        users=300,
        seed=SEED,
        days=3,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )


def _evaluate(settings: Settings, run: LoggedRun, specs: list[str], **changes: object):  # type: ignore[no-untyped-def]
    options = {
        "seed": SEED,
        "partitions": settings.partitions,
        "max_event_bytes": settings.max_event_bytes,
        "state_ttl_ms": settings.state_ttl_ms,
        "decisions": run.decisions,
    } | changes
    return evaluate_events(load_program_setting(settings.program), run.lines, specs, **options)  # type: ignore[arg-type]


def test_the_logging_policy_valued_on_its_own_log_is_what_it_observed(
    settings: Settings, run: LoggedRun
) -> None:
    evaluation, checked = _evaluate(settings, run, [])
    assert evaluation.rounds > 500
    assert evaluation.redeemed > 30
    assert checked == evaluation.rounds  # every choice the replay made is in the log
    logged = evaluation.candidates[0]
    assert logged.name == "logged (check)"
    for found, observed in (
        (logged.redemption, evaluation.observed_redemption),
        (logged.value, evaluation.observed_value),
    ):
        assert isinstance(found, Valued)
        # Every importance weight is 1: IPS and SNIPS are the observed mean itself.
        assert found.ips.value == pytest.approx(observed, abs=1e-12)
        assert found.snips.value == pytest.approx(observed, abs=1e-12)
        assert found.overlap.effective_sample_size == pytest.approx(evaluation.rounds)
        assert found.overlap.support == pytest.approx(1.0)
        assert found.dr is not None
        assert found.dr.low <= observed <= found.dr.high


def test_the_redemptions_counted_are_the_answers_that_name_a_choice(run: LoggedRun) -> None:
    answers = [orjson.loads(line) for line in run.lines if b"reward_redeemed" in line]
    assert {a["decision_id"] for a in answers} == set(redeemed_decisions(run.lines))
    assert list(redeemed_decisions([b"not json reward_redeemed", b'{"type": "purchase"}'])) == []


def test_candidates_near_the_log_get_numbers_and_one_off_its_support_gets_none(
    settings: Settings, run: LoggedRun
) -> None:
    evaluation, _ = _evaluate(settings, run, ["epsilon=0.3", "min_priority=1000000"])
    near, far = evaluation.candidates[1], evaluation.candidates[2]
    assert isinstance(near.redemption, Valued)
    assert near.redemption.overlap.effective_sample_size < evaluation.rounds  # it differs
    # Granting nothing where the logged policy always grants: no log can say what that
    # is worth, and the evaluation says so instead of giving a number.
    assert isinstance(far.redemption, Insufficient)
    assert far.redemption.insufficient.startswith("insufficient support")
    assert far.redemption.overlap.support < 0.95


def test_a_log_the_replay_does_not_reproduce_is_refused(settings: Settings, run: LoggedRun) -> None:
    with pytest.raises(LogMismatchError, match="another program, seed or partition count"):
        _evaluate(settings, run, [], seed=SEED + 1)
    evaluation_rounds = [
        Round(
            decision_id="d-1",
            user_id="u-1",
            action="welcome-points",
            propensity=0.95,
            logging={"welcome-points": 0.95, None: 0.05},
            targets=(),
            values={},
        )
    ]
    tampered = [{"kind": "decision", "decision_id": "d-1", "action": "x", "propensity": 0.95}]
    with pytest.raises(LogMismatchError, match="d-1"):
        check_against_log(evaluation_rounds, tampered)
    moved = [{"kind": "decision", "decision_id": "d-1", "action": None, "propensity": 0.5}]
    with pytest.raises(LogMismatchError, match=r"propensity 0\.5"):
        check_against_log(evaluation_rounds, moved)


def test_candidate_specs_say_what_is_wrong_with_them(settings: Settings, tmp_path: Path) -> None:
    program = load_program_setting(settings.program)
    with pytest.raises(ValueError, match="not 'prior'"):
        candidate_policy("prior=0.3", program, seed=1)
    with pytest.raises(ValueError, match="not a number"):
        candidate_policy("epsilon=lots", program, seed=1)
    with pytest.raises(ValueError, match=r"between 0\.0 and 1\.0"):
        candidate_policy("epsilon=2", program, seed=1)
    with pytest.raises(ValueError, match="neither uniform"):
        candidate_policy(str(tmp_path / "missing.yaml"), program, seed=1)
    uniform = candidate_policy("uniform", program, seed=1)
    assert type(uniform).__name__ == "Uniform"


def test_the_command_prints_every_candidate_and_checks_the_log(
    settings: Settings, run: LoggedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, decisions = tmp_path / "events.jsonl", tmp_path / "decisions.jsonl"
    events.write_bytes(b"\n".join(run.lines) + b"\n")
    decisions.write_bytes(b"\n".join(orjson.dumps(d) for d in run.decisions) + b"\n")
    argv = ["evaluate", "--in", str(events), "--decisions", str(decisions), "--seed", str(SEED)]
    assert cli.main([*argv, "--candidate", "uniform", "--candidate", "epsilon=0.3"]) == 0
    out = capsys.readouterr().out
    for name in ("logged (check)", "uniform", "epsilon=0.3"):
        assert f"\n{name} " in out
    assert "choices checked against the decision log, all equal" in out
    wrong_seed = [*argv[:-1], str(SEED + 1)]
    assert cli.main(wrong_seed) == 1
    assert "does not match the decision log" in capsys.readouterr().err
    assert cli.main([*argv, "--candidate", "prior=1"]) == 2


def test_a_program_file_is_taken_for_its_policy(settings: Settings, tmp_path: Path) -> None:
    shipped = Path(cli.__file__).parent / "programs" / "shipped" / "retail-loyalty.yaml"
    text = shipped.read_text()
    assert "  epsilon: 0.05 " in text
    candidate = tmp_path / "bolder.yaml"
    candidate.write_text(text.replace("  epsilon: 0.05 ", "  epsilon: 0.3 "))
    policy = candidate_policy(str(candidate), load_program_setting(settings.program), seed=SEED)
    assert getattr(policy, "learning", None) is not None
    assert policy.learning.epsilon == 0.3  # type: ignore[attr-defined]


def _scored_rounds(seed: int, *, scored: bool, count: int = 6_000) -> tuple[list[Round], set[str]]:
    """A log of two rewards whose chance of redemption is what the logging program's model
    scored them (``scores``), chosen greedily on the score with 10% exploration, and the
    decisions redeemed; ``scored=False`` leaves the scores out of the rounds."""
    rng = np.random.default_rng(seed)
    rounds, redeemed = [], set()
    for i in range(count):
        chance: dict[str | None, float] = {"a": rng.uniform(0.02, 0.9), "b": rng.uniform(0.02, 0.9)}
        best = max(chance, key=lambda reward: chance[reward])
        logging: dict[str | None, float] = {best: 0.9, ("b" if best == "a" else "a"): 0.1}
        logging[None] = 0.0
        action = best if rng.random() < 0.9 else ("b" if best == "a" else "a")
        if rng.random() < chance[action]:
            redeemed.add(f"d-{i}")
        rounds.append(
            Round(
                decision_id=f"d-{i}",
                user_id=f"u-{i % 600}",
                action=action,
                propensity=logging[action],
                logging=logging,
                targets=({"a": 0.5, "b": 0.5, None: 0.0},),
                values={"a": 1.0, "b": 1.0},
                scores=chance if scored else {},
            )
        )
    return rounds, redeemed


def test_doubly_robust_reads_the_logging_programs_scores() -> None:
    # A uniform candidate leans on the explored choices, whose chance the logging
    # program's own scores tell apart from the exploited ones'. With them the reward
    # model narrows doubly robust's interval well below IPS's; a per-reward mean, blind
    # to them, leaves it as wide as IPS's.
    ratio = {}
    for scored in (True, False):
        ratios = []
        for seed in range(5):
            rounds, redeemed = _scored_rounds(seed, scored=scored)
            value = value_candidates(rounds, ["uniform"], redeemed, seed=seed).candidates[0]
            assert isinstance(value.redemption, Valued)
            dr = value.redemption.dr
            assert dr is not None
            ratios.append(dr.std_error / value.redemption.ips.std_error)
            if scored:  # the candidate's true value on these rounds: the scores' mean
                truth = float(np.mean([(r.scores["a"] + r.scores["b"]) / 2 for r in rounds]))
                assert dr.low <= truth <= dr.high
        ratio[scored] = float(np.mean(ratios))
    assert ratio[True] < 0.9, ratio
    assert ratio[False] > 0.95, ratio
