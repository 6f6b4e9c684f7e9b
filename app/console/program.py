"""The program view: budgets and stock left, and the last hour of grants, redemptions,
alerts and decision latency.

Budgets come from the ledger changelog (``<app_id>-program-ledger-changelog``): the
table the engine itself spends from, one row per partition (and experiment arm), so
what the page shows is what the engine will allow, computed by the engine's own
:func:`app.decisioning.checks.program_budgets_left`. "The last hour" is wall-clock
time by the records' Kafka timestamps (when the worker published them), so it stays
live whatever event times producers send.

Pure, like :class:`app.console.index.ConsoleIndex`: fed records, asked with ``now_ms``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any

from app.decisioning.checks import program_budgets_left
from app.decisioning.ledger import Ledger, Share, ledger_key
from app.programs import Program

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# Bounds on what is kept to pair records read from different topics (an event with its
# decision, a redemption with its grant): far more than arrive within any read delay.
PAIRING_CAPACITY = 200_000
LATENCY_SAMPLES = 20_000


class MinuteCounts:
    """Counts by key in one-minute buckets of wall-clock time, over a sliding window."""

    def __init__(self, window_ms: int = HOUR_MS) -> None:
        self.window_ms = window_ms
        self.buckets: dict[int, Counter[str]] = {}

    def add(self, at_ms: int, key: str, count: int = 1) -> None:
        self.buckets.setdefault(at_ms - at_ms % MINUTE_MS, Counter())[key] += count

    def totals(self, now_ms: int) -> Counter[str]:
        since = now_ms - self.window_ms
        for start in [s for s in self.buckets if s + MINUTE_MS <= since]:
            del self.buckets[start]
        total: Counter[str] = Counter()
        for counts in self.buckets.values():
            total.update(counts)
        return total


class _Bounded(OrderedDict[Any, Any]):
    """A dict that drops its oldest entry past ``capacity``."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.capacity:
            self.popitem(last=False)


class ProgramStats:
    """Budgets, stock, grants, redemptions, alerts and latency of one program."""

    def __init__(self, program: Program, *, partitions: int, bucket_ms: int) -> None:
        """``bucket_ms`` is the engine's width of a budget period's buckets
        (:attr:`app.decisioning.engine.Engine.bucket_ms`)."""
        self.program = program
        self.partitions = partitions
        self.bucket_ms = bucket_ms
        self.ledgers: dict[bytes, Ledger] = {}
        self.grants = MinuteCounts()
        self.redemptions = MinuteCounts()
        self.alert_reasons = MinuteCounts()
        self.statuses = MinuteCounts()
        # decision_id -> (user_id, reward) of recent grants, to name what a redemption redeems.
        self.granted: _Bounded = _Bounded(PAIRING_CAPACITY)
        self.redeemed: _Bounded = _Bounded(PAIRING_CAPACITY)
        # Redemptions read before their grant: decision_id -> (user_id, decision_id, when).
        self.unmatched: _Bounded = _Bounded(PAIRING_CAPACITY)
        # (user_id, event_id) -> when the event was produced, or when its decision was
        # published (whichever of the two was read first waits for the other).
        self.produced: _Bounded = _Bounded(PAIRING_CAPACITY)
        self.published: _Bounded = _Bounded(PAIRING_CAPACITY)
        self.latencies: deque[tuple[int, int]] = deque(maxlen=LATENCY_SAMPLES)
        self.newest_ts = 0

    # ------------------------------------------------------------ feeding

    def add_ledger(self, key: bytes, value: bytes | None) -> None:
        """One record of the ledger changelog (None: a tombstone)."""
        if value is None:
            self.ledgers.pop(key, None)
        else:
            self.ledgers[key] = Ledger.from_bytes(value)

    def add_decision(self, decision: dict[str, Any], published_ms: int) -> None:
        self.newest_ts = max(self.newest_ts, int(decision["ts"]))
        self.statuses.add(published_ms, str(decision["status"]))
        if decision["status"] == "granted":
            reward = str(decision["action"])
            self.grants.add(published_ms, reward)
            self.granted[decision["decision_id"]] = (decision["user_id"], reward)
            waiting = self.unmatched.pop(decision["decision_id"], None)
            if waiting is not None:
                self._redeemed(*waiting)
        key = (decision["user_id"], decision["event_id"])
        produced = self.produced.pop(key, None)
        if produced is None:
            self.published[key] = published_ms
        else:
            self.latencies.append((published_ms, published_ms - produced))

    def add_alert(self, alert: dict[str, Any], published_ms: int) -> None:
        for reason in alert.get("reasons") or []:
            self.alert_reasons.add(published_ms, str(reason))

    def add_event(self, event: dict[str, Any], produced_ms: int) -> None:
        """An input event: when it was produced (for latency) and, for a redemption,
        which granted reward it redeems."""
        user_id, event_id = event.get("user_id"), event.get("event_id")
        if not isinstance(user_id, str) or not isinstance(event_id, str):
            return
        published = self.published.pop((user_id, event_id), None)
        if published is None:
            self.produced[user_id, event_id] = produced_ms
        else:
            self.latencies.append((published, published - produced_ms))
        decision_id = event.get("decision_id")
        if event.get("type") == "reward_redeemed" and isinstance(decision_id, str):
            self._redeemed(user_id, decision_id, produced_ms)

    def forget(self, user_id: str) -> None:
        """Drop what pairs a user's records (their erasure)."""
        for pairs in (self.granted, self.redeemed, self.unmatched):
            for key in [k for k, value in pairs.items() if value[0] == user_id]:
                del pairs[key]
        for pairs in (self.produced, self.published):
            for key in [k for k in pairs if k[0] == user_id]:
                del pairs[key]

    # ------------------------------------------------------------ asking

    def view(self, now_ms: int) -> dict[str, Any]:
        grants, redemptions = self.grants.totals(now_ms), self.redemptions.totals(now_ms)
        rewards = sorted(set(grants) | set(redemptions) | {r.id for r in self.program.rewards})
        return {
            "program": self.program.id,
            "currency": self.program.currency,
            "budgets": self.budgets(),
            "stock": self.stock(),
            "last_hour": {
                "by_reward": [
                    {"reward": r, "granted": grants[r], "redeemed": redemptions[r]} for r in rewards
                ],
                "decisions_by_status": dict(self.statuses.totals(now_ms).most_common()),
                "alerts_by_reason": dict(self.alert_reasons.totals(now_ms).most_common()),
                "latency_ms": self.latency(now_ms),
            },
        }

    def budgets(self) -> dict[str, Any]:
        """What is left of each program-wide budget, summed over every partition's
        share, with its period budgets as of the newest decision's event time."""
        as_of = self.newest_ts
        left: dict[str, float] = {}
        spent = 0.0
        for share, ledger in self._shares():
            spent += ledger.spent_total
            for name, amount in program_budgets_left(
                self.program, ledger, share, ts=as_of, bucket_ms=self.bucket_ms
            ):
                left[name] = left.get(name, 0.0) + amount
        budgets = self.program.budgets
        limits = {"total": budgets.total} | {p.window.text: p.limit for p in budgets.periods}
        return {
            "as_of_ts": as_of,
            "spent_total": round(spent, 6),
            "left": [
                {"budget": name, "limit": limits.get(name), "left": round(amount, 2)}
                for name, amount in left.items()
            ],
        }

    def stock(self) -> list[dict[str, Any]]:
        """Units left of each reward with a stock, summed over every partition's share."""
        found = []
        for reward in self.program.rewards:
            if reward.stock is None:
                continue
            left = sum(
                max(share.of_stock(reward.stock) - ledger.stock_taken(reward.id), 0)
                for share, ledger in self._shares()
            )
            found.append({"reward": reward.id, "stock": reward.stock, "left": left})
        return found

    def latency(self, now_ms: int) -> dict[str, Any]:
        """Event produced to decision published over the last hour: count, p50, p95, p99."""
        recent = sorted(ms for at, ms in self.latencies if at > now_ms - HOUR_MS)
        if not recent:
            return {"count": 0, "p50": None, "p95": None, "p99": None}

        def quantile(q: float) -> int:
            return recent[min(int(q * len(recent)), len(recent) - 1)]

        return {
            "count": len(recent),
            "p50": quantile(0.5),
            "p95": quantile(0.95),
            "p99": quantile(0.99),
        }

    # ------------------------------------------------------------ inside

    def _redeemed(self, user_id: str, decision_id: str, produced_ms: int) -> None:
        grant = self.granted.get(decision_id)
        if grant is None:
            self.unmatched[decision_id] = (user_id, decision_id, produced_ms)
            return
        # Only a user's own grant, once: a forged or repeated answer redeems nothing.
        if grant[0] != user_id or decision_id in self.redeemed:
            return
        self.redeemed[decision_id] = grant
        self.redemptions.add(produced_ms, grant[1])

    def _shares(self) -> list[tuple[Share, Ledger]]:
        """Every partition's (and experiment arm's) share with its ledger: an empty
        ledger where the engine has spent nothing yet."""
        experiment = self.program.experiment
        arms: list[tuple[str | None, float]] = (
            [(arm.name, arm.share) for arm in experiment.arms] if experiment else [(None, 1.0)]
        )
        return [
            (
                Share(partition, self.partitions, fraction),
                self.ledgers.get(ledger_key(self.program.id, partition, arm)) or Ledger(),
            )
            for arm, fraction in arms
            for partition in range(self.partitions)
        ]
