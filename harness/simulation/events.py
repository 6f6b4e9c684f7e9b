"""Synthetic users and their events, reproducible from a seed.

Users differ in how active they are (a few are very active, most are not), how
much they spend, their device, network and preferred channel. Each user's first
event is a sign-up; outcome events point at the deterministic decision ids of
that user's earlier events, as a real app's would. A share of the messages can
be malformed on purpose, one of several realistic ways, to exercise the
dead-letter path.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.contract.records import decision_id_for

CHANNELS = ("web", "mobile", "email", "sms", "store")
COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE", "US", "BR")
CURRENCY = {"GB": "GBP", "PL": "PLN", "SE": "SEK", "US": "USD", "BR": "BRL"}
# Relative frequency of event types for a user who already signed up.
EVENT_MIX = (
    ("page_view", 46),
    ("session_start", 20),
    ("purchase", 16),
    ("reward_opened", 6),
    ("reward_redeemed", 4),
    ("reward_dismissed", 3),
    ("survey", 2),
    ("referral", 2),
    ("consent_updated", 1),
)
INVALID_KINDS = (
    "bad_json",
    "not_an_object",
    "missing_field",
    "unknown_type",
    "wrong_type",
    "bad_timestamp",
    "oversized",
)


@dataclass
class SimulatedUser:
    user_id: str
    device_id: str
    ip: str
    channel: str
    country: str
    age: int
    spend_scale: float
    signed_up: bool = False
    rewardable_event_ids: list[str] = field(default_factory=list)


# Where every simulated run's clock starts (2026-01-01T00:00:00Z), benchmarks included.
START_MS = 1_767_225_600_000


@dataclass(frozen=True)
class SimulatorConfig:
    users: int = 1_000
    seed: int = 7
    start_ms: int = START_MS
    events_per_second: float = 100.0  # spacing of event timestamps
    invalid_ratio: float = 0.0
    program: str = "retail-loyalty"
    # Activity per user falls off as 1/rank^skew. The load generator's default makes the
    # busiest "user" send several percent of all traffic: right for load, not for people.
    skew: float = 0.8


class EventSimulator:
    """An endless, seeded stream of event documents (or malformed bytes)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.users = [self._new_user(i) for i in range(config.users)]
        # Activity follows a heavy tail: weight 1/rank^0.8 over a shuffled order.
        weights = [1.0 / (rank + 1) ** config.skew for rank in range(config.users)]
        self.random.shuffle(weights)
        # Summed once: random.choices would sum the weights at every draw (the same
        # draws, in time that grew with the users).
        self.cum_weights = list(itertools.accumulate(weights))
        self.types, self.type_weights = zip(*EVENT_MIX, strict=True)
        self.sequence = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.next_message()

    def next_message(self) -> bytes:
        """The next message value: a valid event, or a malformed one at ``invalid_ratio``."""
        self.sequence += 1
        if self.config.invalid_ratio and self.random.random() < self.config.invalid_ratio:
            return self._malformed(self.random.choice(INVALID_KINDS))
        return orjson.dumps(self.next_event())

    def next_event(self) -> dict[str, Any]:
        user = self.random.choices(self.users, cum_weights=self.cum_weights)[0]
        ts = self.config.start_ms + int(self.sequence * 1000 / self.config.events_per_second)
        event_type = "signup" if not user.signed_up else self._event_type(user)
        user.signed_up = True
        event: dict[str, Any] = {
            "event_id": f"ev-{self.config.seed}-{self.sequence}",
            "user_id": user.user_id,
            "type": event_type,
            "ts": ts,
            "channel": user.channel if self.random.random() < 0.8 else self.random.choice(CHANNELS),
            "device_id": user.device_id,
            "ip": user.ip,
        }
        self._fill(event, user)
        if event_type in ("signup", "purchase"):
            user.rewardable_event_ids = [*user.rewardable_event_ids[-4:], event["event_id"]]
        return event

    def _event_type(self, user: SimulatedUser) -> str:
        event_type: str = self.random.choices(self.types, self.type_weights)[0]
        if event_type.startswith("reward_") and not user.rewardable_event_ids:
            return "page_view"
        return event_type

    def _fill(self, event: dict[str, Any], user: SimulatedUser) -> None:
        kind = event["type"]
        if kind == "signup":
            event["attributes"] = {"country": user.country, "age": user.age}
        elif kind == "purchase":
            event["amount"] = round(self.random.lognormvariate(3.2, 0.8) * user.spend_scale, 2)
            event["currency"] = CURRENCY.get(user.country, "EUR")
        elif kind.startswith("reward_"):
            earlier = self.random.choice(user.rewardable_event_ids)
            event["decision_id"] = decision_id_for(self.config.program, user.user_id, earlier)
        elif kind == "consent_updated":
            event["attributes"] = {"marketing": self.random.random() < 0.7}
        elif kind == "survey":
            event["attributes"] = {"score": self.random.randint(0, 10)}
        elif kind == "referral":
            event["attributes"] = {"referred_user_id": f"u-{self.random.randrange(10**7):07d}"}

    def _new_user(self, index: int) -> SimulatedUser:
        r = self.random
        return SimulatedUser(
            user_id=f"u-{self.config.seed}-{index:07d}",
            device_id=f"dev-{r.getrandbits(48):012x}",
            ip=f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
            channel=r.choices(CHANNELS, (40, 40, 10, 3, 7))[0],
            country=r.choice(COUNTRIES),
            age=r.randint(16, 80),
            spend_scale=r.choice((0.5, 1.0, 1.0, 2.0, 4.0)),
        )

    def _malformed(self, kind: str) -> bytes:
        event = self.next_event()
        if kind == "bad_json":
            return orjson.dumps(event)[:-7]
        if kind == "not_an_object":
            return orjson.dumps([event])
        if kind == "missing_field":
            del event["user_id"]
        elif kind == "unknown_type":
            event["type"] = "teleport"
        elif kind == "wrong_type":
            event["amount"] = "a lot"
        elif kind == "bad_timestamp":
            event["ts"] = "yesterday at noon"
        elif kind == "oversized":
            event["attributes"] = {f"k{i}": "x" * 1024 for i in range(64)}
        return orjson.dumps(event)
