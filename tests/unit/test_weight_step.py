"""A decaying step for the models' weights (``learning.weight_step_start``): bold while a
reward kind has few answers, settled once it has many, and where a checkpoint left it."""

from __future__ import annotations

import dataclasses
import math

import pytest

from app.decisioning import Engine
from app.models.checkpoint import encode, restore_into
from app.models.propensity import DecayingStep, PropensityModels
from app.programs import load_builtin
from app.programs.summary import summarize


def _answers(models: PropensityModels, n: int) -> None:
    """``n`` answers where ``x`` tells the users who redeem (x = 1) from those who do not."""
    for i in range(n):
        x = 1.0 if i % 2 == 0 else -1.0
        models.learn_one("points", {"x": x}, x > 0)


def test_the_step_falls_from_its_start_with_the_square_root_of_the_answers_to_its_floor() -> None:
    step = DecayingStep(2.0, 0.05)
    assert step.get(0) == 2.0
    assert step.get(99) == pytest.approx(0.2)
    assert step.get(1_599) == pytest.approx(0.05)
    assert step.get(1_000_000) == 0.05
    assert all(step.get(t) >= step.get(t + 1) for t in range(3_000))


def test_the_weights_step_follows_the_answers_and_the_intercepts_stays() -> None:
    models = PropensityModels(prior=0.2, learning_rate=0.2, weight_step=(2.0, 0.05))
    for answers in (1, 10, 100, 3_000):
        _answers(models, answers - models.updates)
        regression = models.models["points"]["LogisticRegression"]
        assert regression.optimizer.learning_rate == pytest.approx(
            max(0.05, 2.0 / math.sqrt(answers + 1))
        )
        assert regression.intercept_lr.get(answers) == 0.2


def test_a_decaying_step_tells_users_apart_from_fewer_answers_than_its_floor() -> None:
    def separation(models: PropensityModels) -> float:
        _answers(models, 30)
        return models.predict_one("points", {"x": 1.0}) - models.predict_one("points", {"x": -1.0})

    bold = separation(PropensityModels(prior=0.2, learning_rate=0.05, weight_step=(2.0, 0.05)))
    settled = separation(PropensityModels(prior=0.2, learning_rate=0.05))
    assert bold > settled + 0.2


def test_a_restored_model_steps_where_the_checkpoint_left_it() -> None:
    source = PropensityModels(prior=0.2, learning_rate=0.2, weight_step=(2.0, 0.05))
    _answers(source, 400)
    target = PropensityModels(prior=0.2, learning_rate=0.2, weight_step=(2.0, 0.05))
    assert restore_into(target, encode("p", "sha", source), program_id="p")
    for models in (source, target):
        _answers(models, 10)
    assert target.models["points"]["LogisticRegression"].optimizer.learning_rate == (
        pytest.approx(2.0 / math.sqrt(411))
    )
    assert target.predict_one("points", {"x": 1.0}) == source.predict_one("points", {"x": 1.0})


def test_the_engine_takes_the_programs_step() -> None:
    program = load_builtin("retail-loyalty")
    assert Engine(program).models.weight_step == (2.0, 0.05)  # the shipped program's
    learning = dataclasses.replace(program.learning, weight_step_start=None, weight_step_floor=None)
    engine = Engine(dataclasses.replace(program, learning=learning))
    assert engine.models.weight_step is None  # learning_rate throughout


def test_the_program_summary_says_how_the_weights_step() -> None:
    """`rewardstream program check` prints the step a program's models take."""
    program = load_builtin("retail-loyalty")
    shipped = summarize(program)
    assert "learning rate 0.2 (weights 2 / sqrt(answers + 1), at least 0.05), prior" in shipped
    learning = dataclasses.replace(program.learning, weight_step_start=None, weight_step_floor=None)
    assert "learning rate 0.2, prior" in summarize(dataclasses.replace(program, learning=learning))
