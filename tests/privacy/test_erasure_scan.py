"""Erasure end to end on a real broker: 50 users erased mid-stream, through a SIGKILL of
the worker; once the erasure bound has passed, the bytes of every topic the engine owns
(its log segments on disk, and every record a reader can still fetch, aborted ones
included) and of the worker's snapshots hold no trace of those users: not their ids, nor
a device or an address only they used. Each request got exactly one receipt, and every
event was still decided exactly once.

The bound is shortened to REWARDSTREAM_ERASURE_BOUND_S=60 (its minimum), and the broker
checks retention and cleans logs every few seconds (production brokers: minutes; the
bound in docs/privacy.md counts them). Traffic of other users keeps flowing while the
bound passes: Kafka closes a segment only at an append (docs/privacy.md says what a
partition without writes keeps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.erasure import receipt_subject
from app.kafkaio import event_routes, seek_to_first
from app.rows import expand
from app.settings import Settings
from harness import localkafka
from harness.workerproc import WorkerProcess
from streams import snapshot
from tests.conftest import start_broker_or_fail
from tests.reliability.helpers import whole_traffic_base
from topologies.rewards import topic_specs

pytestmark = [pytest.mark.kafka]

BOUND_S = 60
ERASED_USERS = 50
PER_SECOND = 120  # the base stream's rate, events/s
# After the last erasure: the bound, and a margin for the broker's own passes.
WAIT_AFTER_S = BOUND_S + 25
# The test broker's housekeeping, every few seconds instead of minutes.
BROKER = {
    "log.retention.check.interval.ms": "2000",
    "log.cleaner.backoff.ms": "1000",
    "log.segment.delete.delay.ms": "1000",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A broker of this test alone: its log directory is what the scan reads."""
    home = tmp_path_factory.mktemp("erasure-kafka")
    info = start_broker_or_fail(home, extra_properties=BROKER)
    yield home / "data", info.bootstrap_servers
    localkafka.stop(home)


def _plan(base: list[bytes], rng: random.Random) -> tuple[dict[int, list[str]], set[bytes]]:
    """Which users to erase and after which line of the base stream; the traces that must
    be gone afterwards: each erased id, and each device and address that only erased
    users used (a shared one is still the other users' data), none of which occurs in
    anything a user who stays sent."""
    documents = [orjson.loads(line) for line in base]
    last_line: dict[str, int] = {}
    referred: set[str] = set()
    for n, document in enumerate(documents):
        last_line[document["user_id"]] = n
        named = (document.get("attributes") or {}).get("referred_user_id")
        if isinstance(named, str):
            referred.add(named)
    # Users named by nobody else (a referral naming them later would be new data about
    # them), done by two thirds of the stream, so their erasure lands mid-stream.
    candidates = sorted(
        user
        for user, last in last_line.items()
        if user not in referred and last < len(base) * 2 // 3 and last > len(base) // 10
    )
    erased = set(rng.sample(candidates, ERASED_USERS))
    kept = (line for line, d in zip(base, documents, strict=True) if d["user_id"] not in erased)
    kept_text = b"\n".join(kept)
    traces: set[bytes] = set()
    for document in documents:
        if document["user_id"] in erased:
            for field in ("user_id", "device_id", "ip"):
                if document.get(field):
                    traces.add(str(document[field]).encode())
    traces = {trace for trace in traces if trace not in kept_text}
    assert {user.encode() for user in erased} <= traces, "an erased id occurs in kept data"
    after: dict[int, list[str]] = defaultdict(list)
    for user in sorted(erased):
        after[min(last_line[user] + rng.randrange(5, 60), len(base) - 1)].append(user)
    return dict(after), traces


def _keep_alive(n: int) -> bytes:
    """Traffic of users who stay, with devices and addresses, on every partition."""
    return orjson.dumps(
        {
            "event_id": f"alive-{n}",
            "user_id": f"alive-user-{n % 97}",
            "type": "page_view",
            "ts": 1_767_225_600_000 + 864_000_000 + n * 1_000,
            "device_id": f"alive-device-{n % 41}",
            "ip": f"192.0.2.{n % 200}",
        }
    )


async def _produce(
    settings: Settings,
    base: list[bytes],
    erase_after: dict[int, list[str]],
    requests: dict[str, tuple[str, int]],
    kill_at: int,
    kill: Callable[[], Any],
) -> None:
    routes = event_routes(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for n, line in enumerate(base):
            document = orjson.loads(line)
            topic = routes.get(document["type"], settings.topic_events)
            await producer.send(topic, line, key=document["user_id"].encode())
            for user in erase_after.get(n, []):
                request_id = f"erase-request-{len(requests)}"
                request = {
                    "event_id": request_id,
                    "user_id": user,
                    "type": "erasure_requested",
                    "ts": int(time.time() * 1000),
                }
                sent = await producer.send_and_wait(
                    settings.topic_erasure_requests, orjson.dumps(request), key=user.encode()
                )
                requests[user] = (request_id, sent.timestamp)
            if n == kill_at:
                await asyncio.to_thread(kill)
            await asyncio.sleep(1 / PER_SECOND)
        await producer.flush()
    finally:
        await producer.stop()


async def _keep_flowing(settings: Settings, seconds: float) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    sent = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await producer.send(settings.topic_events, _keep_alive(sent), key=b"alive")
            sent += 1
            await asyncio.sleep(0.05)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _collect(
    bootstrap: str, topics: list[str], into: dict[str, list[Any]], stop: asyncio.Event
) -> None:
    """Read ``topics`` (committed records only) as they are written, before retention."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        metadata_max_age_ms=1_000,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                into[tp.topic] += messages
    finally:
        await consumer.stop()


async def _every_record(bootstrap: str, topics: list[str]) -> list[tuple[str, bytes]]:
    """Each key, value and header of every record the broker still serves on ``topics``,
    aborted transactions' records included (read_uncommitted); stored rows expanded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_uncommitted",
    )
    await consumer.start()
    found: list[tuple[str, bytes]] = []
    try:
        await consumer._client.force_metadata_update()  # every topic, not only assigned ones
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        assert {tp.topic for tp in partitions} == set(topics)
        consumer.assign(partitions)
        await seek_to_first(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    found += [(m.topic, m.key or b""), (m.topic, _readable(m.value or b""))]
                    found += [(m.topic, bytes(value)) for _, value in m.headers or ()]
    finally:
        await consumer.stop()
    return found


def _readable(value: bytes) -> bytes:
    """A stored row as its JSON (tables keep rows deflated); anything else as it is."""
    try:
        return expand(value)
    except Exception:
        return value


def _snapshot_bytes(directory: Path) -> list[bytes]:
    found: list[bytes] = []
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        found.append(path.read_bytes())
        if path.suffix == ".snapshot":
            topic, _, partition = path.stem.rpartition("-")
            read = snapshot.read(path, topic, int(partition))
            for key, value in (read.rows if read else {}).items():
                found += [key, _readable(value)]
    return found


async def test_erased_users_leave_no_trace_after_the_bound(
    broker: tuple[Path, str],
    test_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    log_dirs, bootstrap = broker
    settings = dataclasses.replace(
        test_settings,
        bootstrap_servers=bootstrap,
        erasure_bound_s=BOUND_S,
        snapshot_interval_s=5,
    )
    rng = random.Random(17)
    base = whole_traffic_base(settings, events=2_400, users=400, seed=41, days=10)
    erase_after, traces = _plan(base, rng)
    owned = [spec.name for spec in topic_specs(settings)]

    workers = [start_worker(settings, tmp_path / "life-0.log")]
    await asyncio.to_thread(workers[0].wait_ready, 120)

    killed_at: list[int] = []

    def kill_and_restart() -> None:
        killed_at.append(int(time.time() * 1000))
        workers[-1].kill()
        workers.append(start_worker(settings, tmp_path / "life-1.log"))

    seen: dict[str, list[Any]] = defaultdict(list)
    stop = asyncio.Event()
    outputs = [settings.topic_decisions, settings.topic_erasures, settings.topic_dead_letter]
    reader = asyncio.create_task(_collect(bootstrap, outputs, seen, stop))
    requests: dict[str, tuple[str, int]] = {}
    # The kill lands while erasures are being requested and carried out.
    kill_at = sorted(erase_after)[len(erase_after) // 2]
    await _produce(settings, base, erase_after, requests, kill_at, kill_and_restart)
    await asyncio.to_thread(workers[-1].wait_ready, 120)
    last_request_at = time.monotonic()
    kept_alive = await _keep_flowing(settings, WAIT_AFTER_S)
    assert time.monotonic() - last_request_at >= BOUND_S
    stop.set()
    await reader
    code = workers[-1].stop()
    assert code == 0, workers[-1].log_tail()

    # Exactly one receipt per request, naming the user by the keyed hash only.
    receipts = [orjson.loads(m.value) for m in seen[settings.topic_erasures]]
    assert sorted(r["request_id"] for r in receipts) == sorted(r for r, _ in requests.values())
    key = settings.erasure_receipt_key or settings.app_id
    assert sorted(r["subject"] for r in receipts) == sorted(
        receipt_subject(user, key) for user in requests
    )
    # Everything else still decided exactly once (the kill aborted what it interrupted);
    # an erased user's event read after the erasure (its topic's backlog was longer) is
    # dead-lettered as `erased`, keeping nothing of it.
    decided = Counter(orjson.loads(m.value)["event_id"] for m in seen[settings.topic_decisions])
    assert max(decided.values()) == 1
    owner = {d["event_id"]: d["user_id"] for d in map(orjson.loads, base)}
    expected = set(owner) | {f"alive-{n}" for n in range(kept_alive)}
    assert set(decided) <= expected
    undecided = expected - set(decided)
    assert {owner[event_id] for event_id in undecided} <= set(requests)
    letters = [orjson.loads(m.value) for m in seen[settings.topic_dead_letter]]
    assert [letter["reason"] for letter in letters] == ["erased"] * len(undecided)

    # The bound has passed: the bytes of every owned topic and of the snapshots.
    found_in: dict[str, set[bytes]] = defaultdict(set)
    for directory in sorted(log_dirs.iterdir()):
        topic = directory.name.rpartition("-")[0]
        if topic not in owned:
            continue
        for path in directory.iterdir():
            try:
                blob = path.read_bytes()
            except FileNotFoundError:  # deleted by the broker while the scan ran: gone
                continue
            found_in[f"segment files of {topic}"] |= {t for t in traces if t in blob}
    records = await _every_record(bootstrap, owned)
    for topic, blob in records:
        found_in[f"records of {topic}"] |= {t for t in traces if t in blob}
    stored = _snapshot_bytes(settings.data_dir)
    found_in["worker's data directory"] = {t for t in traces if any(t in b for b in stored)}
    left = {where: len(found) for where, found in found_in.items() if found}
    assert left == {}, {where: sorted(found_in[where])[:3] for where in left}

    sent_at = dict(requests.values())
    waits = [
        (sent_at[orjson.loads(m.value)["request_id"]], m.timestamp - sent_at[r["request_id"]])
        for m, r in zip(seen[settings.topic_erasures], receipts, strict=True)
    ]
    before = sorted(wait for at, wait in waits if at < killed_at[0])
    after = sorted(wait for at, wait in waits if at >= killed_at[0])
    print(
        f"erasures: {len(receipts)} receipts; request to receipt (the receipt's record "
        f"time): {len(before)} requested before the SIGKILL, p50 "
        f"{statistics.median(before):.0f} ms, max {before[-1]} ms; {len(after)} after it, p50 "
        f"{statistics.median(after):.0f} ms, max {after[-1]} ms; "
        f"{len(traces)} traces checked in {len(records)} records and the segment files of "
        f"{len(owned)} topics; {kept_alive} keep-alive events"
    )
