"""Ratios over a rolling window of time: what the worker's rate and quality gauges show.

A :class:`RollingRatio` keeps, per key, a numerator and a denominator summed over
the last few minutes: redemptions over grants per reward, explored over all
policy decisions, summed log loss over answers. Time is passed in (seconds on any
clock that does not go back), never read here, so the class is pure and tested
with plain numbers.

The window is cut into equal slices and a slice leaves the window whole: memory
per key is fixed whatever the traffic, and the ratio covers between
``window_s - window_s / slices`` and ``window_s`` seconds of history.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class _Slices:
    """One key's slices: which slice of time each holds, and its two sums."""

    __slots__ = ("denominators", "numerators", "starts")

    def __init__(self, count: int) -> None:
        self.starts = [-1] * count  # the slice number held, -1 for none yet
        self.numerators = [0.0] * count
        self.denominators = [0.0] * count


class RollingRatio(Generic[K]):
    """Per key, sum(numerator) / sum(denominator) over the last ``window_s`` seconds.

    >>> rate = RollingRatio[str](window_s=60, slices=6)
    >>> rate.add(0.0, "points", 0, 1)  # a grant
    >>> rate.add(5.0, "points", 1, 0)  # a redemption
    >>> rate.add(5.0, "points", 0, 1)  # another grant
    >>> rate.ratio(10.0, "points")
    0.5
    >>> rate.ratio(70.0, "points")  # a minute later: nothing left in the window
    nan
    """

    def __init__(self, *, window_s: float, slices: int) -> None:
        if window_s <= 0 or slices < 1:
            raise ValueError("a rolling window needs a positive length and at least one slice")
        self.window_s = window_s
        self.slice_s = window_s / slices
        self.count = slices
        self.keys: dict[K, _Slices] = {}

    def add(self, at_s: float, key: K, numerator: float, denominator: float) -> None:
        """Count ``numerator`` and ``denominator`` for ``key`` at time ``at_s``."""
        number = int(at_s // self.slice_s)
        slices = self.keys.get(key)
        if slices is None:
            slices = self.keys[key] = _Slices(self.count)
        index = number % self.count
        held = slices.starts[index]
        if held != number:
            if held > number:
                return  # older than what this slot now holds: out of the window already
            slices.starts[index] = number
            slices.numerators[index] = 0.0
            slices.denominators[index] = 0.0
        slices.numerators[index] += numerator
        slices.denominators[index] += denominator

    def sums(self, at_s: float, key: K) -> tuple[float, float]:
        """The numerator and the denominator of ``key`` within the window ending at ``at_s``."""
        slices = self.keys.get(key)
        if slices is None:
            return 0.0, 0.0
        newest = int(at_s // self.slice_s)
        oldest = newest - self.count + 1
        numerator = denominator = 0.0
        for index, number in enumerate(slices.starts):
            if oldest <= number <= newest:
                numerator += slices.numerators[index]
                denominator += slices.denominators[index]
        return numerator, denominator

    def ratio(self, at_s: float, key: K) -> float:
        """The ratio for ``key`` within the window; NaN (Prometheus's "no value") when its
        denominator is zero there."""
        numerator, denominator = self.sums(at_s, key)
        return numerator / denominator if denominator else math.nan
