"""Program-wide budgets and stock, kept per Kafka partition so workers never coordinate.

A program's total budget, its per-period budgets and each reward's stock are
split evenly across the partitions of the events topic; each partition spends
only its own share, kept in its :class:`Ledger`. Because a partition is owned
by exactly one worker at a time, no two workers ever spend the same share and
the program-wide limits can never be exceeded. The price: with very uneven
traffic one partition can run out while another still has some left.

Period budgets are rolling windows in event time, counted in buckets. A bucket
that only partly overlaps the window is counted whole, which errs on the safe
side: the limit may bind slightly early, never late.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Share:
    """Which part of the program-wide limits this partition may spend."""

    partition: int = 0
    partitions: int = 1

    def of_amount(self, amount: float) -> float:
        return amount / self.partitions

    def of_stock(self, stock: int) -> int:
        # Integer stock: the remainder goes to the lowest partitions, so shares sum to the total.
        return stock // self.partitions + int(self.partition < stock % self.partitions)


@dataclass(frozen=True, slots=True)
class Ledger:
    """Spend and stock used by one partition of one program."""

    spent_total: float = 0.0
    buckets: tuple[tuple[int, float], ...] = ()  # (bucket start ms, cost), oldest first
    stock_used: dict[str, int] = field(default_factory=dict)

    def spent_within(self, ts: int, window_ms: int, bucket_ms: int) -> float:
        """Cost granted in the window ending at ``ts`` (buckets overlapping it count whole)."""
        since = ts - window_ms - bucket_ms
        return sum(cost for start, cost in self.buckets if start > since)

    def stock_taken(self, reward_id: str) -> int:
        return self.stock_used.get(reward_id, 0)

    def charge(
        self, *, ts: int, cost: float, reward_id: str, bucket_ms: int, keep_ms: int
    ) -> Ledger:
        """The ledger after granting ``reward_id`` at ``cost``; old buckets are dropped."""
        start = ts - ts % bucket_ms
        buckets = [b for b in self.buckets if b[0] > ts - keep_ms - bucket_ms]
        if buckets and buckets[-1][0] == start:
            buckets[-1] = (start, round(buckets[-1][1] + cost, 6))
        else:
            buckets.append((start, cost))
            buckets.sort()
        return replace(
            self,
            spent_total=round(self.spent_total + cost, 6),
            buckets=tuple(buckets),
            stock_used={**self.stock_used, reward_id: self.stock_taken(reward_id) + 1},
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Ledger:
        if not raw:
            return cls()
        document: dict[str, Any] = orjson.loads(raw)
        document["buckets"] = tuple((int(s), float(c)) for s, c in document["buckets"])
        return cls(**document)


def ledger_key(program_id: str, partition: int) -> bytes:
    """The key of a partition's ledger in the ledger table."""
    return f"{program_id}:{partition}".encode()
