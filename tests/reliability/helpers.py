"""What every fault test does: build a stream, produce it at a pace, read back and audit.

Every fault test (tests/reliability and the three-node cluster test) runs the *whole
traffic* of :class:`WholeTraffic`: a paced base stream of ordinary users, personalization
consent changes and attack scenarios, plus a closed loop that reads the worker's
committed decisions while the faults happen and answers a seeded share of them
(redeemed, dismissed, opened, answered twice, too late, or silence) and labels held
rewards (cleared, confirmed, labelled twice, or never). Everything it sends is recorded
for the audit.

:func:`assert_whole_traffic` checks, against what Kafka holds after the last worker
stopped: one decision per event, published once; every user's state (events, repeats,
grants, their cost, the open offers and hold) exactly what the committed decisions
say; ledgers and stock per partition equal to the granted decisions; no hold resolved
twice, no reward granted twice; and the models' learning steps, in every decision's
``model_version`` and in every checkpoint, against the answers the committed decisions
were learned from (see :func:`learning_oracle` and :func:`check_learning`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.assembly import load_program_setting
from app.contract.records import OUTCOME_TYPES
from app.contract.validate import Rejection, parse_event
from app.decisioning.ledger import Ledger, ledger_key
from app.features.state import UserState
from app.kafkaio import event_routes, seek_to_first
from app.models.checkpoint import checkpoint_key
from app.programs import Program
from app.settings import Settings
from harness.simulation.attacks import AttackConfig, generate
from harness.simulation.events import START_MS
from harness.workerproc import WorkerProcess
from topologies import STAGES, TABLE_LEDGER, TABLE_USER_STATE, changelog_topic

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
CONTROL_TYPES = frozenset({"fraud_label", "consent_updated"})

# ======================================================================================
# Reading Kafka back
# ======================================================================================


async def latest_state(settings: Settings, table: str) -> dict[bytes, bytes]:
    """The newest committed value per key of ``table``'s changelog."""
    latest: dict[bytes, bytes] = {}
    topic = changelog_topic(settings.app_id, table)
    for record in await read_to_end(settings.bootstrap_servers, topic):
        if record.key is None:
            continue
        if record.value:
            latest[record.key] = record.value
        else:
            latest.pop(record.key, None)
    return latest


# ======================================================================================
# Reading a topic exactly to its end
# ======================================================================================


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    timestamp: int  # the producer's clock when it sent the record (CreateTime), epoch ms
    key: bytes | None
    value: bytes | None


async def read_to_end(
    bootstrap_servers: str, topic: str, *, isolation_level: str = "read_committed"
) -> list[Record]:
    """Every committed record of ``topic`` (read_committed; or, read_uncommitted, every
    record written, aborted ones too), from its first offset to its end as of now, in
    partition and offset order. No idle wait: the end is known."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        ids = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + 30
        while not ids and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()  # a topic just created
            ids = consumer.partitions_for_topic(topic)
        partitions = [TopicPartition(topic, p) for p in sorted(ids or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await seek_to_first(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Record] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                records += [
                    Record(m.partition, m.offset, m.timestamp, m.key, m.value) for m in messages
                ]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        await consumer.stop()


# ======================================================================================
# The whole traffic
# ======================================================================================


def with_own_control_topics(settings: Settings) -> Settings:
    """``settings`` with fraud-labels and consent topics of this test alone (the shared
    fixture suffixes the other topics; a label left on a shared topic by an earlier test
    would be decided by this test's worker)."""
    suffix = settings.topic_events.rsplit("-", 1)[-1]
    return dataclasses.replace(
        settings,
        topic_fraud_labels=f"fraud-labels-{suffix}",
        topic_consent=f"consent-{suffix}",
    )


def whole_traffic_base(
    settings: Settings, *, events: int, users: int, seed: int, days: float = 10.0
) -> list[bytes]:
    """The base stream, in event-time order (``days`` of it): ordinary users (sign-ups,
    visits, purchases, their own answers to sign-up rewards, marketing consent), users
    who withdraw personalization consent and some who give it back, and one instance of
    each attack of harness/simulation/attacks.py (account farm, redemption velocity,
    referral ring, forged redemptions, replayed events, bot burst).

    Replays of an event id are kept only within 8 of the user's events of the original:
    the engine recognises a repeat among a user's last 32 event ids, and the closed
    loop's answers and labels interleave; a replay beyond the window is a new event by
    design, not a fault, and would blur the audit's "one decision per event".
    """
    start_ms = START_MS
    config = AttackConfig(
        seed=seed,
        start_ms=start_ms,
        duration_ms=int(days * DAY_MS),
        normal_users=users,
        normal_events=max(0, events - 250),  # one instance of each attack: about 250 events
        program=settings.program,
        intensity=0.34,
    )
    documents = [labelled.document for labelled in generate(config)]
    documents = _with_personalization_changes(documents, random.Random(f"{seed}/consent"))
    documents = _replays_within_window(documents, within=8)
    lines = [orjson.dumps(document) for document in documents]
    for line in lines:
        event = parse_event(line, max_bytes=settings.max_event_bytes)
        assert not isinstance(event, Rejection), (event, line)
    return lines


def _with_personalization_changes(
    documents: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    """One user in eight with three events or more withdraws personalization consent
    between two of their events; half of them give it back later."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for document in documents:
        by_user[document["user_id"]].append(document)
    added: list[dict[str, Any]] = []
    for user_id, own in sorted(by_user.items()):
        if len(own) < 3 or rng.random() >= 0.125:
            continue
        cut = rng.randrange(1, len(own) - 1)
        moments = [int(own[cut]["ts"]) + 1]
        if rng.random() < 0.5:
            moments.append(int(own[rng.randrange(cut + 1, len(own))]["ts"]) + 1)
        for n, ts in enumerate(moments):
            added.append(
                {
                    "event_id": f"consent-{user_id}-{n}",
                    "user_id": user_id,
                    "type": "consent_updated",
                    "ts": ts,
                    "channel": own[cut].get("channel", "web"),
                    "attributes": {"personalization": n % 2 == 1},
                }
            )
    return sorted(documents + added, key=lambda document: int(document["ts"]))


def _replays_within_window(documents: list[dict[str, Any]], *, within: int) -> list[dict[str, Any]]:
    position: dict[str, int] = {}  # event id -> index among its user's events
    count: Counter[str] = Counter()
    kept = []
    for document in documents:
        user, event_id = document["user_id"], document["event_id"]
        first = position.get(event_id)
        if first is not None and count[user] - first > within:
            continue
        if first is None:
            position[event_id] = count[user]
        count[user] += 1
        kept.append(document)
    return kept


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the traffic sent: its topic and document (as sent)."""

    topic: str
    document: dict[str, Any]


class WholeTraffic:
    """The base stream at a pace, and a closed loop that answers committed decisions.

    The loop reads ``decisions`` with read_committed from the start, as the contract asks
    of every consumer, and answers each decision once (by decision id), seeded per
    decision: for a granted reward, redeemed (30%), dismissed (15%), opened only (10%),
    opened then redeemed (10%), redeemed twice (7%), redeemed after the response window
    (5%) or never (silence, 23%); for a held one, a label cleared (35%), confirmed (25%),
    cleared twice (10%) or none (30%, the hold ends when the pending period is over or
    when ``hold_for`` passes). Answers and labels come in event time after the decision,
    while the base stream runs: they reach the worker mixed with the users' own events.
    """

    def __init__(
        self,
        settings: Settings,
        base: list[bytes],
        *,
        per_second: float,
        seed: int,
    ) -> None:
        self.settings = settings
        self.base = base
        self.per_second = per_second
        self.seed = seed
        self.routes = event_routes(settings)
        self.sent: list[Sent] = []
        self.sent_ids: set[str] = set()
        self.decided: set[str] = set()
        self.decisions: dict[str, dict[str, Any]] = {}  # by event id, as the loop read them
        self.answered: set[str] = set()
        self.answering = True
        self.deliveries: list[asyncio.Future[Any]] = []
        self.counts: Counter[str] = Counter()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.base_task: asyncio.Task[None] | None = None

    async def start(self) -> WholeTraffic:
        """Start the loop and the base stream (the worker must be ready: it made the topics)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,  # a retry across a broker restart must not send twice
            linger_ms=5,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        partitions = [
            TopicPartition(self.settings.topic_decisions, p)
            for p in range(self.settings.partitions)
        ]
        self._consumer.assign(partitions)
        await seek_to_first(self._consumer, partitions)
        self._tasks.append(asyncio.create_task(self._loop()))
        self.base_task = asyncio.create_task(self._paced())
        return self

    async def send(self, documents: Iterable[dict[str, Any]]) -> None:
        """Record, then send ``documents`` (each to its type's topic, keyed by user)."""
        documents = list(documents)
        self._record(documents)
        await self._send(documents)

    def _record(self, documents: list[dict[str, Any]]) -> None:
        for document in documents:
            topic = self.routes.get(document["type"], self.settings.topic_events)
            self.sent.append(Sent(topic, document))
            self.sent_ids.add(document["event_id"])

    async def _send(self, documents: list[dict[str, Any]]) -> None:
        assert self._producer is not None
        for document in documents:
            topic = self.routes.get(document["type"], self.settings.topic_events)
            delivery = await self._producer.send(
                topic, orjson.dumps(document), key=document["user_id"].encode()
            )
            self.deliveries.append(delivery)

    async def _paced(self) -> None:
        chunk = max(1, int(self.per_second / 10))
        for start in range(0, len(self.base), chunk):
            await self.send(orjson.loads(line) for line in self.base[start : start + chunk])
            await asyncio.sleep(chunk / self.per_second)

    async def _loop(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            replies: list[dict[str, Any]] = []
            for messages in batches.values():
                for message in messages:
                    decision = orjson.loads(message.value)
                    self.decided.add(decision["event_id"])
                    self.decisions.setdefault(decision["event_id"], decision)
                    if self.answering and decision["decision_id"] not in self.answered:
                        self.answered.add(decision["decision_id"])
                        replies += self.replies(decision)
            # Recorded before the first await: "everything sent is decided" is never
            # seen true while a reply is on its way.
            self._record(replies)
            await self._send(replies)

    def replies(self, decision: dict[str, Any]) -> list[dict[str, Any]]:
        """What the user (or an analyst) answers to ``decision``: seeded by its id."""
        rng = random.Random(f"{self.seed}/{decision['decision_id']}")
        user, ts, decision_id = decision["user_id"], int(decision["ts"]), decision["decision_id"]
        stem = f"reply-{self.seed}-{decision_id[2:18]}"
        roll = rng.random()

        def answer(n: int, kind: str, delay_ms: int) -> dict[str, Any]:
            document = {
                "event_id": f"{stem}-{n}",
                "user_id": user,
                "type": kind,
                "ts": ts + delay_ms,
                "decision_id": decision_id,
            }
            if decision.get("channel"):
                document["channel"] = decision["channel"]
            return document

        def labelled(n: int, verdict: str, delay_ms: int) -> dict[str, Any]:
            return {
                "event_id": f"{stem}-{n}",
                "user_id": user,
                "type": "fraud_label",
                "ts": ts + delay_ms,
                "attributes": {"label": verdict, "analyst": "reliability-test"},
            }

        soon = rng.randint(10 * 60_000, 2 * DAY_MS)
        if decision["status"] == "granted" and decision.get("action"):
            plan: list[dict[str, Any]]
            if roll < 0.30:
                plan, what = [answer(0, "reward_redeemed", soon)], "redeemed"
            elif roll < 0.45:
                plan, what = [answer(0, "reward_dismissed", soon)], "dismissed"
            elif roll < 0.55:
                plan, what = [answer(0, "reward_opened", soon)], "opened"
            elif roll < 0.65:
                plan = [
                    answer(0, "reward_opened", soon),
                    answer(1, "reward_redeemed", soon + rng.randint(60_000, HOUR_MS)),
                ]
                what = "opened+redeemed"
            elif roll < 0.72:
                plan = [
                    answer(0, "reward_redeemed", soon),
                    answer(1, "reward_redeemed", soon + rng.randint(60_000, DAY_MS)),
                ]
                what = "redeemed twice"
            elif roll < 0.77:
                plan, what = [answer(0, "reward_redeemed", rng.randint(3, 5) * DAY_MS)], "late"
            else:
                plan, what = [], "silence"
        elif decision["status"] == "held":
            later = rng.randint(30 * 60_000, 3 * DAY_MS)
            if roll < 0.35:
                plan, what = [labelled(0, "cleared", later)], "cleared"
            elif roll < 0.60:
                plan, what = [labelled(0, "confirmed", later)], "confirmed"
            elif roll < 0.70:
                plan = [
                    labelled(0, "cleared", later),
                    labelled(1, "cleared", later + rng.randint(60_000, DAY_MS)),
                ]
                what = "cleared twice"
            else:
                plan, what = [], "unlabelled"
        else:
            return []
        self.counts[what] += 1
        return plan

    @property
    def undecided(self) -> set[str]:
        return self.sent_ids - self.decided

    async def settle(self, timeout_s: float = 120.0) -> None:
        """Wait until the base stream is sent and every message sent (base, answers,
        labels, and the answers to those) has its committed decision."""
        assert self.base_task is not None
        await self.base_task
        assert self._producer is not None
        await self._producer.flush()
        deadline = time.monotonic() + timeout_s
        while self.undecided and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        failed = [d.exception() for d in self.deliveries if d.done() and d.exception()]
        assert not failed, f"{len(failed)} messages were not delivered: {failed[:3]}"
        missing = self.undecided
        assert not missing, f"{len(missing)} messages never decided, e.g. {sorted(missing)[:5]}"

    async def close(self) -> None:
        for task in self._tasks + ([self.base_task] if self.base_task else []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    async def __aenter__(self) -> WholeTraffic:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ======================================================================================
# Worker lives
# ======================================================================================

ASSIGNED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ tasks\.assigned count=\d+ tasks=([\d,]+)"
)
RESTORED = re.compile(r"checkpoint\.restored updates=(\d+)")
REVERTED = re.compile(
    r"transaction\.reverted task=(\d+) input=(\S+)\[(\d+)\] committed=(\w+) acknowledged=(\d+)"
)


@dataclass(frozen=True)
class Revert:
    """Input records a worker handled again without their effects (streams/runtime.py,
    ``_note_reverted``): offsets ``committed`` to ``acknowledged`` of ``topic[partition]``,
    whose transaction Kafka acknowledged and then aborted."""

    task: int
    topic: str
    partition: int
    committed: int
    acknowledged: int


@dataclass
class Life:
    """One worker process from its start to its kill or stop."""

    name: str
    worker: WorkerProcess
    started_ms: int
    ended_ms: int | None = None
    ending: str | None = None  # "killed" or "stopped"

    @property
    def log(self) -> str:
        return self.worker.log_path.read_text(errors="replace")

    @property
    def restored(self) -> int:
        """The learning steps it started from (its checkpoint at start-up; none: 0)."""
        found = RESTORED.findall(self.log)
        assert len(found) <= 1, found
        return int(found[0]) if found else 0

    def reverts(self) -> list[Revert]:
        return [
            Revert(int(task), topic, int(p), 0 if low == "None" else int(low), int(high))
            for task, topic, p, low, high in REVERTED.findall(self.log)
        ]

    def assignments(self) -> list[tuple[int, set[int]]]:
        """(epoch ms of the log line, partitions) of each assignment that gave it tasks.

        The line is written after the tasks' producers started (fencing every earlier
        writer of those partitions) and their state was restored, before anything of
        theirs is handled: every record the earlier owner committed is older, every
        record this life writes for them is newer."""
        found = []
        for line in self.log.splitlines():
            match = ASSIGNED.match(line)
            if match:
                at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((int(at * 1000), {int(p) for p in match.group(2).split(",")}))
        return found


class Lives:
    """Starts, kills and stops workers, and remembers when (for the audit)."""

    def __init__(self, start_worker: Callable[[Settings, Path], WorkerProcess]) -> None:
        self.start_worker = start_worker
        self.lives: list[Life] = []

    def start(self, settings: Settings, log: Path) -> WorkerProcess:
        started_ms = int(time.time() * 1000)
        worker = self.start_worker(settings, log)
        self.lives.append(Life(log.stem, worker, started_ms))
        return worker

    def _life(self, worker: WorkerProcess) -> Life:
        return next(life for life in self.lives if life.worker is worker)

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()
        life = self._life(worker)
        life.ended_ms, life.ending = int(time.time() * 1000), "killed"

    def stop(self, worker: WorkerProcess) -> None:
        code = worker.stop()
        life = self._life(worker)
        life.ended_ms, life.ending = int(time.time() * 1000), "stopped"
        assert code == 0, f"{life.name} did not stop cleanly (exit {code}):\n{worker.log_tail()}"

    def owners(self) -> dict[int, list[tuple[int, Life]]]:
        """Per partition, (since when, life) of each life that was given its task."""
        owners: dict[int, list[tuple[int, Life]]] = defaultdict(list)
        for life in self.lives:
            for at, partitions in life.assignments():
                for partition in partitions:
                    owners[partition].append((at, life))
        for found in owners.values():
            found.sort(key=lambda item: item[0])
        return owners


async def killed_under_whole_traffic(
    settings: Settings,
    base: list[bytes],
    lives: Lives,
    logs: Path,
    *,
    kills: int,
    seed: int,
    pauses_seed: int,
) -> WholeTraffic:
    """Run the whole traffic (30 messages a second) while the worker is SIGKILLed
    ``kills`` times, 1 to 6 s apart, and started again each time; return the traffic once
    every message sent has its committed decision and the last life stopped cleanly."""
    rng = random.Random(pauses_seed)
    worker = lives.start(settings, logs / "life-0.log")
    await asyncio.to_thread(worker.wait_ready, 120)
    async with WholeTraffic(settings, base, per_second=30, seed=seed) as traffic:
        for life in range(1, kills + 1):
            await asyncio.sleep(rng.uniform(1.0, 6.0))
            lives.kill(worker)
            worker = lives.start(settings, logs / f"life-{life}.log")
            await asyncio.to_thread(worker.wait_ready, 120)
        assert traffic.base_task is not None
        assert not traffic.base_task.done(), "the stream ended before the last kill; slow it"
        await traffic.settle()
    lives.stop(worker)
    return traffic


# ======================================================================================
# The learning oracle
# ======================================================================================


@dataclass
class _Offer:
    decision_id: str
    ts: int
    learn: bool


@dataclass
class _Hold:
    decision_id: str
    ts: int
    learn: bool
    pending: bool


@dataclass
class _User:
    personalization: bool | None = None
    pending: list[_Offer] = field(default_factory=list)
    hold: _Hold | None = None


MAX_PENDING_OFFERS = 8  # app.features.state.MAX_PENDING_OFFERS
HOLD_CODES = ("hold.released:", "hold.cancelled:", "hold.not_released:", "hold.expired:")


def learning_oracle(
    program: Program,
    decisions: list[tuple[int, dict[str, Any]]],
    events: dict[str, dict[str, Any]],
) -> tuple[dict[str, int], dict[str, _User]]:
    """How many learning steps each committed decision's event made the models take, from
    the committed decisions (in each user's order: their partition's offsets) and the
    events they answer. Returns (steps per decision id, each user's open offers and hold).

    It follows app/decisioning/engine.py, ``Engine.process``, step by step:

    0. ``decisions`` come as (partition, decision) in each partition's order; an event
       newer than any its partition decided before moves the partition's clock, and
       every open offer of any user of the partition whose response window that clock
       has passed closes as "not redeemed" (a timer, app.timers), one step if it was
       made with personalization consent and its user still consents (``_learn``);
    1. the event's consent change counts next (``observe``);
    2. every open offer of the user whose response window has passed by the event's
       ``ts`` closes the same way (``expire_offers``); a hold older than
       ``fraud.hold_for`` ends (``hold.expired:<id>`` in the reasons);
    3. a ``fraud_label`` ends the hold; ``hold.released:<id>`` opens an offer (learning
       as the hold was made) under the label's decision id;
    4. an outcome: ``outcome.redeemed`` and ``outcome.dismissed`` close the open offer
       the event names, one step (same consent rule); ``outcome.opened`` changes nothing
       with ``learning.opened: ignore``; ``outcome.unknown_decision``: no such offer;
    5. ``policy.pending_over``: the pending hold is released (``hold.released``, an
       offer) or not (``hold.not_released``);
    6. otherwise a ``granted`` decision opens an offer (the newest eight stay open), a
       ``held`` one opens the hold.

    Every step is checked against the decision (an outcome the decision says was known
    must be open here, and one it says was unknown must not; a hold code must name the
    open hold), and the caller checks the offers and holds left open against the user
    state table: the oracle and the engine agree on every user's offers, or the audit
    says where not.
    """
    window = program.learning.response_window.seconds * 1000
    hold_for = program.fraud.hold_for.seconds * 1000
    default_consent = program.consent_defaults.personalization
    ignore_opened = program.learning.opened == "ignore"
    users: dict[str, _User] = defaultdict(_User)
    steps: dict[str, int] = {}
    clocks: dict[int, int] = {}
    on_partition: dict[int, set[str]] = defaultdict(set)
    for partition, decision in decisions:
        event = events[decision["event_id"]]
        user = users[decision["user_id"]]
        on_partition[partition].add(decision["user_id"])
        reasons: list[str] = list(decision["reasons"])
        ts, decision_id, status = int(decision["ts"]), decision["decision_id"], decision["status"]
        where = f"decision {decision_id} ({event['type']}, reasons {reasons[:4]}...)"
        learned = 0
        if partition not in clocks or ts > clocks[partition]:
            clocks[partition] = ts
            for other in (users[u] for u in on_partition[partition]):
                agrees = default_consent if other.personalization is None else other.personalization
                for silent in [o for o in other.pending if o.ts + window <= ts]:
                    learned += silent.learn and agrees
                    other.pending.remove(silent)
        if event["type"] == "consent_updated" and "personalization" in event["attributes"]:
            user.personalization = bool(event["attributes"]["personalization"])
        consents = default_consent if user.personalization is None else user.personalization
        for silent in [o for o in user.pending if o.ts + window <= ts]:
            learned += silent.learn and consents
            user.pending.remove(silent)
        codes = {c: [r.split(":", 1)[1] for r in reasons if r.startswith(c)] for c in HOLD_CODES}
        if user.hold is not None and ts >= user.hold.ts + hold_for:
            assert codes["hold.expired:"] == [user.hold.decision_id], where
            user.hold = None
        else:
            assert not codes["hold.expired:"], where
        hold = user.hold
        ended = codes["hold.released:"] + codes["hold.cancelled:"] + codes["hold.not_released:"]
        if hold is not None and ended:
            assert ended == [hold.decision_id], f"{where}: the open hold is {hold.decision_id}"
        else:
            assert not ended, f"{where}: ends a hold, but none is open"

        if event["type"] == "fraud_label":
            user.hold = None
            if codes["hold.released:"]:
                assert hold is not None, where
                assert status == "granted", where
                _grant(user, _Offer(decision_id, ts, hold.learn))
        elif event["type"] in OUTCOME_TYPES:
            named = event["decision_id"]
            offer = next((o for o in user.pending if o.decision_id == named), None)
            outcome = reasons[0]
            if outcome == "outcome.unknown_decision":
                assert offer is None, f"{where}: the offer is open, yet unknown to the engine"
            elif outcome == "outcome.opened" and ignore_opened:
                assert offer is not None, f"{where}: no such open offer"
            else:
                assert outcome in ("outcome.redeemed", "outcome.dismissed", "outcome.opened"), where
                assert offer is not None, f"{where}: learned from an offer already closed"
                learned += offer.learn and consents
                user.pending.remove(offer)
        elif "policy.pending_over" in reasons:
            assert hold is not None, where
            assert hold.pending, where
            user.hold = None
            if codes["hold.released:"]:
                assert status == "granted", where
                _grant(user, _Offer(decision_id, ts, hold.learn))
        elif status == "granted":
            assert decision.get("action"), where
            _grant(user, _Offer(decision_id, ts, consents))
        elif status == "held":
            assert hold is None, f"{where}: a second hold"
            pending = "fraud.new_account_pending" in reasons
            user.hold = _Hold(decision_id, ts, consents, pending)
        steps[decision_id] = learned
    return steps, users


def _grant(user: _User, offer: _Offer) -> None:
    """A reward granted (or released): an open offer; the newest eight stay open."""
    user.pending = [*user.pending, offer][-MAX_PENDING_OFFERS:]


def _transaction_context(chain: list[Decided], start: int, d: Decided) -> str:
    """Where ``d`` sits in its partition, for a learning problem's message: the decision
    before its transaction and the transaction's decisions up to ``d`` as
    offset/timestamp/steps (two transactions with no marker between them read as one;
    a wall clock that went back shows as a timestamp lower than the one before)."""
    shown = chain[max(start - 1, 0) : chain.index(d) + 1][-12:]
    return "around it (offset/sent ms/steps): " + ", ".join(
        f"{x.offset}/{x.timestamp}/{x.steps}" for x in shown
    )


def model_steps(decision: dict[str, Any]) -> int:
    """The learning steps the models had taken when they made ``decision``
    (``<program>@<sha>/lr+<steps>``)."""
    version = str(decision["model_version"])
    assert "/lr+" in version, version
    return int(version.rsplit("+", 1)[1])


# ======================================================================================
# The audit
# ======================================================================================


@dataclass
class Decided:
    """A committed decision and where Kafka holds it."""

    document: dict[str, Any]
    partition: int
    offset: int
    timestamp: int  # when the worker sent it
    transaction: int = 0  # index of its transaction among its partition's, in offset order
    life: Life | None = None
    steps: int = 0  # learning steps its event caused (the oracle)
    # When its steps were taken, if before it was sent: its event was first decided in a
    # transaction Kafka acknowledged and then aborted (see _credit_reverted).
    learned_early: int | None = None
    run: int = 0  # index of its run of decisions sent together (see check_learning)

    @property
    def learned_at(self) -> int:
        return self.timestamp if self.learned_early is None else self.learned_early


@dataclass
class Report:
    """What the audit found, for the test to print or check further."""

    decisions: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    releases: int = 0
    cancels: int = 0
    expiries: int = 0
    learned: int = 0  # learning steps the committed decisions acknowledge, all lives
    checkpoint: int = 0  # learning steps in the newest checkpoint
    per_life: dict[str, tuple[int, int, str | None]] = field(default_factory=dict)
    # life -> (steps restored at start, steps its committed decisions caused, ending)
    lost_at_clean_stop: dict[str, int] = field(default_factory=dict)
    replies: Counter[str] = field(default_factory=Counter)
    # The longest time between the first and the last decision of one transaction as the
    # audit reads them (a commit sends its records at once: far more than a commit's
    # time would mean two transactions with no marker between them).
    widest_transaction_ms: int = 0

    def summary(self) -> str:
        return (
            f"{self.decisions} decisions {dict(self.statuses)}; holds released "
            f"{self.releases}, cancelled {self.cancels}, expired {self.expiries}; "
            f"learned {self.learned}, checkpoint {self.checkpoint}; lives {self.per_life}; "
            f"lost at a clean stop {self.lost_at_clean_stop}; replies {dict(self.replies)}; "
            f"widest transaction {self.widest_transaction_ms} ms"
        )


async def assert_whole_traffic(
    settings: Settings, traffic: WholeTraffic, lives: Lives, *, exact_final: bool = True
) -> Report:
    """The promise of docs/reliability.md for the whole traffic, against what Kafka holds.

    Call it once every worker has been killed or stopped (the last one stopped cleanly,
    after :meth:`WholeTraffic.settle`, so that nothing is in flight and its checkpoint
    was written on the way out). Checks:

    - every message sent was valid and routed: no dead letter;
    - one decision per event id sent, each published once (read committed); no fraud
      alert published twice;
    - every user's state counted each of the user's event ids once (``events``), every
      extra copy once (``repeats``), and exactly the user's granted decisions
      (``rewards_granted``, ``reward_cost``); its open offers (ids, learning flag), its
      hold and its consent are those the oracle derived from the committed decisions;
    - each partition's ledger spent exactly the cost of the granted decisions of the
      partition (within 1e-6, far under a cent) and used the stock of each reward once
      per granted decision of it;
    - no reward granted twice: each held decision is released, cancelled, refused or
      expired at most once, by a later decision of the same user; a release grants the
      held reward at the held cost;
    - the models' learning: see :func:`check_learning`.
    """
    program = load_program_setting(settings.program)
    report = Report(replies=traffic.counts)
    dead = await read_to_end(settings.bootstrap_servers, settings.topic_dead_letter)
    assert not dead, Counter(orjson.loads(r.value or b"{}").get("reason") for r in dead)

    # ------------------------------------------------ one decision per event, once
    records = await read_to_end(settings.bootstrap_servers, settings.topic_decisions)
    decided: list[Decided] = []
    copies: Counter[str] = Counter()
    for record in records:
        document = orjson.loads(record.value or b"")
        copies[document["decision_id"]] += 1
        decided.append(Decided(document, record.partition, record.offset, record.timestamp))
    twice = {k: n for k, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} decisions published more than once: {list(twice)[:5]}"
    first: dict[str, dict[str, Any]] = {}
    sent_copies: Counter[str] = Counter()
    for sent in traffic.sent:
        first.setdefault(sent.document["event_id"], sent.document)
        sent_copies[sent.document["event_id"]] += 1
    by_event = {d.document["event_id"]: d for d in decided}
    assert len(by_event) == len(decided), "two decisions for one event id"
    missing, extra = first.keys() - by_event.keys(), by_event.keys() - first.keys()
    assert not missing, f"{len(missing)} events never decided, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} decisions for events never sent: {sorted(extra)[:5]}"
    alerts = await read_to_end(settings.bootstrap_servers, settings.topic_fraud_alerts)
    alert_copies = Counter(orjson.loads(r.value or b"")["alert_id"] for r in alerts)
    assert not [a for a, n in alert_copies.items() if n > 1], "fraud alerts published twice"
    report.decisions = len(decided)
    report.statuses = Counter(d.document["status"] for d in decided)

    # ------------------------------------------------ no hold ended twice, no double grant
    by_id = {d.document["decision_id"]: d.document for d in decided}
    ended: Counter[str] = Counter()
    for d in decided:
        for reason in d.document["reasons"]:
            code, _, held_id = reason.partition(":")
            if f"{code}:" not in HOLD_CODES:
                continue
            ended[held_id] += 1
            held = by_id.get(held_id)
            assert held is not None, reason
            assert held["status"] == "held", (reason, held)
            assert held["user_id"] == d.document["user_id"], reason
            if code == "hold.released":
                assert d.document["status"] == "granted", d.document
                assert (d.document["action"], d.document["cost"]) == (
                    held["action"],
                    held["cost"],
                ), (d.document, held)
                report.releases += 1
            elif code == "hold.cancelled":
                report.cancels += 1
            elif code == "hold.expired":
                report.expiries += 1
    twice_ended = {k: n for k, n in ended.items() if n > 1}
    assert not twice_ended, f"holds released or cancelled more than once: {twice_ended}"

    # ------------------------------------------------ the oracle, in each user's order
    decided.sort(key=lambda d: (d.partition, d.offset))
    steps, oracle = learning_oracle(program, [(d.partition, d.document) for d in decided], first)
    for d in decided:
        d.steps = steps[d.document["decision_id"]]
    report.learned = sum(steps.values())

    # ------------------------------------------------ user state and ledgers
    users = {
        key.decode(): UserState.from_bytes(value)
        for key, value in (await latest_state(settings, TABLE_USER_STATE)).items()
    }
    own: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decided:
        own[d.document["user_id"]].append(d.document)
    distinct = Counter(document["user_id"] for document in first.values())
    repeated = Counter(first[e]["user_id"] for e, n in sent_copies.items() for _ in range(n - 1))
    wrong: dict[str, Any] = {}
    for user_id, count in distinct.items():
        state = users.get(user_id, UserState())
        granted = [x for x in own[user_id] if x["status"] == "granted"]
        expected = _User() if user_id not in oracle else oracle[user_id]
        found = {
            "events": (state.events, count),
            "repeats": (state.repeats, repeated[user_id]),
            "rewards_granted": (state.rewards_granted, len(granted)),
            "pending": (
                [(p.decision_id, p.learn) for p in state.pending],
                [(o.decision_id, o.learn) for o in expected.pending],
            ),
            "hold": (
                state.risk.hold.decision_id if state.risk.hold else None,
                expected.hold.decision_id if expected.hold else None,
            ),
            "personalization": (state.personalization, expected.personalization),
        }
        bad = {name: pair for name, pair in found.items() if pair[0] != pair[1]}
        if abs(state.reward_cost - sum(float(x["cost"]) for x in granted)) > 1e-6:
            bad["reward_cost"] = (state.reward_cost, sum(float(x["cost"]) for x in granted))
        if bad:
            wrong[user_id] = bad
    shown = dict(list(wrong.items())[:5])
    assert not wrong, f"{len(wrong)} users' state disagrees (state, expected): {shown}"

    ledgers = await latest_state(settings, TABLE_LEDGER)
    for partition in range(settings.partitions):
        ledger = Ledger.from_bytes(ledgers.get(ledger_key(program.id, partition)))
        granted = [
            d.document
            for d in decided
            if d.partition == partition and d.document["status"] == "granted"
        ]
        cost = sum(float(x["cost"]) for x in granted)
        spent = ledger.spent_total
        assert spent == pytest.approx(cost, abs=1e-6), (partition, spent, cost)
        stock = Counter(str(x["action"]) for x in granted)
        assert {k: v for k, v in ledger.stock_used.items() if v} == dict(stock), partition

    await check_learning(settings, decided, lives, report, exact_final=exact_final)
    return report


# Decisions of one partition sent this far apart are never of one commit's run of sends
# unless the broker was away in the middle of it (the bound is then only looser). Kafka
# writes a commit's markers after acknowledging it; a lone broker that shuts down right
# then skips them (streams/runtime.py, _note_reverted), and the records stay open until
# the same producer's next commit after the restart marks them with its own: two
# transactions with no marker between them, the second sent seconds after the first.
RUN_GAP_MS = 1_000


async def _credit_reverted(settings: Settings, decided: list[Decided], lives: Lives) -> None:
    """Date the learning of decisions whose events a worker handled again without their
    effects (its log's ``transaction.reverted``): their steps were taken when the first
    decision of the same event was committed, as Kafka acknowledged, before it aborted
    that transaction; that first decision is in the log, aborted, sent earlier."""
    # Only the decide stage's inputs are decided again when handled again. A reverted
    # range of the link stage's input holds copies of decided events on their way to
    # their devices and networks: handling them again decides nothing.
    names = settings.topic_names()
    decide = next(stage for stage in STAGES if stage.name == "decide")
    decided_from = {names[role] for role in decide.reads}
    reverts = [
        (life, revert)
        for life in lives.lives
        for revert in life.reverts()
        if revert.topic in decided_from
    ]
    if not reverts:
        return
    visible = {(d.partition, d.offset) for d in decided}
    aborted: dict[str, int] = {}  # event id -> when its first aborted decision was sent
    for record in await read_to_end(
        settings.bootstrap_servers, settings.topic_decisions, isolation_level="read_uncommitted"
    ):
        if (record.partition, record.offset) in visible or not record.value:
            continue  # committed, or a fencing producer's empty record
        event_id = str(orjson.loads(record.value)["event_id"])
        aborted[event_id] = min(aborted.get(event_id, record.timestamp), record.timestamp)
    by_event = {d.document["event_id"]: d for d in decided}
    inputs: dict[str, list[Record]] = {}
    for life, revert in reverts:
        if revert.topic not in inputs:
            inputs[revert.topic] = await read_to_end(settings.bootstrap_servers, revert.topic)
        for record in inputs[revert.topic]:
            if record.partition != revert.partition or not (
                revert.committed <= record.offset < revert.acknowledged
            ):
                continue
            d = by_event.get(_event_id(record.value))
            if d is None or d.life is not life or d.partition != revert.task:
                continue  # not an event, or decided by another task (it was rekeyed)
            first = aborted.get(d.document["event_id"])
            assert first is not None, f"no aborted decision before {d.document} ({revert})"
            assert first <= d.timestamp, (revert, d.document)
            d.learned_early = first


def _event_id(value: bytes | None) -> str:
    """The event id of an input record ("" for one that is not an event)."""
    try:
        document = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return ""
    return str(document.get("event_id", "")) if isinstance(document, dict) else ""


async def check_learning(
    settings: Settings,
    decided: list[Decided],
    lives: Lives,
    report: Report,
    *,
    exact_final: bool = True,
) -> None:
    """The models learn each committed answer once, and never one that was not committed.

    What is exactly true, from the code (app/models/deferral.py, streams/runtime.py,
    streams/worker.py):

    - a worker *life* (one process) starts from the newest checkpoint, ``R`` steps
      (its log says ``checkpoint.restored updates=R``; none: 0), and from then on takes a
      batch's steps only in the commit callback of the batch's transaction: the steps
      the models have taken are ``R`` plus the steps of this life's committed batches
      whose callbacks ran. A kill loses the steps after the life's last checkpoint;
      nothing ever adds a step twice, or one of a batch that did not commit;
    - which life wrote a decision: the one that was given its partition last before the
      decision's Kafka timestamp (see :meth:`Life.assignments`);
    - a transaction's decisions are a run of consecutive offsets of their partition (one
      producer per partition; each commit or abort marker takes an offset).

    Hence, for every decision ``d`` of life ``L`` in transaction ``T`` of partition ``p``,
    with ``N`` the steps in its ``model_version`` and ``S(...)`` the oracle's steps of
    committed decisions of ``L``:

    - ``N <= R + S(sent at or before d) - S(on p, from T's first offset on)``: every step
      taken before ``d`` was handled comes from a batch committed before, whose records
      were sent before ``d``'s; ``T`` itself and later transactions of ``p`` had not
      committed. (Models that learn before the commit break this at the first batch
      with an answer before a decision: after every restart the backlog is one.)
    - ``N >= R + S(on p, transactions of L at least two before T)``: a partition has one
      transaction at a time, so the one before the previous had committed and run its
      callbacks before ``d`` was handled;
    - ``N`` never decreases along a partition within a life;
    - a checkpoint record written at ``t`` while only ``L`` lived holds at most
      ``R + S(sent at or before t)``; the next life restores the newest checkpoint;
    - the newest checkpoint, written by the last life stopped cleanly after everything
      sent was decided, holds exactly ``R + S(all of the last life)``.
    """
    owners = lives.owners()
    for d in decided:
        candidates = [life for at, life in owners.get(d.partition, []) if at <= d.timestamp]
        assert candidates, f"no worker owned partition {d.partition} at {d.timestamp}"
        d.life = candidates[-1]
    by_partition: dict[int, list[Decided]] = defaultdict(list)
    for d in decided:
        by_partition[d.partition].append(d)
    for partition_decisions in by_partition.values():
        partition_decisions.sort(key=lambda d: d.offset)
        transaction = run = 0
        for previous, d in zip([None, *partition_decisions], partition_decisions, strict=False):
            if previous is not None and (
                d.offset != previous.offset + 1 or d.life is not previous.life
            ):
                transaction += 1
            d.transaction = transaction
            if previous is not None and (
                d.transaction != previous.transaction
                or d.timestamp - previous.timestamp >= RUN_GAP_MS
            ):
                run += 1
            d.run = run
        spans: dict[int, list[int]] = {}
        for d in partition_decisions:
            first_last = spans.setdefault(d.transaction, [d.timestamp, d.timestamp])
            first_last[1] = d.timestamp
        widest = max((last - first for first, last in spans.values()), default=0)
        report.widest_transaction_ms = max(report.widest_transaction_ms, widest)

    await _credit_reverted(settings, decided, lives)

    by_life: dict[str, list[Decided]] = defaultdict(list)
    for d in decided:
        assert d.life is not None
        by_life[d.life.name].append(d)
    problems: list[str] = []
    for life in lives.lives:
        own = sorted(by_life.get(life.name, []), key=lambda d: d.learned_at)
        restored = life.restored
        times = [d.learned_at for d in own]
        prefix = [0]
        for d in own:
            prefix.append(prefix[-1] + d.steps)
        report.per_life[life.name] = (restored, prefix[-1], life.ending)

        def before(ts: int, times: list[int] = times, prefix: list[int] = prefix) -> int:
            return prefix[bisect.bisect_right(times, ts)]

        per_partition: dict[int, list[Decided]] = defaultdict(list)
        for d in sorted(own, key=lambda d: (d.partition, d.offset)):
            per_partition[d.partition].append(d)
        for partition, chain in per_partition.items():
            transactions = sorted({d.transaction for d in chain})
            rank = {t: i for i, t in enumerate(transactions)}
            steps_by_rank: Counter[int] = Counter()
            for d in chain:
                steps_by_rank[rank[d.transaction]] += d.steps
            starts: dict[int, int] = {}  # run -> index of its first decision
            for index, d in enumerate(chain):
                starts.setdefault(d.run, index)
            last = None
            for d in chain:
                n = model_steps(d.document)
                own_and_later = 0  # T's and later transactions' steps sent by d's time
                for x in chain[starts[d.run] :]:
                    if x.timestamp > d.timestamp:
                        break  # one producer per partition: later offsets, later times
                    if x.learned_early is None:  # (else taken before, at its first commit)
                        own_and_later += x.steps
                upper = restored + before(d.timestamp) - own_and_later
                lower = restored + sum(steps_by_rank[r] for r in range(rank[d.transaction] - 1))
                if not lower <= n <= upper:
                    problems.append(
                        f"{life.name} p{partition}@{d.offset} {d.document['decision_id']}: "
                        f"model at lr+{n}, committed learning allows [{lower}, {upper}]; "
                        + _transaction_context(chain, starts[d.transaction], d)
                    )
                if last is not None and n < last:
                    problems.append(f"{life.name} p{partition}@{d.offset}: lr+{n} after lr+{last}")
                last = n

    # Checkpoints: every record ever written (compaction never touches the active segment).
    key = checkpoint_key(load_program_setting(settings.program).id)
    checkpoints = [
        (r.timestamp, orjson.loads(r.value or b"{}"))
        for r in await read_to_end(settings.bootstrap_servers, settings.topic_model_checkpoints)
        if r.key == key and r.value
    ]
    for at, record in checkpoints:
        updates = int(record["state"]["updates"])
        alive = [
            life
            for life in lives.lives
            if life.started_ms <= at and (life.ended_ms is None or at <= life.ended_ms)
        ]
        if len(alive) != 1:
            continue  # two workers at once: either could have written it
        life = alive[0]
        own = [d for d in by_life.get(life.name, []) if d.learned_at <= at]
        allowed = life.restored + sum(d.steps for d in own)
        if not life.restored <= updates <= allowed:
            problems.append(
                f"checkpoint at {at} by {life.name}: {updates} steps, committed learning "
                f"allows [{life.restored}, {allowed}]"
            )
    for earlier, later in zip(lives.lives, lives.lives[1:], strict=False):
        # A clean stop writes a checkpoint on the way out (docs/reliability.md), but
        # streams/worker.py saves it before Runtime.stop commits what was handled last:
        # the learning of those last transactions is lost. Reported, not asserted (the
        # checkpoint bounds above still hold); measured mid-stream: 0 to 3 steps.
        if earlier.ending == "stopped" and later.started_ms >= (earlier.ended_ms or 0):
            restored, learned, _ = report.per_life[earlier.name]
            report.lost_at_clean_stop[earlier.name] = restored + learned - later.restored
    assert checkpoints, "no checkpoint was ever written"
    report.checkpoint = int(checkpoints[-1][1]["state"]["updates"])
    final = lives.lives[-1]
    assert not problems, (
        f"{len(problems)} learning problems:\n"
        + "\n".join(problems[:20])
        + f"\nfinal checkpoint {report.checkpoint} steps; restored, learned, ending of each "
        f"life: {report.per_life}"
    )
    assert final.ending == "stopped", "the last worker must be stopped cleanly before the audit"
    restored, learned, _ = report.per_life[final.name]
    if exact_final:
        assert report.checkpoint == restored + learned, (
            f"the final checkpoint holds {report.checkpoint} learning steps; the last worker "
            f"started from {restored} and its committed decisions acknowledge {learned}"
        )
    else:
        assert restored <= report.checkpoint <= restored + learned, report.summary()
    assert report.checkpoint <= report.learned, report.summary()
