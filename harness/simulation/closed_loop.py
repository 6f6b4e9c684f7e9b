"""A closed loop: simulated users who answer the rewards they get, per hidden taste.

Each user has a hidden *persona* that shapes both what they do (how often they
come, how much they buy; this the engine can see) and how likely they are to
redeem each kind of reward on each channel (this it cannot see, and must
learn). A granted reward is redeemed with the user's true probability, else
dismissed or ignored; the answer comes back later, as an outcome event, and
the engine learns from it. The simulator also knows the true probabilities,
which gives the oracle of the learning benchmark.

A *world* says how tastes follow from personas (:data:`WORLDS`). The default is the
one the engine's learning was developed against; the others keep every user and every
event the same (same seed, same behaviour) and change only the hidden tastes, so that
a change to the engine can be checked on worlds it was not tuned on: tastes that
differ less between personas, tastes that behaviour points to wrongly (each persona
has another persona's tastes), tastes that vary from user to user within a
persona, and tastes that change halfway through the run (what an online learner must
follow: a season, a competitor's offer).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.contract.records import Decision, Event

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Persona:
    """A kind of user: behaviour the engine can observe, tastes it cannot."""

    name: str
    share: float  # of the population
    visits_weight: float  # how active
    purchase_share: float  # of their events that are purchases
    basket: float  # typical order value
    channels: tuple[str, ...]  # where they are, most used first
    taste: dict[str, float]  # reward kind -> probability of redeeming
    answer_delay_h: float = 12.0


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "bargain_hunter",
        0.30,
        1.5,
        0.35,
        25.0,
        ("mobile", "web"),
        {"cashback": 0.65, "discount": 0.20, "points": 0.03, "free_shipping": 0.04, "badge": 0.02},
    ),
    Persona(
        "points_collector",
        0.25,
        2.0,
        0.12,
        40.0,
        ("web", "mobile"),
        {"points": 0.70, "badge": 0.25, "cashback": 0.04, "discount": 0.03, "free_shipping": 0.03},
    ),
    Persona(
        "big_basket",
        0.25,
        0.7,
        0.30,
        180.0,
        ("web", "store"),
        {"free_shipping": 0.70, "discount": 0.15, "cashback": 0.05, "points": 0.03, "badge": 0.02},
    ),
    Persona(
        "casual",
        0.20,
        0.5,
        0.08,
        30.0,
        ("mobile",),
        {"points": 0.08, "cashback": 0.05, "discount": 0.04, "free_shipping": 0.04, "badge": 0.01},
    ),
)
UNKNOWN_KIND_TASTE = 0.05
CHANNEL_PENALTY = 0.5  # a reward on a channel the user does not use is half as appealing
EVENT_TYPES = ("session_start", "page_view", "survey", "referral")


@dataclass(frozen=True)
class World:
    """How hidden tastes follow from personas.

    ``contrast``: each taste is ``mean + contrast x (taste - mean)`` with ``mean`` the
    population's taste for the kind (1: as the persona says; below 1: personas differ
    less). ``rotate``: persona ``i`` has the tastes of persona ``i + rotate`` (behaviour
    then points to other tastes than in the default world). ``spread``: each user's
    taste for each kind is moved by a normal draw with this standard deviation in
    logits (0: every user of a persona alike). ``shift_at``: the share of the run's time
    after which every persona's tastes turn to those of the next persona again (0: never):
    what a model learned before it is then wrong.
    """

    name: str
    contrast: float = 1.0
    rotate: int = 0
    spread: float = 0.0
    shift_at: float = 0.0


WORLDS: dict[str, World] = {
    world.name: world
    for world in (
        World("default"),
        World("mild", contrast=0.35),
        World("rotated", rotate=1),
        World("individual", spread=1.2),
        World("shift", shift_at=0.5),
    )
}


def world_tastes(world: World) -> dict[str, dict[str, float]]:
    """Per persona name, its tastes in ``world`` (before each user's own spread)."""
    kinds = sorted({kind for persona in PERSONAS for kind in persona.taste})
    mean = {
        kind: sum(p.share * p.taste.get(kind, UNKNOWN_KIND_TASTE) for p in PERSONAS)
        / sum(p.share for p in PERSONAS)
        for kind in kinds
    }
    tastes = {}
    for index, persona in enumerate(PERSONAS):
        source = PERSONAS[(index + world.rotate) % len(PERSONAS)]
        own = {kind: source.taste.get(kind, UNKNOWN_KIND_TASTE) for kind in kinds}
        if world.contrast != 1.0:  # else exactly the persona's (not rounded through the mean)
            own = {k: mean[k] + world.contrast * (v - mean[k]) for k, v in own.items()}
        tastes[persona.name] = own
    return tastes


@dataclass
class LoopUser:
    user_id: str
    persona: Persona
    device_id: str
    country: str
    age: int
    signed_up: bool = False


@dataclass
class LoopStats:
    """What happened in one closed-loop run."""

    events: int = 0
    malformed: int = 0  # messages broken on purpose, among ``events``
    decisions: int = 0
    granted: int = 0
    redeemed: int = 0
    dismissed: int = 0
    cost: float = 0.0
    # The value x lever of the rewards redeemed: what the program's priority (propensity x
    # value x lever) maximises with the probabilities it has. A rate per grant can rise by
    # granting fewer rewards of high value and low odds; this falls when it does.
    worth: float = 0.0
    explored: int = 0
    grants: list[tuple[int, str, str, float]] = field(
        default_factory=list
    )  # ts, user, reward, cost
    answers: list[bool] = field(default_factory=list)  # redeemed or not, per grant, in order

    @property
    def redemption_rate(self) -> float:
        return self.redeemed / self.granted if self.granted else 0.0

    def rate_by_fifth(self, digits: int | None = 3) -> list[float]:
        """Redemption rate over each fifth of the grants: the learning curve (rounded to
        ``digits``; None: exact, for comparing with a target)."""
        size = len(self.answers) // 5
        if size == 0:
            return []
        rates = [sum(self.answers[i * size : (i + 1) * size]) / size for i in range(5)]
        return rates if digits is None else [round(rate, digits) for rate in rates]


class ClosedLoopSimulator:
    """Seeded users, their events in time order, and their answers to decisions."""

    def __init__(
        self,
        *,
        users: int,
        seed: int,
        start_ms: int,
        days: float,
        members: float = 0.0,
        world: str = "default",
    ) -> None:
        """``members``: share of users who joined before the run (they never sign up in it):
        0 simulates a program's launch, 0.8 one that has been running for a while.
        ``world``: a name in :data:`WORLDS`."""
        if world not in WORLDS:
            raise ValueError(f"no world {world!r}; worlds: {', '.join(WORLDS)}")
        self.world = WORLDS[world]
        self.tastes = world_tastes(self.world)
        # After the shift (if any), each persona has the next persona's tastes.
        shifted = dataclasses.replace(self.world, rotate=self.world.rotate + 1)
        self.tastes_after = world_tastes(shifted) if self.world.shift_at else self.tastes
        self.random = random.Random(seed)
        self.seed = seed
        self.start_ms = start_ms
        self.span_ms = int(days * 24 * HOUR_MS)
        self.shift_ms = start_ms + int(self.world.shift_at * self.span_ms)
        self.now_ms = start_ms  # the time of the newest event given out
        self.users = [self._user(i) for i in range(users)]
        for user in self.users:
            # Drawn only when asked for, so a launch (members=0) keeps its exact stream.
            user.signed_up = members > 0 and self.random.random() < members
        # Summed once: random.choices would sum the weights at every draw (the same
        # draws, in time that grew with the users).
        self.cum_weights = list(itertools.accumulate(u.persona.visits_weight for u in self.users))
        self.answers: list[tuple[int, int, dict[str, Any]]] = []  # heap of (ts, seq, event)
        self.sequence = 0
        self.by_id = {u.user_id: u for u in self.users}
        self._means: dict[tuple[str, str | None, bool], float] = {}
        # Each user's own taste, in logits from the persona's: drawn from a generator of
        # its own, so every world has the very users and events of the default one.
        self.shifts: dict[str, dict[str, float]] = {}
        if self.world.spread:
            draws = random.Random(f"{seed}-tastes")
            kinds = sorted(next(iter(self.tastes.values())))
            for user in self.users:
                self.shifts[user.user_id] = {
                    kind: draws.gauss(0.0, self.world.spread) for kind in kinds
                }

    def _user(self, index: int) -> LoopUser:
        persona = self.random.choices(PERSONAS, [p.share for p in PERSONAS])[0]
        return LoopUser(
            user_id=f"cl-{self.seed}-{index:06d}",
            persona=persona,
            device_id=f"dev-{self.random.getrandbits(40):010x}",
            country=self.random.choice(("DE", "FR", "NL", "ES", "IT")),
            age=self.random.randint(18, 75),
        )

    def shifted(self, at_ms: int | None = None) -> bool:
        """Whether the tastes have shifted by ``at_ms`` (None: the newest event's time)."""
        at = self.now_ms if at_ms is None else at_ms
        return bool(self.world.shift_at) and at >= self.shift_ms

    def true_probability(
        self, user_id: str, kind: str, channel: str | None, at_ms: int | None = None
    ) -> float:
        """The hidden chance that this user redeems a reward of ``kind`` on ``channel``, at
        ``at_ms`` (None: the newest event's time; tastes differ only in a world that shifts)."""
        persona = self.by_id[user_id].persona
        tastes = self.tastes_after if self.shifted(at_ms) else self.tastes
        p = tastes[persona.name].get(kind, UNKNOWN_KIND_TASTE)
        shift = self.shifts.get(user_id, {}).get(kind)
        if shift is not None:
            p = 1.0 / (1.0 + math.exp(-(math.log(p / (1.0 - p)) + shift)))
        return p if channel is None or channel in persona.channels else p * CHANNEL_PENALTY

    def mean_probability(self, kind: str, channel: str | None) -> float:
        """The average of :meth:`true_probability` over every simulated user: what is
        known of a reward's appeal before anything is known of the user."""
        key = (kind, channel, self.shifted())
        if key not in self._means:
            self._means[key] = statistics.fmean(
                self.true_probability(user.user_id, kind, channel) for user in self.users
            )
        return self._means[key]

    def events(self, total: int) -> Iterator[Event]:
        """``total`` user events in time order, with outcome events interleaved when due."""
        step = self.span_ms / total
        for n in range(total):
            ts = self.start_ms + int(n * step)
            while self.answers and self.answers[0][0] <= ts:
                yield _event(heapq.heappop(self.answers)[2])
            self.now_ms = ts
            yield _event(self._user_event(ts))

    def next_answer(self) -> Event:
        """The earliest answer still due (after the last event: the answers that were
        scheduled and not yet given)."""
        return _event(heapq.heappop(self.answers)[2])

    def _user_event(self, ts: int) -> dict[str, Any]:
        user = self.random.choices(self.users, cum_weights=self.cum_weights)[0]
        self.sequence += 1
        persona = user.persona
        base: dict[str, Any] = {
            "event_id": f"cl-{self.seed}-{self.sequence}",
            "user_id": user.user_id,
            "ts": ts,
            "channel": self.random.choice(persona.channels),
            "device_id": user.device_id,
        }
        if not user.signed_up:
            user.signed_up = True
            return {
                **base,
                "type": "signup",
                "attributes": {"age": user.age, "country": user.country},
            }
        if self.random.random() < persona.purchase_share:
            amount = round(self.random.lognormvariate(0, 0.4) * persona.basket, 2)
            return {**base, "type": "purchase", "amount": amount, "currency": "EUR"}
        return {**base, "type": self.random.choices(EVENT_TYPES, (6, 10, 1, 1))[0]}

    def answer(self, decision: Decision, kind: str) -> bool:
        """Schedule the user's answer to a granted reward; True if they will redeem it."""
        p = self.true_probability(decision.user_id, kind, decision.channel, decision.ts)
        roll = self.random.random()
        persona = self.by_id[decision.user_id].persona
        delay = int(self.random.expovariate(1 / persona.answer_delay_h) * HOUR_MS) + 60_000
        if roll < p:
            outcome = "reward_redeemed"
        elif roll < p + (1 - p) * 0.4:
            outcome = "reward_dismissed"
        else:
            return False  # ignored: the engine counts it as a "no" when the window passes
        self.sequence += 1
        event: dict[str, Any] = {
            "event_id": f"cl-{self.seed}-{self.sequence}",
            "user_id": decision.user_id,
            "type": outcome,
            "ts": decision.ts + delay,
            "decision_id": decision.decision_id,
            "channel": decision.channel,
        }
        heapq.heappush(self.answers, (event["ts"], self.sequence, event))
        return outcome == "reward_redeemed"


def _event(document: dict[str, Any]) -> Event:
    return Event.from_document(document, document["ts"])
