"""The state the engine keeps for one user, and how one event changes it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from app.contract.records import Event

# How many recent event ids a user's state remembers to recognise a repeat.
RECENT_EVENT_IDS = 32


@dataclass(frozen=True, slots=True)
class UserState:
    """Counters and recency for one user. Absent fields mean "never"."""

    events: int = 0
    purchases: int = 0
    spend: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    rewards_granted: int = 0
    reward_cost: float = 0.0
    last_reward_ts: int | None = None
    recent_event_ids: tuple[str, ...] = field(default_factory=tuple)

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.recent_event_ids

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserState:
        if not raw:
            return cls()
        document: dict[str, Any] = orjson.loads(raw)
        document["recent_event_ids"] = tuple(document.get("recent_event_ids", ()))
        return cls(**document)


def update(state: UserState, event: Event) -> UserState:
    """The state after ``event``, before any reward is decided for it."""
    is_purchase = event.type == "purchase"
    return replace(
        state,
        events=state.events + 1,
        purchases=state.purchases + int(is_purchase),
        spend=round(state.spend + ((event.amount or 0.0) if is_purchase else 0.0), 2),
        first_ts=event.ts if state.first_ts is None else min(state.first_ts, event.ts),
        last_ts=event.ts if state.last_ts is None else max(state.last_ts, event.ts),
        recent_event_ids=(*state.recent_event_ids, event.event_id)[-RECENT_EVENT_IDS:],
    )


def record_reward(state: UserState, *, cost: float, ts: int) -> UserState:
    """The state after a reward costing ``cost`` was granted at ``ts``."""
    return replace(
        state,
        rewards_granted=state.rewards_granted + 1,
        reward_cost=round(state.reward_cost + cost, 4),
        last_reward_ts=ts,
    )
