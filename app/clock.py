"""Time, injected. Nothing else in the project calls ``time.time()`` for domain logic.

Decisions are timed by the event's own ``ts``; the wall clock is only for
the process's own needs (timestamps of live simulated traffic, progress).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes back, for durations."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()
