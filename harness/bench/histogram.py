"""A log-linear latency histogram in the manner of HdrHistogram, small enough to own.

Each power of two between ``lowest`` and ``highest`` is split into equal linear
sub-buckets, enough of them that a bucket's midpoint is within ``precision``
(relative) of every value in it. Recording is O(1) and memory is fixed (a few
thousand counters), however many values are recorded, so a latency run can
count every event instead of sampling.
"""

from __future__ import annotations

import math


class LatencyHistogram:
    """Counts of values (any unit, say milliseconds) with bounded relative error.

    Values below ``lowest`` or above ``highest`` count at that edge: a latency of
    zero is below any clock's resolution, and one above the range is reported as
    the range's end rather than dropped.
    """

    def __init__(
        self, *, lowest: float = 0.001, highest: float = 60_000.0, precision: float = 0.01
    ) -> None:
        if not 0 < lowest < highest or not 0 < precision < 1:
            raise ValueError("need 0 < lowest < highest and 0 < precision < 1")
        self.lowest = lowest
        self.highest = highest
        self.precision = precision
        # A midpoint is at most half a bucket's width from any value in the bucket, and a
        # bucket is 1/sub_buckets of the smallest value of its power of two.
        self.sub_buckets = math.ceil(1 / (2 * precision))
        octaves = math.floor(math.log2(highest / lowest)) + 1
        self.counts = [0] * (octaves * self.sub_buckets)
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float) -> None:
        clamped = min(max(value, self.lowest), self.highest)
        self.counts[self._index(clamped)] += 1
        self.count += 1
        self.min = min(self.min, clamped)
        self.max = max(self.max, clamped)

    def percentile(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile (0..100), within ``precision``."""
        if not self.count:
            raise ValueError("no values recorded")
        rank = nearest_rank(q, self.count)
        if rank == 1:
            return self.min  # the extremes are kept exactly
        if rank == self.count:
            return self.max
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                # The true value lies between the extremes: clamping can only bring the
                # midpoint nearer to it.
                return min(max(self._midpoint(index), self.min), self.max)
        return self.max  # unreachable: the counts add up to self.count

    def _index(self, value: float) -> int:
        # frexp is exact: value / lowest = mantissa * 2**exponent with mantissa in [0.5, 1),
        # so the value lies in the power of two [2**(exponent-1), 2**exponent) of lowest.
        mantissa, exponent = math.frexp(value / self.lowest)
        sub_bucket = int((2 * mantissa - 1) * self.sub_buckets)
        return min((exponent - 1) * self.sub_buckets + sub_bucket, len(self.counts) - 1)

    def _midpoint(self, index: int) -> float:
        octave, sub_bucket = divmod(index, self.sub_buckets)
        return self.lowest * 2**octave * (1 + (sub_bucket + 0.5) / self.sub_buckets)


def nearest_rank(q: float, count: int) -> int:
    """The 1-based rank of the ``q``-th percentile of ``count`` sorted values."""
    if not 0 <= q <= 100:
        raise ValueError("a percentile is within 0..100")
    # The small tolerance keeps a product like 99.9 * 1000 / 100 = 999.0000000000001
    # at rank 999, where exact arithmetic puts it.
    return min(count, max(1, math.ceil(q * count / 100 - 1e-9)))
