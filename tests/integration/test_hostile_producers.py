"""Hostile producers against one real worker on the real broker.

Producers of the events topic are not trusted (docs/contract.md, "Who may send
what"). Interleaved with ordinary valid traffic, third-party clients (kcat, Kafka's
own console producer) and aiokafka send what such a producer can:

1. the largest key and the largest value the broker takes (its ``max.message.bytes``,
   asked of it; one byte more is refused);
2. events stamped far ahead (just beyond the 3600 s bound, and in 2099) for a user
   whose welcome reward was granted and for a user an analyst confirmed as a
   fraudster, then an ordinary event for each: the first is not new again, the
   second is still not paid;
3. a ``fraud_label`` and a ``consent_updated`` on ``events``: dead-lettered as
   ``unauthorized``, and neither takes effect (a held reward is not released, a
   declined marketing consent stays declined);
4. a transaction left open on one partition of ``events`` for longer than the worker's
   ``REWARDSTREAM_READY_BLOCKED_S`` (20 s here), with valid events behind it: the worker
   says so (``rewardstream_input_blocked_seconds`` over it, ``/ready`` 503) while the
   other partitions flow on; once the transaction is aborted it is ready again, the
   gauge is 0 and the held-back events are decided.

A probe reads ``/ready`` and ``/metrics`` twice a second throughout. At the end every
record on the inputs is exactly one decision, one dead letter or one counted
duplicate, no reward is granted twice, and the worker never exited. Without kcat or
java the test skips on a developer's machine and FAILS under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner

from app.kafkaio import Received, event_routes, produce, read
from app.settings import Settings
from harness.localkafka.tools import run_tool
from harness.workerproc import WorkerProcess
from tests.conftest import fail_or_skip, required_binary

pytestmark = pytest.mark.kafka

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# The contract's bound on event time (REWARDSTREAM_MAX_EVENT_AHEAD_S, its default), and
# how long an input may wait behind an open transaction before /ready says 503.
AHEAD_S = 3_600
BLOCKED_S = 20  # the worker's REWARDSTREAM_READY_BLOCKED_S in this test
FAR_FUTURE = "2099-06-01T00:00:00Z"
MARKETING = {"email", "sms"}  # the retail program's marketing channels
BLOCKED_PARTITION = 1  # of events: where the transaction is left open
SEPARATOR = "|"  # between key and value, for kcat -K and the console producer
PROBE_EVERY_S = 0.5
LIMITS = ("message.max.bytes", "max.message.bytes")  # the broker's, the topic's

Check = Callable[[object, str], None]


# ---------------------------------------------------------------- what is sent


@dataclass(frozen=True)
class Sent:
    """One message a producer sent, and what it must end as: ``decision``, ``duplicate``
    (a repeated event id: counted, no decision), ``dead:<reason>``, or ``refused`` (by
    the broker: it never reaches the topic)."""

    topic: str
    key: bytes
    value: bytes
    expect: str = "decision"

    @functools.cached_property
    def event_id(self) -> str | None:
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(self.value)
            if isinstance(document, dict) and isinstance(document.get("event_id"), str):
                return str(document["event_id"])
        return None

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.value).hexdigest()


def event(event_id: str, user: str, type_: str, ts: int | str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": type_, "ts": ts, **fields}


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_of(key: str, partitions: int) -> int:
    """Where Java clients, aiokafka and kcat with murmur2 put ``key``, and where the
    worker keeps that user's state."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key.encode(), every, every))


def pick(stem: str, partitions: int, *, on: int | None = None, off: int | None = None) -> str:
    """A user id starting with ``stem`` whose partition is ``on`` (or is not ``off``)."""
    for n in range(1_000):
        user = f"{stem}-{n}"
        where = partition_of(user, partitions)
        if (on is None or where == on) and (off is None or where != off):
            return user
    raise AssertionError(f"no user id for {stem}")


@dataclass
class Traffic:
    """Everything sent, in order, built from plain events."""

    events_topic: str
    routes: dict[str, str]
    sent: list[Sent] = field(default_factory=list)

    def add(
        self,
        event_id: str,
        user: str,
        type_: str,
        ts: int | str,
        expect: str = "decision",
        **fields: Any,
    ) -> Sent:
        """An event keyed by its user, to the topic the project's producers route it to
        (``expect`` ``dead:unauthorized`` sends a control event to events instead)."""
        topic = self.routes.get(type_, self.events_topic)
        if expect == "dead:unauthorized":
            topic = self.events_topic
        value = orjson.dumps(event(event_id, user, type_, ts, **fields))
        return self.keep(Sent(topic, user.encode(), value, expect))

    def keep(self, message: Sent) -> Sent:
        self.sent.append(message)
        return message

    def since(self, start: int) -> list[Sent]:
        return self.sent[start:]


# ---------------------------------------------------------------- the record size limit


def varint_bytes(n: int) -> int:
    """The size of ``n`` as a Kafka (zigzag) varint."""
    zigzag, size = (n << 1) ^ (n >> 63), 1
    while zigzag >= 0x80:
        zigzag, size = zigzag >> 7, size + 1
    return size


def batch_bytes(key_len: int, value_len: int) -> int:
    """The size of a record batch (v2, 61-byte header) holding one uncompressed record
    without headers: what the broker compares with ``max.message.bytes``."""
    # attributes, timestamp delta 0, offset delta 0; key; value; no headers
    body = 3 + varint_bytes(key_len) + key_len + varint_bytes(value_len) + value_len + 1
    return 61 + varint_bytes(body) + body


def largest(limit: int, *, beside: int, key: bool) -> int:
    """The longest key (``key=True``) or value next to a ``beside``-byte other half
    whose batch still fits ``limit``."""
    size = limit - beside - 61
    while batch_bytes(*((size, beside) if key else (beside, size))) > limit:
        size -= 1
    return size


async def max_message_bytes(settings: Settings) -> tuple[int, int]:
    """The broker's ``message.max.bytes`` and the events topic's ``max.message.bytes``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    found: dict[str, int] = {}
    try:
        for resource in (
            ConfigResource(ConfigResourceType.BROKER, "1"),  # the local broker's node id
            ConfigResource(ConfigResourceType.TOPIC, settings.topic_events),
        ):
            for response in await admin.describe_configs([resource]):
                for *_, configs in response.resources:
                    found |= {c[0]: int(c[1]) for c in configs if c[0] in LIMITS}
    finally:
        await admin.close()
    return found["message.max.bytes"], found["max.message.bytes"]


# ---------------------------------------------------------------- third-party clients


def binary(name: str, how: str) -> str:
    """``required_binary``, with the right hint (its own names ``make prometheus-bin``)."""
    if shutil.which(name) is None:
        fail_or_skip(f"{name} is missing: {how}")
    return required_binary(name)


def keyed_lines(messages: Iterable[Sent]) -> bytes:
    """``key|value`` lines, the form both kcat -K and the console producer parse."""
    lines = []
    for m in messages:
        assert SEPARATOR.encode() not in m.key, m.key[:40]
        assert b"\n" not in m.key + m.value, m.key[:40]
        lines.append(m.key + SEPARATOR.encode() + m.value + b"\n")
    return b"".join(lines)


async def kcat(
    path: str, settings: Settings, messages: list[Sent], *, limit: int, partition: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    """kcat (librdkafka) producing ``messages`` to ``partition``, else where murmur2 puts
    their keys (as Java clients and the worker do; librdkafka's default is CRC32)."""
    [topic] = {m.topic for m in messages}
    command = [path, "-P", "-b", settings.bootstrap_servers, "-t", topic, "-K", SEPARATOR]
    # librdkafka's own limit (1,000,000 bytes by default) must not stop a record first.
    command += ["-X", f"message.max.bytes={2 * limit}"]
    if partition is None:
        command += ["-X", "partitioner=murmur2_random"]
    else:
        command += ["-p", str(partition)]
    return await asyncio.to_thread(
        subprocess.run, command, input=keyed_lines(messages), capture_output=True, timeout=60
    )


async def console_producer(settings: Settings, messages: list[Sent]) -> None:
    """Kafka's own console producer (Java) producing ``messages``, keyed."""
    [topic] = {m.topic for m in messages}
    await asyncio.to_thread(
        run_tool,
        "org.apache.kafka.tools.ConsoleProducer",
        [
            *("--bootstrap-server", settings.bootstrap_servers, "--topic", topic),
            *("--reader-property", "parse.key=true"),
            *("--reader-property", f"key.separator={SEPARATOR}"),
        ],
        cache_dir=settings.cache_dir,
        version=settings.kafka_version,
        stdin=keyed_lines(messages),
    )


# ---------------------------------------------------------------- watching the worker


Series = dict[str, list[tuple[dict[str, str], float]]]
SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(page: str) -> Series:
    parsed: Series = defaultdict(list)
    for line in page.splitlines():
        if match := SERIES.match(line):
            parsed[match[1]].append((dict(LABEL.findall(match[2] or "")), float(match[3])))
    return parsed


@dataclass
class Sample:
    """One look at the worker's pages."""

    at: float  # time.monotonic()
    ready: int  # /ready's status, 0 when it did not answer
    ready_body: bytes
    metrics: Series

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the series of ``name`` with ``labels``; None if there are none."""
        found = [v for have, v in self.metrics.get(name, []) if labels.items() <= have.items()]
        return sum(found) if found else None


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), bytes(error.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


class Probe(threading.Thread):
    """Reads /ready and /metrics every PROBE_EVERY_S, as a kubelet and Prometheus would."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def sample(self) -> Sample:
        ready, body = get(self.url + "/ready")
        status, page = get(self.url + "/metrics")
        metrics = parse_metrics(page.decode()) if status == 200 else {}
        return Sample(time.monotonic(), ready, body, metrics)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(self.sample())
            self.stopping.wait(PROBE_EVERY_S)

    def last(self) -> Sample:
        return self.samples[-1] if self.samples else self.sample()

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


@dataclass
class Outputs:
    """Decisions (by event id) and dead letters as a read_committed reader sees them, each
    with the time it arrived."""

    decisions: dict[str, list[tuple[float, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    dead: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def has(self, message: Sent) -> bool:
        """Whether ``message`` has come out: as its decision, or as a dead letter of its
        bytes (whose event id is null for a value too large to parse)."""
        if message.event_id in self.decisions:
            return True
        return any(d["payload_sha256"] == message.sha256 for _, d in self.dead)

    def decision(self, event_id: str) -> dict[str, Any]:
        return self.decisions[event_id][0][1]

    def seen_at(self, message: Sent) -> float | None:
        runs = self.decisions.get(message.event_id or "")
        return runs[0][0] if runs else None


async def follow(settings: Settings, outputs: Outputs, stopping: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        settings.topic_decisions,
        settings.topic_dead_letter,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        while not stopping.is_set():
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    document = orjson.loads(record.value)
                    if record.topic == settings.topic_dead_letter:
                        outputs.dead.append((time.monotonic(), document))
                    else:
                        outputs.decisions[document["event_id"]].append((time.monotonic(), document))
    finally:
        await consumer.stop()


async def eventually(
    condition: Callable[[], bool], timeout_s: float, why: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(why())
        await asyncio.sleep(0.2)


async def read_all(settings: Settings, topics: list[str]) -> list[Received]:
    """Every committed record of ``topics``, from the start, until quiet for 3 s."""
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, topics, idle_timeout_s=3.0)
    async with aclosing(records):
        return [record async for record in records]


# ---------------------------------------------------------------- the test


async def test_hostile_producers_neither_pay_themselves_nor_hide_and_the_worker_tells(
    kafka_settings: Settings,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    tmp_path: Path,
) -> None:
    kcat_path = binary("kcat", "`make kcat-bin` installs it")
    binary("java", "Java 17 or newer runs Kafka's console producer")
    # Its topics, control topics included, are this test's alone.
    settings = dataclasses.replace(kafka_settings, ready_blocked_s=BLOCKED_S)
    events, parts, blocked_p = settings.topic_events, settings.partitions, BLOCKED_PARTITION
    worker = start_worker(settings, tmp_path / "worker.log")
    worker.wait_ready(timeout_s=120)
    probe = Probe(worker.url)
    probe.start()
    outputs = Outputs()
    stopping = asyncio.Event()
    following = asyncio.create_task(follow(settings, outputs, stopping))
    traffic = Traffic(events, event_routes(settings))
    add = traffic.add
    hostile: AIOKafkaProducer | None = None

    async def project_producer(messages: list[Sent]) -> None:
        """The project's own producer (aiokafka; control events routed to their topics)."""
        values = [m.value for m in messages]
        await produce(settings.bootstrap_servers, events, values, routes=traffic.routes)

    async def come_out(messages: list[Sent], what: str, timeout_s: float = 45.0) -> None:
        """Wait until each message has its decision or dead letter."""
        expected = [m for m in messages if m.expect not in ("duplicate", "refused")]
        await eventually(
            lambda: all(outputs.has(m) for m in expected),
            timeout_s,
            lambda: (
                f"{what}: nothing came out for "
                f"{[m.event_id or m.sha256 for m in expected if not outputs.has(m)][:6]}\n"
                f"{worker.log_tail()}"
            ),
        )

    def blocked(sample: Sample) -> float:
        gauge = "rewardstream_input_blocked_seconds"
        return sample.value(gauge, topic=events, partition=str(blocked_p)) or 0.0

    welcomed = pick("welcomed", parts, off=blocked_p)
    fraudster = pick("fraudster", parts, off=blocked_p)
    self_clearer = pick("self-clearer", parts, off=blocked_p)
    declined = pick("declined-marketing", parts, off=blocked_p)
    control = pick("control", parts, off=blocked_p)
    big_key_user = pick("big-key", parts, off=blocked_p)
    big_value_user = pick("big-value", parts, off=blocked_p)
    shoppers = [pick(f"shopper{n}", parts, off=blocked_p) for n in range(6)]
    waiting = [pick(f"waiting{n}", parts, on=blocked_p) for n in range(3)]

    def shopping(label: str, ts: int) -> list[Sent]:
        """Ordinary valid traffic from the shoppers, on every partition but the blocked one."""
        out = []
        for n, user in enumerate(shoppers):
            kind = ("session_start", "page_view", "purchase")[n % 3]
            money: dict[str, Any] = {"amount": 30.0 + n, "currency": "EUR"}
            money = money if kind == "purchase" else {}
            out.append(add(f"{label}-{n}", user, kind, ts + n, channel="web", **money))
        return out

    now = now_ms()
    try:
        # -------------------------------------------------------- who is who
        # A user granted the welcome reward at sign-up (active 13 h before, so past the
        # new-account pending period); a fraudster and a self-clearer, new accounts whose
        # welcome reward is held; a user who declines marketing through the consent
        # topic, and a control user who does not; users on the partition that will be
        # blocked (the worker has read that partition before the transaction opens).
        add("welcomed-visit", welcomed, "page_view", now - 14 * HOUR_MS)
        add("welcomed-signup", welcomed, "signup", now - HOUR_MS, channel="web")
        add("fraudster-signup", fraudster, "signup", now - 3 * HOUR_MS, device_id="dev-farm-1")
        add("self-clearer-signup", self_clearer, "signup", now - 3 * HOUR_MS, channel="web")
        add("declined-visit", declined, "page_view", now - 14 * HOUR_MS)
        add(
            "declined-consent",
            declined,
            "consent_updated",
            now - 13 * HOUR_MS,
            attributes={"marketing": False},
        )
        add("control-visit", control, "page_view", now - 14 * HOUR_MS)
        for user in waiting:
            add(f"{user}-visit", user, "page_view", now - 2 * HOUR_MS)
        shopping("shop-a", now - 2 * HOUR_MS)
        setup = traffic.since(0)
        await project_producer(setup)
        await come_out(setup, "setup")
        signup = outputs.decision("welcomed-signup")
        assert (signup["status"], signup["action"]) == ("granted", "welcome-points"), signup
        held = outputs.decision("fraudster-signup")
        assert held["status"] == "held", held
        assert outputs.decision("self-clearer-signup")["status"] == "held"
        # The analyst's verdict on the fraudster, from the fraud-labels topic.
        label = [
            add(
                "fraudster-confirmed",
                fraudster,
                "fraud_label",
                now - 2 * HOUR_MS,
                attributes={"label": "confirmed", "analyst": "team-risk"},
            )
        ]
        await project_producer(label)
        await come_out(label, "the analyst's label")
        cancelled = outputs.decision("fraudster-confirmed")
        assert cancelled["status"] == "blocked", cancelled
        assert f"hold.cancelled:{held['decision_id']}" in cancelled["reasons"], cancelled
        limit = min(await max_message_bytes(settings))

        # -------------------------------------------------------- 4: a transaction left open
        hostile = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            transactional_id=f"hostile-{settings.app_id}",
            transaction_timeout_ms=300_000,  # longer than the test (the broker allows 15 min)
        )
        await hostile.start()
        await hostile.begin_transaction()
        never = event(
            "never-committed", waiting[0], "purchase", now - HOUR_MS, amount=99.0, currency="EUR"
        )
        await hostile.send_and_wait(
            events, orjson.dumps(never), key=waiting[0].encode(), partition=blocked_p
        )
        opened = time.monotonic()
        held_back: list[Sent] = []

        async def behind(wave: int) -> None:
            """Valid events on the blocked partition, behind the open transaction."""
            start = len(traffic.sent)
            for user in waiting:
                ts = now - HOUR_MS + wave * 1000
                add(f"{user}-behind-{wave}", user, "session_start", ts, channel="web")
            held_back.extend(traffic.since(start))
            await project_producer(traffic.since(start))

        await behind(1)
        hostile_from = len(traffic.sent)

        # -------------------------------------------------------- 1: the largest key and value
        # Keyed by no user, on a partition that is neither the blocked one nor its user's
        # (the worker moves it there); a key one byte longer is refused by the broker.
        small = event("big-key-event", big_key_user, "page_view", now - HOUR_MS, channel="web")
        small_value = orjson.dumps(small)
        key_len = largest(limit, beside=len(small_value), key=True)
        big_key = Sent(events, b"k" * key_len, small_value)
        elsewhere = next(
            p for p in range(parts) if p not in (blocked_p, partition_of(big_key_user, parts))
        )
        result = await kcat(
            kcat_path, settings, shopping("shop-b", now - 90 * MINUTE_MS), limit=limit
        )
        assert result.returncode == 0, result.stderr.decode()
        one_more = dataclasses.replace(big_key, key=b"k" * (key_len + 1), expect="refused")
        refused_key = await kcat(kcat_path, settings, [one_more], limit=limit, partition=elsewhere)
        result = await kcat(kcat_path, settings, [big_key], limit=limit, partition=elsewhere)
        assert result.returncode == 0, f"the largest key was refused: {result.stderr.decode()}"
        traffic.keep(big_key)
        # The largest value: an event padded far beyond max_event_bytes (oversized).
        padded = event(
            "big-value-event", big_value_user, "page_view", now - HOUR_MS, attributes={"pad": ""}
        )
        value_len = largest(limit, beside=len(big_value_user), key=False)
        padded["attributes"]["pad"] = "x" * (value_len - len(orjson.dumps(padded)))
        big_value = Sent(events, big_value_user.encode(), orjson.dumps(padded), "dead:oversized")
        assert len(big_value.value) == value_len
        one_more = dataclasses.replace(
            big_value, value=big_value.value[:-3] + b'x"}}', expect="refused"
        )
        refused_value = await kcat(kcat_path, settings, [one_more], limit=limit)
        traffic.keep(big_value)
        mixed = [big_value, *shopping("shop-c", now - 80 * MINUTE_MS)]
        result = await kcat(kcat_path, settings, mixed, limit=limit)
        assert result.returncode == 0, f"the largest value was refused: {result.stderr.decode()}"

        # -------------------------------------------------------- 3: control events on events
        # Through Kafka's console producer, among valid events and copies of earlier ones.
        shop_d = shopping("shop-d", now - 70 * MINUTE_MS)
        unauthorized = "dead:unauthorized"
        cleared = {"label": "cleared"}
        self_cleared = add(
            "self-cleared",
            self_clearer,
            "fraud_label",
            now - HOUR_MS,
            unauthorized,
            attributes=cleared,
        )
        accepted = add(
            "marketing-accepted",
            declined,
            "consent_updated",
            now - 50 * MINUTE_MS,
            unauthorized,
            attributes={"marketing": True},
        )
        retry = traffic.keep(dataclasses.replace(mixed[1], expect="duplicate"))  # same bytes
        altered = orjson.loads(mixed[2].value) | {"channel": "mobile"}  # same id, other content
        replay = traffic.keep(Sent(events, mixed[2].key, orjson.dumps(altered), "duplicate"))
        again = traffic.keep(dataclasses.replace(setup[1], expect="duplicate"))  # the welcome
        console = [*shop_d[:2], self_cleared, *shop_d[2:4], accepted, *shop_d[4:]]
        await console_producer(settings, [*console, retry, replay, again])

        # -------------------------------------------------------- 2: far-future events
        start = len(traffic.sent)
        beyond = now_ms() + (AHEAD_S + 120) * 1000
        future = "dead:ts_in_future"
        add("welcomed-beyond", welcomed, "signup", beyond, future, channel="web")
        add("welcomed-2099", welcomed, "page_view", FAR_FUTURE, future)
        add("fraudster-beyond", fraudster, "purchase", beyond, future, amount=200.0, currency="EUR")
        add("fraudster-2099", fraudster, "page_view", FAR_FUTURE, future)
        shopping("shop-e", now - 60 * MINUTE_MS)
        # Then ordinary events: is the welcomed user new again, is the fraudster paid, does
        # the declined consent hold, is the self-clearer's reward still held?
        purchase: dict[str, Any] = {"amount": 200.0, "currency": "EUR"}
        add("welcomed-again", welcomed, "signup", now - 30 * MINUTE_MS, channel="web")
        add(
            "fraudster-buys", fraudster, "purchase", now - 20 * MINUTE_MS, channel="web", **purchase
        )
        add(
            "declined-buys", declined, "purchase", now - 40 * MINUTE_MS, channel="email", **purchase
        )
        add("control-buys", control, "purchase", now - 40 * MINUTE_MS, channel="email", **purchase)
        add("self-clearer-visit", self_clearer, "session_start", now - 40 * MINUTE_MS)
        result = await kcat(kcat_path, settings, traffic.since(start), limit=limit)
        assert result.returncode == 0, result.stderr.decode()
        hostile_phase = traffic.since(hostile_from)
        await come_out(hostile_phase, "traffic on the partitions not blocked")

        # -------------------------------------------------------- 4: blocked, then aborted
        await asyncio.sleep(max(0.0, opened + BLOCKED_S / 2 - time.monotonic()))
        await behind(2)
        await eventually(
            lambda: blocked(probe.last()) > BLOCKED_S and probe.last().ready == 503,
            BLOCKED_S + 30,
            lambda: (
                f"never reported blocked: gauge {blocked(probe.last())}, /ready "
                f"{probe.last().ready}\n{worker.log_tail()}"
            ),
        )
        unready = probe.last()
        await behind(3)
        await asyncio.sleep(max(1.0, unready.at + 5 - time.monotonic()))  # a few more probes
        decided_early = [m.event_id for m in held_back if outputs.has(m)]
        await hostile.abort_transaction()
        aborted = time.monotonic()
        await hostile.stop()
        hostile = None
        await eventually(
            lambda: (
                probe.last().ready == 200
                and blocked(probe.last()) == 0
                and all(outputs.has(m) for m in held_back)
            ),
            30,
            lambda: (
                f"after the abort: /ready {probe.last().ready}, gauge "
                f"{blocked(probe.last())}, undecided "
                f"{[m.event_id for m in held_back if not outputs.has(m)]}\n{worker.log_tail()}"
            ),
        )
        recovered = time.monotonic()

        # -------------------------------------------------------- settled
        duplicates = sum(1 for m in traffic.sent if m.expect == "duplicate")
        with contextlib.suppress(AssertionError):  # what they show is checked below
            await eventually(
                lambda: (
                    probe.last().value("rewardstream_duplicate_events_total") == duplicates
                    and (probe.last().value("rewardstream_consumer_lag_records", topic=events) or 0)
                    == 0
                ),
                10,
                str,
            )
        await asyncio.sleep(2 * PROBE_EVERY_S)
    finally:
        if hostile is not None:
            with contextlib.suppress(Exception):
                await hostile.abort_transaction()
            await hostile.stop()
        stopping.set()
        await following
        probe.stopping.set()
        probe.join(10)

    final = probe.sample()
    inputs = await read_all(settings, [events, settings.topic_fraud_labels, settings.topic_consent])
    out = await read_all(settings, [settings.topic_decisions, settings.topic_dead_letter])
    decisions = [r.document() for r in out if r.topic == settings.topic_decisions]
    dead = [r.document() for r in out if r.topic == settings.topic_dead_letter]

    failures: list[str] = []

    def check(ok: object, message: str) -> None:
        """Collects every finding, not only the first: a broken protection usually shows
        in several places, and the run is long."""
        if not ok:
            failures.append(message)

    check(
        refused_key.returncode != 0 and b"too large" in refused_key.stderr,
        f"a key one byte longer was not refused: {refused_key.stderr.decode()[-300:]}",
    )
    check(
        refused_value.returncode != 0 and b"too large" in refused_value.stderr,
        f"a value one byte longer was not refused: {refused_value.stderr.decode()[-300:]}",
    )
    check(max(len(r.key or b"") for r in inputs) == key_len, "the largest key is not on events")
    check(max(len(r.value) for r in inputs) == value_len, "the largest value is not on events")
    check_fates(check, traffic.sent, inputs, decisions, dead, final, duplicates)
    users = {
        "welcomed": welcomed,
        "fraudster": fraudster,
        "self_clearer": self_clearer,
        "declined": declined,
        "control": control,
    }
    check_protections(check, users, decisions, dead, events)
    check_nothing_granted_twice(check, decisions)

    # -------------------------------------------------------- 4, and the pages told the truth
    check(decided_early == [], f"decided behind the open transaction: {decided_early}")
    check(not any(d["event_id"] == "never-committed" for d in decisions), "aborted, decided")
    elsewhere_at = [outputs.seen_at(m) or 0.0 for m in hostile_phase]
    check(max(elsewhere_at) < aborted, "the other partitions waited for the blocked one")
    check(unready.ready == 503 and blocked(unready) > BLOCKED_S, "never reported blocked")
    with contextlib.suppress(orjson.JSONDecodeError):
        problems = orjson.loads(unready.ready_body).get("problems") or []
        # /ready says why: it names the partition held behind the open transaction.
        check(any(f"{events}[{blocked_p}]" in p for p in problems), f"/ready: {problems}")
    samples = probe.samples
    check(all(s.ready for s in samples), "the web port stopped answering")
    not_yet = [s for s in samples if s.at < opened + BLOCKED_S - 1]
    check(
        all(s.ready == 200 for s in not_yet),
        f"/ready before the block: {Counter(s.ready for s in not_yet)}",
    )
    # 503 from BLOCKED_S after the transaction opened (the worker sees it within a probe or
    # two), and from then on until it is aborted.
    first = next((s.at for s in samples if s.ready == 503), float("nan"))
    during = probe.between(first, aborted)
    check(
        BLOCKED_S - 0.5 <= first - opened <= BLOCKED_S + 5,
        f"first 503 {first - opened:.1f} s after the transaction opened",
    )
    check(
        len(during) >= 3 and all(s.ready == 503 for s in during),
        f"/ready while blocked: {Counter(s.ready for s in during)}",
    )
    # The gauge counts the seconds since the transaction opened.
    wrong = [
        (round(s.at - opened, 1), blocked(s))
        for s in probe.between(opened + 3, aborted)
        if not s.at - opened - 5 <= blocked(s) <= s.at - opened + 1
    ]
    check(not wrong, f"(seconds since it opened, gauge): {wrong}")
    after = [s for s in samples if s.at > recovered]
    check(
        after and all(s.ready == 200 and blocked(s) == 0 for s in after),
        f"after the abort: {Counter((s.ready, blocked(s)) for s in after)}",
    )
    check(recovered - aborted < 10, f"ready {recovered - aborted:.1f} s after the abort")
    for s in samples:
        for labels, value in s.metrics.get("rewardstream_input_blocked_seconds", []):
            if labels["topic"] == events and labels["partition"] != str(blocked_p):
                check(value == 0, f"{labels} reported blocked: {value}")
            elif labels["topic"] != events:
                check(value < BLOCKED_S, f"{labels} reported blocked: {value}")
    lag = {
        labels["partition"]: value
        for labels, value in final.metrics.get("rewardstream_consumer_lag_records", [])
        if labels["topic"] == events
    }
    # The abort marker that ends the hostile transaction is the last entry of its
    # partition: the lag reads from the consumer's position, past it, so it is 0 too.
    check(lag == {str(p): 0 for p in range(parts)}, f"events lag at the end: {lag}")
    check(final.ready == 200, f"/ready at the end: {final.ready}")
    assert worker.process is not None
    check(worker.process.poll() is None, "the worker exited")
    assert not failures, "\n".join(failures) + f"\n--- worker log:\n{worker.log_tail()}"


def check_fates(
    check: Check,
    sent: list[Sent],
    inputs: list[Received],
    decisions: list[dict[str, Any]],
    dead: list[dict[str, Any]],
    final: Sample,
    duplicates: int,
) -> None:
    """Every record on the inputs is one decision, one dead letter or one counted
    duplicate; each message sent ended as it should."""
    delivered = [m for m in sent if m.expect != "refused"]
    check(len(inputs) == len(delivered), f"{len(inputs)} input records, {len(delivered)} sent")
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_event[d["event_id"]].append(d)
    sources = Counter(
        (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) for d in dead
    )
    check(max(sources.values(), default=1) == 1, f"dead-lettered twice: {sources}")
    stored = {(r.topic, r.partition, r.offset): r for r in inputs}
    check(set(sources) <= set(stored), "a dead letter names no input record")
    for d in dead:
        original = stored.get(
            (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
        )
        check(
            original is not None
            and hashlib.sha256(original.value).hexdigest() == d["payload_sha256"],
            f"a dead letter's source offset holds other bytes: {d['source']}",
        )
    for m in delivered:
        letters = [d for d in dead if d["payload_sha256"] == m.sha256]
        own = by_event.get(m.event_id or "", [])
        if m.expect.startswith("dead:"):
            check(
                [d["reason"] for d in letters] == [m.expect.removeprefix("dead:")],
                f"{m.event_id}: expected {m.expect}, got dead letters "
                f"{[(d['reason'], d['error']) for d in letters]} and decisions "
                f"{[(d['status'], d['action']) for d in own]}",
            )
            check(
                own == [], f"{m.event_id} was decided: {[(d['status'], d['action']) for d in own]}"
            )
        else:
            check(letters == [], f"{m.event_id} was dead-lettered: {[d['error'] for d in letters]}")
            check(len(own) == 1, f"{m.event_id}: {len(own)} decisions")
    expected = {m.event_id for m in delivered if m.expect == "decision"}
    unexpected = sorted(set(by_event) - expected)
    check(not unexpected, f"decided, though they should not be: {unexpected}")
    check(
        len(decisions) + len(dead) + duplicates == len(inputs),
        f"{len(decisions)} decisions + {len(dead)} dead letters + {duplicates} duplicates, "
        f"{len(inputs)} input records",
    )
    counted = {
        name: final.value(f"rewardstream_{name}_total")
        for name in ("duplicate_events", "events", "dead_letters", "rekeyed_events")
    }
    check(counted["duplicate_events"] == duplicates, f"{counted}: {duplicates} duplicates sent")
    check(counted["events"] == len(decisions), f"{counted}: {len(decisions)} decisions")
    check(counted["dead_letters"] == len(dead), f"{counted}: {len(dead)} dead letters")
    check((counted["rekeyed_events"] or 0) >= 1, f"{counted}: the largest key was not moved")
    oversized = [d for d in dead if d["reason"] == "oversized"]
    check(
        [(d["payload_truncated"], d["payload_bytes"]) for d in oversized]
        == [(True, max(len(r.value) for r in inputs))],
        "the oversized dead letter",
    )


def check_protections(
    check: Check,
    users: dict[str, str],
    decisions: list[dict[str, Any]],
    dead: list[dict[str, Any]],
    events: str,
) -> None:
    """Far-future events aged no state; control events on events changed nothing."""
    by_event = {d["event_id"]: d for d in decisions}
    of = {user: [d for d in decisions if d["user_id"] == user] for user in users.values()}

    def brief(d: dict[str, Any] | None) -> object:
        return d and {k: d[k] for k in ("status", "action", "channel", "risk", "reasons")}

    # 2: the welcomed user is not new again; the confirmed fraudster is still confirmed.
    again = by_event.get("welcomed-again", {})
    check(
        (again.get("status"), again.get("action")) == ("none", None),
        f"the welcomed user was new again after far-future events: {brief(again)}",
    )
    welcomes = [d["event_id"] for d in of[users["welcomed"]] if d["action"] == "welcome-points"]
    check(welcomes == ["welcomed-signup"], f"welcome-points offered again: {welcomes}")
    buys = by_event.get("fraudster-buys", {})
    check(
        (buys.get("status"), buys.get("risk")) == ("blocked", 1.0),
        f"the confirmed fraudster after far-future events: {brief(buys)}",
    )
    paid = [d["event_id"] for d in of[users["fraudster"]] if d["status"] == "granted"]
    check(paid == [], f"the confirmed fraudster was paid: {paid}")
    # 3: the self-clearer's hold stands; the declined marketing consent stands.
    paid = [d["event_id"] for d in of[users["self_clearer"]] if d["status"] == "granted"]
    check(paid == [], f"a fraud_label on events released a held reward: {paid}")
    theirs, mine = by_event.get("control-buys", {}), by_event.get("declined-buys", {})
    check(
        (theirs.get("status"), theirs.get("channel")) == ("granted", "email"),
        f"the control user's purchase through email: {brief(theirs)}",
    )
    check(
        mine.get("status") == "granted" and mine.get("channel") not in MARKETING,
        f"a marketing reward after consent_updated on events: {brief(mine)}",
    )
    marketed = [d["event_id"] for d in of[users["declined"]] if d["channel"] in MARKETING]
    check(marketed == [], f"marketing channel for a user who declined it: {marketed}")
    unauthorized = [d for d in dead if d["reason"] == "unauthorized"]
    check(all(d["source"]["topic"] == events for d in unauthorized), "unauthorized elsewhere")


def check_nothing_granted_twice(check: Check, decisions: list[dict[str, Any]]) -> None:
    """No decision twice; the welcome reward once per user; a held reward released once;
    the daily bonus at most once a day (in event time)."""
    check(max(Counter(d["decision_id"] for d in decisions).values()) == 1, "a decision twice")
    granted = [d for d in decisions if d["status"] == "granted"]
    welcome = Counter(d["user_id"] for d in granted if d["action"] == "welcome-points")
    check(max(welcome.values(), default=1) == 1, f"welcome-points granted twice: {welcome}")
    released = Counter(
        r.split(":", 1)[1] for d in granted for r in d["reasons"] if r.startswith("hold.released:")
    )
    check(max(released.values(), default=1) == 1, f"a hold released twice: {released}")
    bonus: dict[str, list[int]] = defaultdict(list)
    for d in sorted(granted, key=lambda d: d["ts"]):
        if d["action"] == "bonus-points":
            bonus[d["user_id"]].append(d["ts"])
    for user, times in bonus.items():
        too_soon = [b - a for a, b in itertools.pairwise(times) if b - a < DAY_MS]
        check(not too_soon, f"bonus-points twice within a day for {user}")
