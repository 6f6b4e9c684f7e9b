"""Microseconds per item of a function over a list, for the hand benchmarks
(:mod:`harness.bench.rows`, :mod:`harness.bench.validate_speed`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_us_each(
    work: Callable[[bytes], object], items: Sequence[bytes], runs: int, *, warm: int
) -> float:
    """The median over ``runs`` passes of the time ``work`` takes per item, after the
    first ``warm`` items once (caches, compiled regexes, allocator)."""
    for item in items[:warm]:
        work(item)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for item in items:
            work(item)
        timings.append((time.perf_counter() - start) / len(items) * 1e6)
    return statistics.median(timings)
