"""The windowed half-space trees score every point as River's HalfSpaceTrees does, to the
bit, while learning a window's points at once. Pure code."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping

import pytest
from river import anomaly

from app.fraud.halfspace import WindowedHalfSpaceTrees
from app.fraud.scoring import ANOMALY_LIMITS


def _for_river(limits: Mapping[str, tuple[float, float]]) -> dict[Hashable, tuple[float, float]]:
    """``limits`` as River's HalfSpaceTrees types them (a feature name is any hashable)."""
    return dict(limits.items())


def _points(seed: int, count: int) -> list[dict[str, float]]:
    """Mostly quiet activity with bursts, values at the limits, on split-like round
    numbers and the odd NaN (River sends NaN right, as every ``value < t`` is false)."""
    rng = random.Random(seed)
    points = []
    for _ in range(count):
        burst = rng.random() < 0.05
        point = {}
        for name, (low, high) in ANOMALY_LIMITS.items():
            value = rng.expovariate(1.0) * (high / 2 if burst else 1.0)
            roll = rng.random()
            if roll < 0.02:
                value = high
            elif roll < 0.04:
                value = float(round(value))
            elif roll < 0.045:
                value = math.nan
            point[name] = min(max(value, low), high) if not math.isnan(value) else value
        points.append(point)
    return points


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_scores_match_rivers_at_every_step(seed: int) -> None:
    sizes = {"n_trees": 10, "height": 8, "window_size": 250}
    river_trees = anomaly.HalfSpaceTrees(**sizes, limits=_for_river(ANOMALY_LIMITS), seed=seed)
    windowed = WindowedHalfSpaceTrees(**sizes, limits=ANOMALY_LIMITS, seed=seed)
    scores = []
    for point in _points(seed, 1_300):  # five windows and part of a sixth
        expected = float(river_trees.score_one(point))
        assert windowed.score_one(point) == expected
        scores.append(expected)
        river_trees.learn_one(point)
        windowed.learn_one(point)
    # The comparison means something: scores are 0 for the first window only, then spread.
    assert set(scores[:250]) == {0.0}
    assert len(set(scores[250:])) > 100
    assert windowed.windows_closed


@pytest.mark.parametrize("seed", [0, 7])
def test_a_score_with_a_floor_is_the_score_or_none_below_it(seed: int) -> None:
    windowed = WindowedHalfSpaceTrees(limits=ANOMALY_LIMITS, seed=seed)
    points = _points(seed, 1_000)
    for point in points[:750]:
        windowed.learn_one(point)
    scores = [windowed.score_one(point) for point in points[750:]]
    # Floors at round values and at scores the points reach exactly (the edge case).
    floors = [0.0, 0.5, 0.9, 0.95, 0.99, 1.0, *sorted(scores)[::25]]
    for point, score in zip(points[750:], scores, strict=True):
        for floor in floors:
            expected = score if score >= floor else None
            assert windowed.score_at_least(point, floor) == expected
    # Both sides of the floor the detector uses are reached.
    assert min(scores) < 0.95 <= max(scores)


def test_before_a_window_closes_a_floor_above_zero_gives_none() -> None:
    windowed = WindowedHalfSpaceTrees(limits=ANOMALY_LIMITS, seed=1)
    point = _points(1, 1)[0]
    assert windowed.score_one(point) == 0.0
    assert windowed.score_at_least(point, 0.0) == 0.0
    assert windowed.score_at_least(point, 0.95) is None


def test_smaller_trees_and_windows_match_too() -> None:
    limits = {"a": (0.0, 1.0), "b": (-5.0, 5.0)}
    river_trees = anomaly.HalfSpaceTrees(
        n_trees=3, height=3, window_size=7, limits=_for_river(limits), seed=1
    )
    windowed = WindowedHalfSpaceTrees(n_trees=3, height=3, window_size=7, limits=limits, seed=1)
    rng = random.Random(5)
    for _ in range(100):
        point = {"a": rng.random(), "b": rng.uniform(-5, 5)}
        assert windowed.score_one(point) == float(river_trees.score_one(point))
        river_trees.learn_one(point)
        windowed.learn_one(point)


def test_a_point_without_every_feature_is_refused() -> None:
    windowed = WindowedHalfSpaceTrees(limits={"a": (0.0, 1.0), "b": (0.0, 1.0)}, seed=1)
    with pytest.raises(KeyError):
        windowed.learn_one({"a": 0.5})
    with pytest.raises(ValueError, match="limits"):
        WindowedHalfSpaceTrees(limits={})
