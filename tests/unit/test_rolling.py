"""Rolling ratios: sums over the last few minutes, cut into slices that leave whole."""

from __future__ import annotations

import doctest
import math

import pytest

from app import rolling
from app.rolling import RollingRatio


def test_the_ratio_is_the_numerators_over_the_denominators_in_the_window() -> None:
    window = RollingRatio[str](window_s=60, slices=6)
    for at_s in (0.0, 1.0, 2.0, 3.0):
        window.add(at_s, "points", 0, 1)  # four grants
    window.add(4.0, "points", 1, 0)  # one redemption
    assert window.sums(5.0, "points") == (1.0, 4.0)
    assert window.ratio(5.0, "points") == 0.25


def test_keys_are_counted_apart() -> None:
    window = RollingRatio[tuple[str, str]](window_s=60, slices=6)
    window.add(0.0, ("p", "points"), 1, 1)
    window.add(0.0, ("p", "cashback"), 0, 1)
    assert window.ratio(1.0, ("p", "points")) == 1.0
    assert window.ratio(1.0, ("p", "cashback")) == 0.0
    assert math.isnan(window.ratio(1.0, ("p", "never-seen")))


def test_a_slice_leaves_the_window_whole_once_it_is_older_than_the_window() -> None:
    window = RollingRatio[str](window_s=60, slices=6)  # slices of 10 s
    window.add(5.0, "k", 1, 1)  # slice [0, 10)
    window.add(15.0, "k", 0, 1)  # slice [10, 20)
    assert window.sums(59.9, "k") == (1.0, 2.0)
    # At 60 s the window holds the slices [10, 70): the first one is gone.
    assert window.sums(60.0, "k") == (0.0, 1.0)
    assert window.sums(70.0, "k") == (0.0, 0.0)
    assert math.isnan(window.ratio(70.0, "k"))


def test_a_slot_is_reused_for_the_next_lap_without_the_old_counts() -> None:
    window = RollingRatio[str](window_s=60, slices=6)
    window.add(5.0, "k", 3, 3)
    window.add(65.0, "k", 1, 2)  # the same slot, one lap later
    assert window.sums(66.0, "k") == (1.0, 2.0)


def test_a_late_addition_for_a_slice_already_replaced_is_dropped() -> None:
    window = RollingRatio[str](window_s=60, slices=6)
    window.add(65.0, "k", 1, 2)
    window.add(5.0, "k", 5, 5)  # its slot holds a newer slice: out of the window anyway
    assert window.sums(66.0, "k") == (1.0, 2.0)


def test_memory_per_key_is_fixed_whatever_the_traffic() -> None:
    window = RollingRatio[str](window_s=60, slices=6)
    for second in range(10_000):
        window.add(float(second), "k", 1, 1)
    slices = window.keys["k"]
    assert len(slices.starts) == len(slices.numerators) == len(slices.denominators) == 6
    assert window.sums(9_999.0, "k") == (60.0, 60.0)  # 6 slices of 10 one-second additions


@pytest.mark.parametrize(("window_s", "slices"), [(0, 5), (-1, 5), (60, 0)])
def test_a_window_needs_a_length_and_slices(window_s: float, slices: int) -> None:
    with pytest.raises(ValueError, match="rolling window"):
        RollingRatio[str](window_s=window_s, slices=slices)


def test_the_module_example_runs() -> None:
    failures, tried = doctest.testmod(rolling)
    assert tried > 0
    assert failures == 0
