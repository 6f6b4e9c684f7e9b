"""Bands of standardised features: a propensity model can learn that the middle of a
feature's range answers best, which a regression on the value alone cannot."""

from __future__ import annotations

import random

import pytest

from app.models.propensity import AVERAGE_BAND, BAND_EDGES, PropensityModels, StandardBands, band_of


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (-9.0, 0),
        (-1.5, 0),
        (-1.49, 1),
        (-0.2, 3),
        (0.0, AVERAGE_BAND),
        (0.01, 4),
        (1.5, 6),
        (2.0, 7),
    ],
)
def test_a_value_falls_in_the_band_its_edges_bound(value: float, band: int) -> None:
    assert band_of(value) == band
    assert 0 <= band <= len(BAND_EDGES)


def test_the_bands_add_one_indicator_per_banded_feature_and_keep_the_values() -> None:
    bands = StandardBands(("a", "b"))
    assert bands.transform_one({"a": 0.7, "b": -2.0, "c": 0.3}) == {
        "a": 0.7,
        "b": -2.0,
        "c": 0.3,
        "a#5": 1.0,
        "b#0": 1.0,
    }
    assert bands.transform_one({"c": 1.0}) == {"c": 1.0}  # a feature that is not there


def middle_answers(models: PropensityModels, seed: int = 3) -> None:
    """Users with a value near the average redeem (0.8), the rest seldom (0.1)."""
    draw = random.Random(seed)
    for _ in range(4000):
        x = draw.uniform(-3.0, 3.0)
        likely = 0.8 if abs(x) < 0.5 else 0.1
        models.learn_one("points", {"x": x}, draw.random() < likely)


def test_a_banded_model_learns_that_the_middle_answers_best() -> None:
    banded = PropensityModels(prior=0.2, learning_rate=0.2, banded=("x",))
    plain = PropensityModels(prior=0.2, learning_rate=0.2)
    middle_answers(banded)
    middle_answers(plain)

    def at(models: PropensityModels, x: float) -> float:
        return models.predict_one("points", {"x": x})

    # The plain regression is a line in x: the middle never beats both ends.
    assert at(plain, 0.0) <= max(at(plain, -2.0), at(plain, 2.0))
    assert at(banded, 0.0) > 0.4
    assert at(banded, 0.0) > 2 * max(at(banded, -2.0), at(banded, 2.0))


def test_an_explanation_counts_the_band_against_the_average_users() -> None:
    models = PropensityModels(prior=0.2, learning_rate=0.2, banded=("x",))
    middle_answers(models)
    # Far out, the band that seldom redeems pulls the score down; at the average there
    # is nothing to explain.
    (name, far), *_ = models.contributions("points", {"x": 2.5}, top=1)
    assert name == "x"
    assert far < -1.0
    assert models.contributions("points", {"x": models_mean(models)}, top=1) == []


def models_mean(models: PropensityModels) -> float:
    """The value the scaler standardises to 0: the average user's."""
    scaler = models.models["points"]["StandardScaler"]
    return float(scaler.means["x"])
