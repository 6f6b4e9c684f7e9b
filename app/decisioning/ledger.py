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

Charges are idempotent: a ledger remembers the decisions it charged most
recently (:data:`RECENT_CHARGES` of them), so a grant decided again after a
crash (the same decision id) is not charged twice.
"""

from __future__ import annotations

import bisect
import math
import operator
from typing import Any

import msgspec
import orjson
from msgspec.structs import replace

# How many recent charges a ledger remembers by decision: far more than a partition
# grants between two offset commits, which is what a restarted worker can re-process.
RECENT_CHARGES = 512
_START = operator.itemgetter(0)  # of a (bucket start ms, cost) bucket
_COST = operator.itemgetter(1)


class Share(msgspec.Struct, frozen=True, gc=False):
    """Which part of the program-wide limits this partition may spend."""

    partition: int = 0
    partitions: int = 1
    # An experiment's arm spends only its share of every limit (1: no experiment).
    fraction: float = 1.0

    def of_amount(self, amount: float) -> float:
        return amount * self.fraction / self.partitions

    def of_stock(self, stock: int) -> int:
        # An arm gets the whole units of its share (the arms' units never sum past the
        # stock); then the remainder goes to the lowest partitions, so shares sum to it.
        if self.fraction < 1.0:
            stock = math.floor(stock * self.fraction + 1e-9)
        return stock // self.partitions + int(self.partition < stock % self.partitions)


class Ledger(msgspec.Struct, frozen=True, gc=False):
    """Spend and stock used by one partition of one program."""

    spent_total: float = 0.0
    buckets: tuple[tuple[int, float], ...] = ()  # (bucket start ms, cost), oldest first
    stock_used: dict[str, int] = msgspec.field(default_factory=dict)
    # The latest charges, decision ref -> event time, oldest first: a mapping because every
    # grant asks whether its decision was charged (a scan of a busy partition's
    # RECENT_CHARGES refs took about 30 us a grant, 1.5% of a replay).
    charged: dict[str, int] = msgspec.field(default_factory=dict)

    def has_charged(self, ref: str) -> bool:
        return ref in self.charged

    def remembers(self, ts: int) -> bool:
        """Would a charge at ``ts`` still be among the charges this ledger remembers?"""
        # Asked only of a repeated event's grant: the scan is rare.
        return len(self.charged) < RECENT_CHARGES or ts >= min(self.charged.values())

    def spent_within(self, ts: int, window_ms: int, bucket_ms: int) -> float:
        """Cost granted in the window ending at ``ts`` (buckets overlapping it count whole)."""
        # The buckets are oldest first: the window is a tail of them, found by bisection
        # and summed in C (a week of hourly buckets walked in Python was 3% of a replay).
        buckets = self.buckets
        first = bisect.bisect_right(buckets, ts - window_ms - bucket_ms, key=_START)
        return sum(map(_COST, buckets[first:]))

    def stock_taken(self, reward_id: str) -> int:
        return self.stock_used.get(reward_id, 0)

    def charge(
        self,
        *,
        ts: int,
        cost: float,
        reward_id: str,
        bucket_ms: int,
        keep_ms: int,
        ref: str = "",
    ) -> Ledger:
        """The ledger after granting ``reward_id`` at ``cost`` for the decision ``ref``
        (unchanged if that decision was charged already); old buckets are dropped."""
        if ref and self.has_charged(ref):
            return self
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
            charged=_remember(self.charged, ref, ts) if ref else self.charged,
        )

    def to_bytes(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Ledger:
        if not raw:
            return cls()
        document: dict[str, Any] = orjson.loads(raw)
        document["buckets"] = tuple((int(s), float(c)) for s, c in document["buckets"])
        charged = document.get("charged", {})
        # Rows written before the charges were a mapping hold [ref, ts] pairs, oldest first.
        pairs = charged.items() if isinstance(charged, dict) else charged
        document["charged"] = {str(r): int(t) for r, t in pairs}
        return cls(**document)


def _remember(charged: dict[str, int], ref: str, ts: int) -> dict[str, int]:
    """``charged`` with ``ref`` added as the newest, the oldest forgotten past the bound."""
    remembered = {**charged, ref: ts}
    if len(remembered) > RECENT_CHARGES:
        del remembered[next(iter(remembered))]
    return remembered


def ledger_key(program_id: str, partition: int, arm: str | None = None) -> bytes:
    """The key of a partition's ledger in the ledger table (one per experiment arm)."""
    if arm is None:
        return f"{program_id}:{partition}".encode()
    return f"{program_id}:{arm}:{partition}".encode()
