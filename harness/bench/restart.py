"""The restart figure of `rewardstream bench`: how long a worker whose partitions hold many
users' state takes to decide again.

The state is written straight into the tables' changelogs, as a worker would have
left it: each of ``users`` users gets a user row and a device row, and every user
of a /24 network shares its network row, with values taken from real rows the
pipeline wrote for a few hundred sign-ups (the stored form, :mod:`app.rows`).
Then a fresh worker starts; the clock runs from its start to the decision of a
probe event for one of those users, read back with read_committed, and is split
into "ready" (every partition restored) and "first decision". That is the cold
restart (a new machine: everything comes from the changelogs). The worker's stop
writes its local snapshots; a second start from them is the warm restart (the
same volume: only the changelogs' tail is read).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from app.assembly import build_engine
from app.contract.records import SourcePosition
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables
from app.replay import kafka_partitioner
from app.settings import Settings
from harness.simulation.events import START_MS
from harness.workerproc import WorkerProcess
from topologies import TABLE_LINK_STATE, TABLE_USER_STATE, changelog_topic

# Records per produce batch; the producer's batches are sized to hold them.
BATCH_BYTES = 1024 * 1024
PROBE_USER = "u-restart-0000001"


def templates(
    settings: Settings, signups: Iterable[bytes]
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Stored user, device and network rows of real ``signups``, as the pipeline writes them."""
    pipeline = Pipeline(
        build_engine(settings),
        Metrics(CollectorRegistry()),
        max_event_bytes=settings.max_event_bytes,
        partitioner=kafka_partitioner(settings.partitions),
    )
    tables = Tables(users={}, ledgers={})
    for number, value in enumerate(signups):
        pipeline.handle(tables, SourcePosition("bench-restart", 0, number), value)
    users = [v for v in tables.users.values() if v]
    devices = [v for k, v in tables.links.items() if v and k.startswith(b"device:")]
    networks = [v for k, v in tables.links.items() if v and k.startswith(b"net:")]
    return users, devices, networks


def state_rows(
    settings: Settings, users: int, signups: Iterable[bytes]
) -> Iterator[tuple[str, bytes, bytes]]:
    """(table, key, stored value) of ``users`` users' state, from template ``signups``."""
    user_rows, device_rows, network_rows = templates(settings, signups)
    for n in range(users):
        yield TABLE_USER_STATE, f"u-restart-{n:07d}".encode(), user_rows[n % len(user_rows)]
        device = f"device:dev-restart-{n:07d}".encode()
        yield TABLE_LINK_STATE, device, device_rows[n % len(device_rows)]
        if n % 4 == 0:  # about four users a network, as the simulator's spread gives
            network = f"net:10.{(n >> 16) & 255}.{(n >> 8) & 255}.0/24".encode()
            yield TABLE_LINK_STATE, network, network_rows[n % len(network_rows)]


async def write_state(settings: Settings, users: int, signups: Iterable[bytes]) -> int:
    """Write ``users`` users' state into the changelogs; return how many records."""
    place = kafka_partitioner(settings.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        max_batch_size=BATCH_BYTES,
        max_request_size=2 * BATCH_BYTES,
        linger_ms=50,
    )
    await producer.start()
    written = 0
    try:
        batches: dict[tuple[str, int], Any] = {}
        pending = []
        for table, key, value in state_rows(settings, users, signups):
            topic, partition = changelog_topic(settings.app_id, table), place(key)
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[(topic, partition)] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            written += 1
        for (topic, partition), batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
        return written
    finally:
        await producer.stop()


async def probe_decision(settings: Settings, started: float) -> float:
    """Send one purchase of a restored user; seconds from ``started`` to its decision."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
        consumer_timeout_ms=5,
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        partitions = [
            TopicPartition(settings.topic_decisions, p) for p in range(settings.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        event_id = f"ev-restart-probe-{time.time_ns()}"
        probe = {
            "event_id": event_id,
            "user_id": PROBE_USER,
            "type": "purchase",
            "ts": START_MS + 86_400_000,
            "amount": 42.0,
            "currency": "EUR",
        }
        await producer.send_and_wait(
            settings.topic_events, orjson.dumps(probe), key=PROBE_USER.encode()
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for message in messages:
                    if orjson.loads(message.value).get("event_id") == event_id:
                        return time.perf_counter() - started
        raise TimeoutError("the probe event was not decided within 120 s")
    finally:
        await producer.stop()
        await consumer.stop()


def restored_records(log: str) -> int:
    """Changelog records the worker says it read back: its tables' (tasks.assigned lines)
    and its views' (views.loaded)."""
    tables = re.findall(r"tasks\.assigned .*?restored_records=(\d+)", log)
    views = re.findall(r"views\.loaded records=(\d+)", log)
    return sum(int(n) for n in tables + views)


def restart_time(
    settings: Settings, users: int, home: Path, signups: Iterable[bytes]
) -> dict[str, Any]:
    """Write ``users`` users' state (rows like those of ``signups``), start a worker, time
    it back to deciding."""
    written_started = time.perf_counter()
    written = asyncio.run(write_state(settings, users, signups))
    write_s = time.perf_counter() - written_started
    # First from the changelogs alone (a new machine); that worker's stop writes snapshots,
    # and the second start reads them (a restart that kept its volume).
    cold = _timed_start(settings, home / "restart-cold.log")
    warm = _timed_start(settings, home / "restart-warm.log")
    return {
        "users": users,
        "records_written": written,
        "write_s": round(write_s, 2),
        **{f"cold_{name}": value for name, value in cold.items()},
        **{f"warm_{name}": value for name, value in warm.items()},
    }


def _timed_start(settings: Settings, log_path: Path) -> dict[str, Any]:
    worker = WorkerProcess(settings, log_path)
    started = time.perf_counter()
    worker.start()
    try:
        worker.wait_ready(timeout_s=600)
        ready_s = time.perf_counter() - started
        decided_s = asyncio.run(probe_decision(settings, started))
    finally:
        worker.stop(timeout_s=120)  # it writes its snapshots on the way out
    return {
        "records_restored": restored_records(log_path.read_text(errors="replace")),
        "ready_s": round(ready_s, 2),
        "first_decision_s": round(decided_s, 2),
    }
