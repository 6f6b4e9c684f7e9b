"""Seeded reward-fraud traffic with ground truth, for the fraud benchmark and its tests.

:func:`generate` mixes the ordinary users of :class:`~harness.simulation.events.EventSimulator`
with several instances of each attack in :data:`SCENARIOS`, and labels every event with
its scenario (``None`` for normal traffic) and its actor: the name of one attack
instance, which groups the accounts behind it (``"farm-3"``). The output is sorted by
``ts`` and every document is a valid event under ``docs/contract.md``. The only
repeated ``event_id`` values are the replays of ``replayed_events``.

Attackers must be caught by what they do, not by how their ids look. So every user,
event, device and address, honest or not, is drawn from one registry in one format:
normal users' ids are re-drawn too (their outcomes still point at their own decisions),
normal users get second devices and shared households, and most attackers mix ordinary
events into their attack. The same :class:`AttackConfig` always gives the same bytes.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Final

import orjson

from app.contract.records import OUTCOME_TYPES, decision_id_for
from harness.simulation.events import CHANNELS, COUNTRIES, CURRENCY, EventSimulator, SimulatorConfig

Document = dict[str, Any]

SCENARIOS: Final = (
    "account_farm",
    "redemption_velocity",
    "referral_ring",
    "forged_redemption",
    "replayed_events",
    "bot_burst",
)
# How many instances of each scenario intensity 1.0 gives.
BASE_INSTANCES: Final = {
    "account_farm": 3,
    "redemption_velocity": 4,
    "referral_ring": 3,
    "forged_redemption": 4,
    "replayed_events": 4,
    "bot_burst": 3,
}
ACTOR_PREFIX: Final = {
    "account_farm": "farm",
    "redemption_velocity": "velocity",
    "referral_ring": "ring",
    "forged_redemption": "forged",
    "replayed_events": "replay",
    "bot_burst": "burst",
}
SECOND: Final = 1_000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
# Attackers pay in euros: the cashback rule only pays on the program's currency.
EURO_COUNTRIES: Final = tuple(country for country in COUNTRIES if country not in CURRENCY)
# Event types whose decision an outcome can point at (the ones a program grants on).
REWARDING_TYPES: Final = frozenset({"signup", "purchase", "session_start", "survey", "referral"})


@dataclass(frozen=True)
class AttackConfig:
    """What to generate: the normal population, the window, and which attacks how often."""

    seed: int
    start_ms: int
    duration_ms: int
    normal_users: int
    normal_events: int
    program: str = "retail-loyalty"
    scenarios: tuple[str, ...] = SCENARIOS
    intensity: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
        if self.duration_ms < MINUTE:
            raise ValueError("duration_ms must be at least one minute")
        if self.normal_users < 1 or self.normal_events < 0 or self.intensity < 0:
            raise ValueError("normal_users must be >= 1, normal_events and intensity >= 0")

    def instances(self, scenario: str) -> int:
        """How many attack instances of ``scenario`` this config asks for."""
        if scenario not in self.scenarios or self.intensity == 0:
            return 0
        return max(1, round(BASE_INSTANCES[scenario] * self.intensity))


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """One event document and the truth about it: ``scenario`` None means normal traffic."""

    document: Document
    scenario: str | None
    actor: str | None


def generate(config: AttackConfig) -> list[LabelledEvent]:
    """Normal traffic plus every configured attack, labelled, in ``ts`` order (stable)."""
    ids = _Registry()
    world = _World(config, ids, _normal_traffic(config, ids))
    # Canonical order, whatever config.scenarios says: replays must come last so that
    # they can re-send the other attackers' events, and the output must not depend on it.
    for scenario in SCENARIOS:
        for index in range(config.instances(scenario)):
            rng = random.Random(f"{config.seed}/{scenario}/{index}")
            actor = f"{ACTOR_PREFIX[scenario]}-{index + 1}"
            documents = BUILDERS[scenario](world, rng, index)
            world.events.extend(LabelledEvent(document, scenario, actor) for document in documents)
    return sorted(world.events, key=lambda event: int(event.document["ts"]))


def ground_truth(events: Iterable[LabelledEvent]) -> dict[str, set[str]]:
    """Scenario -> the event_ids of its events (a replayed id is also a normal event's id)."""
    truth: dict[str, set[str]] = {}
    for event in events:
        if event.scenario is not None:
            truth.setdefault(event.scenario, set()).add(event.document["event_id"])
    return truth


def attacker_accounts(events: Iterable[LabelledEvent]) -> dict[str, set[str]]:
    """Scenario -> the user_ids that sent its events."""
    accounts: dict[str, set[str]] = {}
    for event in events:
        if event.scenario is not None:
            accounts.setdefault(event.scenario, set()).add(event.document["user_id"])
    return accounts


def write_jsonl(
    events: Iterable[LabelledEvent],
    events_path: str | PathLike[str],
    labels_path: str | PathLike[str],
) -> int:
    """Write the events as a producer would send them and their labels, line for line.

    Line n of the labels file (``event_id``, ``scenario``, ``actor``) describes line n
    of the events file; ids alone cannot, because a replay repeats an id. Returns the
    number of lines.
    """
    count = 0
    with open(events_path, "wb") as events_out, open(labels_path, "wb") as labels_out:
        for event in events:
            events_out.write(orjson.dumps(event.document) + b"\n")
            label = {
                "event_id": event.document["event_id"],
                "scenario": event.scenario,
                "actor": event.actor,
            }
            labels_out.write(orjson.dumps(label) + b"\n")
            count += 1
    return count


# --- ids ------------------------------------------------------------------------------


class _Registry:
    """Every id handed out, so that no two users, events, devices or addresses collide.

    Ids are drawn from the caller's random stream: each attack instance has its own, so
    adding an instance does not change the others.
    """

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.subnets: set[str] = set()

    def user(self, rng: random.Random) -> str:
        return self._fresh(rng, lambda r: f"u-{r.randrange(10**7):07d}")

    def event(self, rng: random.Random) -> str:
        return self._fresh(rng, lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)))

    def device(self, rng: random.Random) -> str:
        return self._fresh(rng, lambda r: f"dev-{r.getrandbits(48):012x}")

    def subnet(self, rng: random.Random) -> str:
        """A /24 (its first three octets) that nobody else was given."""
        while True:
            prefix = self._any_subnet(rng)
            if prefix not in self.subnets:
                self.subnets.add(prefix)
                return prefix

    def ip(self, rng: random.Random, subnet: str | None = None) -> str:
        """A fresh address, in ``subnet`` if given (small pools only: a /24 has 254)."""
        return self._fresh(rng, lambda r: f"{subnet or self._any_subnet(r)}.{r.randint(1, 254)}")

    @staticmethod
    def _any_subnet(rng: random.Random) -> str:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}"

    def _fresh(self, rng: random.Random, draw: Callable[[random.Random], str]) -> str:
        while True:
            candidate = draw(rng)
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate


# --- normal traffic -------------------------------------------------------------------


@dataclass
class _NormalUser:
    user_id: str
    # (device_id, ip) pairs: the phone on mobile data, the laptop at home, ...
    contexts: list[tuple[str, str]]

    def context(self, rng: random.Random) -> tuple[str, str]:
        if len(self.contexts) == 1 or rng.random() < 0.75:
            return self.contexts[0]
        return rng.choice(self.contexts[1:])


@dataclass
class _Household:
    device_id: str
    ip: str
    members: int = 1


class _Disguise:
    """Re-draws the simulator's ids in the shared formats, keeping outcome links intact.

    Also gives normal users what real ones have and a naive detector would trip on: a
    second device for some, and households of up to three accounts behind one address,
    some on one shared device.
    """

    HOUSEHOLD_SHARE = 0.06
    SECOND_DEVICE_SHARE = 0.3

    def __init__(self, config: AttackConfig, ids: _Registry, rng: random.Random) -> None:
        self.program = config.program
        self.ids = ids
        self.rng = rng
        self.users: dict[str, _NormalUser] = {}
        self.households: list[_Household] = []
        self.decisions: dict[str, str] = {}  # the simulator's decision id -> the new one

    def apply(self, event: Document, ts: int) -> Document:
        old_user_id, old_event_id = event["user_id"], event["event_id"]
        user = self.users.get(old_user_id) or self._new_user(old_user_id)
        event["event_id"] = self.ids.event(self.rng)
        event["user_id"] = user.user_id
        event["ts"] = ts
        event["device_id"], event["ip"] = user.context(self.rng)
        if "decision_id" in event:
            event["decision_id"] = self.decisions[event["decision_id"]]
        if event["type"] in REWARDING_TYPES:
            old = decision_id_for(self.program, old_user_id, old_event_id)
            self.decisions[old] = decision_id_for(self.program, user.user_id, event["event_id"])
        return event

    def _new_user(self, old_user_id: str) -> _NormalUser:
        home = self._join_household() if self.rng.random() < self.HOUSEHOLD_SHARE else None
        if home is None:
            home = _Household(self.ids.device(self.rng), self.ids.ip(self.rng))
            self.households.append(home)
            device_id = home.device_id
        else:
            # Family members share the address; half of them share the tablet too.
            shared = self.rng.random() < 0.5
            device_id = home.device_id if shared else self.ids.device(self.rng)
        contexts = [(device_id, home.ip)]
        if self.rng.random() < self.SECOND_DEVICE_SHARE:
            contexts.append((self.ids.device(self.rng), self.ids.ip(self.rng)))
        user = _NormalUser(self.ids.user(self.rng), contexts)
        self.users[old_user_id] = user
        return user

    def _join_household(self) -> _Household | None:
        if not self.households:
            return None
        home = self.rng.choice(self.households)
        if home.members >= 3:
            return None
        home.members += 1
        return home


def _normal_traffic(config: AttackConfig, ids: _Registry) -> list[LabelledEvent]:
    """The simulator's users, their events at random moments over the whole window."""
    rng = random.Random(f"{config.seed}/normal")
    simulator = EventSimulator(
        SimulatorConfig(
            users=config.normal_users,
            seed=config.seed,
            start_ms=config.start_ms,
            program=config.program,
            # People, not load: the busiest customer sends about 1.5% of the traffic.
            skew=0.5,
        )
    )
    # Uniform moments, sorted, keep each user's order (sign-up first) and give every
    # user Poisson-like pacing at their own rate.
    offsets = sorted(rng.randrange(config.duration_ms) for _ in range(config.normal_events))
    disguise = _Disguise(config, ids, rng)
    return [
        LabelledEvent(disguise.apply(event, config.start_ms + offset), None, None)
        for event, offset in zip(_without_answers(simulator, len(offsets)), offsets, strict=True)
    ]


def _without_answers(simulator: EventSimulator, count: int) -> Iterator[Document]:
    """The simulator's events, keeping only answers to each user's sign-up reward.

    An open-loop generator cannot know which rewards were granted, so its answers often
    redeem a decision that granted nothing, which is itself a fraud signal. The sign-up
    reward is the one nearly every new account gets, so answers to it stay: normal users
    still open, redeem and dismiss rewards. Attackers' answers are all kept.
    """
    signups: dict[str, str] = {}
    produced = 0
    while produced < count:
        event = simulator.next_event()
        if event["type"] == "signup":
            signups[event["user_id"]] = decision_id_for(
                simulator.config.program, event["user_id"], event["event_id"]
            )
        elif event["type"] in OUTCOME_TYPES and event["decision_id"] != signups.get(
            event["user_id"]
        ):
            continue
        produced += 1
        yield event


# --- attack building blocks -----------------------------------------------------------


@dataclass
class _World:
    """What every attack can see: the config, the id registry, every event so far."""

    config: AttackConfig
    ids: _Registry
    events: list[LabelledEvent]


@dataclass(frozen=True)
class _Account:
    user_id: str
    device_id: str
    ip: str
    channel: str
    country: str
    age: int


@dataclass
class _Plan:
    """One attack instance as events at offsets (ms) from its start, placed at the end.

    Placing picks a start in the window at random; an instance longer than the window is
    compressed to fit, which only makes it faster and so keeps its signature.
    """

    world: _World
    rng: random.Random
    steps: list[tuple[float, Document]] = field(default_factory=list)

    def account(
        self,
        *,
        device_id: str | None = None,
        ip: str | None = None,
        channel: str | None = None,
        country: str | None = None,
        age: int | None = None,
    ) -> _Account:
        rng, ids = self.rng, self.world.ids
        return _Account(
            user_id=ids.user(rng),
            device_id=device_id or ids.device(rng),
            ip=ip or ids.ip(rng),
            channel=channel or rng.choice(("mobile", "web")),
            country=country or rng.choice(EURO_COUNTRIES),
            age=age or rng.randint(18, 60),
        )

    def emit(self, offset: float, account: _Account, event_type: str, **fields: Any) -> Document:
        # Same key order as the simulator's documents, so the bytes give nothing away.
        channel = account.channel if self.rng.random() < 0.9 else self.rng.choice(CHANNELS)
        document: Document = {
            "event_id": self.world.ids.event(self.rng),
            "user_id": account.user_id,
            "type": event_type,
            "ts": 0,  # set by placed()
            "channel": channel,
            "device_id": fields.pop("device_id", account.device_id),
            "ip": fields.pop("ip", account.ip),
            **fields,
        }
        self.steps.append((offset, document))
        return document

    def signup(self, offset: float, account: _Account) -> Document:
        attributes = {"country": account.country, "age": account.age}
        return self.emit(offset, account, "signup", attributes=attributes)

    def purchase(self, offset: float, account: _Account, amount: float, **fields: Any) -> Document:
        return self.emit(
            offset, account, "purchase", amount=round(amount, 2), currency="EUR", **fields
        )

    def referral(self, offset: float, account: _Account, referred_user_id: str) -> Document:
        attributes = {"referred_user_id": referred_user_id}
        return self.emit(offset, account, "referral", attributes=attributes)

    def outcome(self, offset: float, account: _Account, event_type: str, decision: str) -> None:
        self.emit(offset, account, event_type, decision_id=decision)

    def decision_of(self, document: Document) -> str:
        return decision_id_for(self.world.config.program, document["user_id"], document["event_id"])

    def ordinary(self, offset: float, account: _Account) -> Document:
        """An event any customer sends: the cover attackers hide behind."""
        kind = self.rng.choices(("page_view", "session_start", "survey", "consent"), (6, 3, 1, 1))
        if kind[0] == "survey":
            return self.emit(
                offset, account, "survey", attributes={"score": self.rng.randint(0, 10)}
            )
        if kind[0] == "consent":
            attributes = {"marketing": self.rng.random() < 0.5}
            return self.emit(offset, account, "consent_updated", attributes=attributes)
        return self.emit(offset, account, kind[0])

    def cover(self, account: _Account, start: float, end: float, count: int) -> None:
        for _ in range(count):
            self.ordinary(self.rng.uniform(start, end), account)

    def earning(self, offset: float, account: _Account) -> Document:
        """An event that can earn a reward: a real-sized purchase, a visit, a survey, a referral."""
        kind = self.rng.choices(("purchase", "session_start", "survey", "referral"), (4, 3, 2, 2))
        if kind[0] == "purchase":
            return self.purchase(offset, account, self.rng.uniform(20, 150))
        if kind[0] == "referral":
            return self.referral(offset, account, self.world.ids.user(self.rng))
        if kind[0] == "survey":
            return self.emit(
                offset, account, "survey", attributes={"score": self.rng.randint(6, 10)}
            )
        return self.emit(offset, account, "session_start")

    def placed(self) -> list[Document]:
        config = self.world.config
        # Sorted here so that events that compress onto one ms keep the order they had.
        self.steps.sort(key=lambda step: step[0])
        span = max((offset for offset, _ in self.steps), default=0.0)
        room = config.duration_ms - 1
        scale = min(1.0, room / span) if span > 0 else 1.0
        start = config.start_ms + self.rng.randint(0, room - int(span * scale))
        for offset, document in self.steps:
            document["ts"] = start + int(offset * scale)
        return [document for _, document in self.steps]


def _jittered(rng: random.Random, pace: float) -> float:
    """A gap around ``pace``: scripts are fast but never metronomic."""
    return pace * rng.uniform(0.4, 1.6)


# --- the scenarios --------------------------------------------------------------------


def _account_farm(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """One device signs up 8-30 accounts within hours; each collects its welcome reward."""
    plan = _Plan(world, rng)
    device_id = world.ids.device(rng)
    subnet = world.ids.subnet(rng)
    pool_size = 1 if rng.random() < 0.6 else rng.randint(2, 5)
    addresses = [world.ids.ip(rng, subnet) for _ in range(pool_size)]
    channel, country = rng.choice(("mobile", "web")), rng.choice(EURO_COUNTRIES)
    buying_share = rng.uniform(0.0, 0.6)  # some farms add a tiny first order, most do not
    for start in _signup_moments(rng, rng.randint(8, 30), rng.uniform(1, 8) * HOUR):
        account = plan.account(
            device_id=device_id,
            ip=rng.choice(addresses),
            channel=channel,
            country=country,
            age=rng.randint(18, 35),
        )
        welcome = plan.decision_of(plan.signup(start, account))
        moment = start + rng.uniform(20 * SECOND, 10 * MINUTE)
        for _ in range(rng.randint(0, 2)):  # a look around, to pass as a new customer
            plan.emit(moment, account, rng.choice(("page_view", "session_start")))
            moment += rng.uniform(5 * SECOND, 3 * MINUTE)
        if rng.random() < 0.9:
            if rng.random() < 0.5:
                plan.outcome(moment, account, "reward_opened", welcome)
                moment += rng.uniform(2 * SECOND, 40 * SECOND)
            plan.outcome(moment, account, "reward_redeemed", welcome)
        if rng.random() < buying_share:
            plan.purchase(moment + rng.uniform(MINUTE, HOUR), account, rng.uniform(0.99, 9.99))
    return plan.placed()


def _signup_moments(rng: random.Random, count: int, span: float) -> list[float]:
    """Sign-up offsets: a script at a rough rhythm, or a person clicking at random."""
    if rng.random() < 0.5:
        step = span / count
        return [index * step + rng.uniform(0, 0.5 * step) for index in range(count)]
    return sorted(rng.uniform(0, span) for _ in range(count))


def _redemption_velocity(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """An account earns many rewards over hours, then redeems them all within minutes."""
    plan = _Plan(world, rng)
    account = plan.account()
    plan.signup(0, account)
    warm_up = rng.uniform(1, 12) * HOUR
    plan.cover(account, MINUTE, warm_up, rng.randint(3, 10))
    earning_span = rng.uniform(0.5, 6) * HOUR
    moments = sorted(rng.uniform(0, earning_span) for _ in range(rng.randint(10, 35)))
    earned = [plan.earning(warm_up + moment, account) for moment in moments]
    moment = warm_up + earning_span + rng.uniform(5 * MINUTE, 2 * HOUR)
    share = rng.uniform(0.7, 1.0)
    redeemed = rng.sample(earned, max(8, round(len(earned) * share)))
    pace, opens_first = rng.uniform(2, 20) * SECOND, rng.random() < 0.4
    for event in redeemed:
        decision = plan.decision_of(event)
        if opens_first:
            plan.outcome(moment, account, "reward_opened", decision)
            moment += rng.uniform(0.5 * SECOND, 3 * SECOND)
        plan.outcome(moment, account, "reward_redeemed", decision)
        moment += _jittered(rng, pace)
    return plan.placed()


def _referral_ring(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """3-8 accounts refer each other in a cycle, sometimes themselves, often on shared kit."""
    plan = _Plan(world, rng)
    ring = _ring_accounts(plan, rng.randint(3, 8))
    signups: list[float] = []
    referrals: list[tuple[float, _Account, Document]] = []
    moment = 0.0
    for position, account in enumerate(ring):
        plan.signup(moment, account)
        signups.append(moment)
        plan.cover(account, moment + MINUTE, moment + 2 * HOUR, rng.randint(0, 3))
        moment += rng.uniform(20 * MINUTE, 6 * HOUR)
        # Each referral comes shortly before the friend "joins"; the last closes the ring.
        friend = ring[(position + 1) % len(ring)]
        sent = moment - rng.uniform(2 * MINUTE, 15 * MINUTE)
        referrals.append((sent, account, plan.referral(sent, account, friend.user_id)))
    if instance % 2 == 1:  # every other ring also refers itself, to double the bonus
        for position in rng.sample(range(len(ring)), rng.randint(1, 2)):
            account, sent = ring[position], signups[position] + rng.uniform(10 * MINUTE, 3 * HOUR)
            referrals.append((sent, account, plan.referral(sent, account, account.user_id)))
    if rng.random() < 0.6:  # most rings cash in the referral bonuses they gave each other
        for sent, account, referral in referrals:
            later = sent + rng.uniform(5 * MINUTE, 2 * HOUR)
            plan.outcome(later, account, "reward_redeemed", plan.decision_of(referral))
    return plan.placed()


def _ring_accounts(plan: _Plan, size: int) -> list[_Account]:
    """The ring's accounts: one or two devices, or one or two addresses, or one /24."""
    rng, ids = plan.rng, plan.world.ids
    subnet = ids.subnet(rng)
    sharing = rng.choices(("device", "address", "subnet"), (45, 35, 20))[0]
    devices = [ids.device(rng) for _ in range(rng.randint(1, 2))] if sharing == "device" else []
    addresses = (
        [ids.ip(rng, subnet) for _ in range(rng.randint(1, 2))] if sharing != "subnet" else []
    )
    return [
        plan.account(
            device_id=rng.choice(devices) if devices else None,
            ip=rng.choice(addresses) if addresses else ids.ip(rng, subnet),
        )
        for _ in range(size)
    ]


def _forged_redemption(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """An account redeems decisions it was never given: made-up ids or other users' ids."""
    plan = _Plan(world, rng)
    account = plan.account()
    plan.signup(0, account)
    warm_up = rng.uniform(10 * MINUTE, 8 * HOUR)
    plan.cover(account, MINUTE, warm_up, rng.randint(2, 8))
    if rng.random() < 0.5:
        plan.purchase(rng.uniform(MINUTE, warm_up), account, rng.uniform(5, 60))
    # Rotated rather than drawn, so that any few instances show every kind of forgery.
    source = ("made_up", "stolen", "both")[instance % 3]
    victims = [
        event.document for event in world.events if event.document["type"] in REWARDING_TYPES
    ]
    # A script tries ids seconds apart; a patient forger spreads them over hours.
    pace = rng.uniform(1, 10) * SECOND if rng.random() < 0.5 else rng.uniform(2, 30) * MINUTE
    moment = warm_up
    for _ in range(rng.randint(3, 15)):
        decision = _forged_decision(plan, source, victims)
        if rng.random() < 0.25:
            plan.outcome(moment, account, "reward_opened", decision)
            moment += rng.uniform(SECOND, 20 * SECOND)
        plan.outcome(moment, account, "reward_redeemed", decision)
        moment += _jittered(rng, pace)
    return plan.placed()


def _forged_decision(plan: _Plan, source: str, victims: Sequence[Document]) -> str:
    steal = bool(victims) and (source == "stolen" or (source == "both" and plan.rng.random() < 0.5))
    if steal:
        return plan.decision_of(plan.rng.choice(victims))
    return f"d-{plan.rng.getrandbits(128):032x}"


def _replayed_events(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """An account re-sends its earlier events: exact copies, and purchases made bigger."""
    target = _replay_target(world, rng)
    if target is None:
        return []
    own = [
        event.document
        for event in world.events
        if event.document["user_id"] == target and event.scenario != "replayed_events"
    ]
    purchases = [document for document in own if document["type"] == "purchase"]
    others = [document for document in own if document["type"] != "purchase"]
    wanted = rng.randint(2, 8)
    chosen = rng.sample(purchases, min(wanted, len(purchases)))
    chosen += rng.sample(others, min(wanted - len(chosen), len(others)))
    replays: list[Document] = []
    for original in sorted(chosen, key=lambda document: int(document["ts"])):
        replays.extend(_replays_of(world, rng, original))
    return replays


def _replay_target(world: _World, rng: random.Random) -> str | None:
    """Another attacker's account half the time, else a normal buyer gone bad."""
    buyers: dict[bool, dict[str, None]] = {True: {}, False: {}}  # dicts: ordered, unlike sets
    for event in world.events:
        if event.document["type"] == "purchase" and event.scenario != "replayed_events":
            buyers[event.scenario is not None][event.document["user_id"]] = None
    attackers, normal = list(buyers[True]), list(buyers[False])
    pool = attackers if attackers and (rng.random() < 0.5 or not normal) else normal
    return rng.choice(pool) if pool else None


def _replays_of(world: _World, rng: random.Random, original: Document) -> list[Document]:
    if rng.random() < 0.4:  # a retried or duplicated batch: the very same bytes
        return [copy.deepcopy(original) for _ in range(rng.randint(1, 3))]
    replay = copy.deepcopy(original)
    last_ms = world.config.start_ms + world.config.duration_ms - 1
    if rng.random() < 0.75 or original["type"] != "purchase":
        # Later, to get past the engine's per-user window of recent event ids.
        replay["ts"] = min(last_ms, int(original["ts"]) + int(rng.uniform(MINUTE, 12 * HOUR)))
    if original["type"] == "purchase":
        replay["amount"] = round(original["amount"] * rng.uniform(1.5, 20), 2)
    else:
        replay["channel"] = rng.choice([c for c in CHANNELS if c != original.get("channel")])
    return [replay]


def _bot_burst(world: _World, rng: random.Random, instance: int) -> list[Document]:
    """Bursts of dozens of tiny purchases seconds apart, sometimes with a big one or two."""
    plan = _Plan(world, rng)
    account = plan.account()
    plan.signup(0, account)
    moment = rng.uniform(5 * MINUTE, 6 * HOUR)
    plan.cover(account, MINUTE, moment, rng.randint(0, 8))
    rotating = rng.random() < 0.3  # some bots hop between addresses of one provider
    subnet = world.ids.subnet(rng)
    addresses = [world.ids.ip(rng, subnet) for _ in range(rng.randint(3, 6))] if rotating else []
    for _ in range(rng.randint(1, 3)):
        tiny = rng.randint(20, 60)
        big = rng.randint(1, 2) if rng.random() < 0.5 else 0  # to cross spend thresholds
        amounts = [rng.uniform(0.5, 3.0) for _ in range(tiny)] + [
            rng.uniform(20, 80) for _ in range(big)
        ]
        rng.shuffle(amounts)
        pace = rng.uniform(2, 12) * SECOND
        for amount in amounts:
            where = {"ip": rng.choice(addresses)} if addresses else {}
            plan.purchase(moment, account, amount, **where)
            moment += _jittered(rng, pace)
        moment += rng.uniform(20 * MINUTE, 6 * HOUR)
    return plan.placed()


# A builder gets the world so far, its instance's own random stream and the instance's
# index (from 0), on which the variants that tests rely on rotate; it returns documents.
Builder = Callable[[_World, random.Random, int], list[Document]]
BUILDERS: Final[dict[str, Builder]] = {
    "account_farm": _account_farm,
    "redemption_velocity": _redemption_velocity,
    "referral_ring": _referral_ring,
    "forged_redemption": _forged_redemption,
    "replayed_events": _replayed_events,
    "bot_burst": _bot_burst,
}
