"""Events produced to a real Kafka broker come out as decisions and dead letters, each traceable.

The worker runs as its own process, exactly as deployed; the test is only a
producer and a consumer of the engine's topics.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from contextlib import aclosing
from typing import Any

import fastjsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.contract import decision_id_for
from app.contract.schemas import load_schema
from app.kafkaio import Received, event_routes, produce, read
from app.settings import Settings
from harness.bench.throughput import link_records as link_records_in
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from topologies import TABLE_USER_STATE, changelog_topic

pytestmark = pytest.mark.kafka

check = {name: fastjsonschema.compile(load_schema(name)) for name in ("decision", "dead_letter")}

MALFORMED = [
    b'{"event_id": "bad-1", "user_id": "u-x", "type": "signup"',  # truncated JSON
    b"[1, 2, 3]",  # not an object
    b'{"event_id": "bad-3", "type": "signup", "ts": 1772366400000}',  # no user_id
    b'{"event_id": "bad-4", "user_id": "u-x", "type": "teleport", "ts": 1772366400000}',
    b'{"event_id": "bad-5", "user_id": "u-x", "type": "purchase", "ts": 1772366400000,'
    b' "amount": "ten", "currency": "EUR"}',
    b'{"event_id": "bad-6", "user_id": "u-x", "type": "signup", "ts": "tomorrow"}',
    b"\xff\xfe\x00garbage",
    b"",
    orjson.dumps(
        {
            "event_id": "bad-9",
            "user_id": "u-x",
            "type": "signup",
            "ts": 1772366400000,
            "attributes": {f"k{i}": "x" * 1024 for i in range(64)},
        }
    ),
]


async def outputs(settings: Settings, *, expected: int) -> list[Received]:
    """Everything on the output topics: read until ``expected`` arrived and then quiet for 5 s."""
    topics = [settings.topic_decisions, settings.topic_fraud_alerts, settings.topic_dead_letter]
    got: list[Received] = []
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, topics, idle_timeout_s=30.0)
    async with aclosing(records):
        async for record in records:
            got.append(record)
            if len(got) >= expected:
                break
    async for record in read(settings.bootstrap_servers, topics, idle_timeout_s=5.0):
        if record not in got:
            got.append(record)
    return got


def link_records(
    worker: WorkerProcess, *, since: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float]:
    """The worker's link records (sent, handled) so far, less ``since``."""
    sent, handled = link_records_in(worker.get("/metrics")[1].decode())
    return sent - since[0], handled - since[1]


async def test_valid_events_become_decisions_and_invalid_ones_dead_letters(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    simulator = EventSimulator(SimulatorConfig(users=50, seed=11, program=kafka_settings.program))
    valid = [simulator.next_message() for _ in range(300)]
    links_before = link_records(worker)
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        valid + MALFORMED,
        routes=event_routes(kafka_settings),
    )

    received = await outputs(kafka_settings, expected=len(valid) + len(MALFORMED))
    by_topic = Counter(r.topic for r in received)
    assert by_topic[kafka_settings.topic_decisions] == len(valid)
    assert by_topic[kafka_settings.topic_dead_letter] == len(MALFORMED)

    produced = {orjson.loads(v)["event_id"]: orjson.loads(v) for v in valid}
    decisions = [r.document() for r in received if r.topic == kafka_settings.topic_decisions]
    assert {d["event_id"] for d in decisions} == set(produced)
    for decision in decisions:
        check["decision"](decision)
        event = produced[decision["event_id"]]
        assert decision["user_id"] == event["user_id"]
        assert decision["decision_id"] == decision_id_for(
            kafka_settings.program, event["user_id"], event["event_id"]
        )
    # Each decided event went on to its device and its network, and the worker's link
    # stage handled every copy (what `rewardstream bench` waits for to end a drain).
    copies = sum(("device_id" in e) + ("ip" in e) for e in produced.values())
    deadline = time.monotonic() + 30
    while (moved := link_records(worker, since=links_before)) != (copies, copies):
        assert time.monotonic() < deadline, f"link records (sent, handled): {moved}"
        await asyncio.sleep(0.2)


async def test_each_dead_letter_points_at_its_original_message(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        MALFORMED,
        routes=event_routes(kafka_settings),
    )
    received = await outputs(kafka_settings, expected=len(MALFORMED))
    dead: list[dict[str, Any]] = [
        r.document() for r in received if r.topic == kafka_settings.topic_dead_letter
    ]
    assert len(dead) == len(received) == len(MALFORMED)

    originals = {
        (r.partition, r.offset): r.value
        async for r in read(
            kafka_settings.bootstrap_servers, [kafka_settings.topic_events], idle_timeout_s=3.0
        )
    }
    for record in dead:
        check["dead_letter"](record)
        source = record["source"]
        assert source["topic"] == kafka_settings.topic_events
        assert (
            base64.b64decode(record["payload_base64"])
            == originals[(source["partition"], source["offset"])]
        )
    reasons = Counter(d["reason"] for d in dead)
    assert reasons == Counter(
        {
            "schema": 3,
            "bad_json": 1,
            "not_an_object": 1,
            "bad_timestamp": 1,
            "bad_encoding": 1,
            "empty": 1,
            "oversized": 1,
        }
    )


async def test_unkeyed_and_repeated_events_still_yield_exactly_one_decision_each(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    event = {"event_id": "e-once", "user_id": "u-key", "type": "signup", "ts": 1772366400000}
    raw = orjson.dumps(event)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(kafka_settings.topic_events, raw, key=None)  # no key
        await producer.send_and_wait(kafka_settings.topic_events, raw, key=b"u-key")
        await producer.send_and_wait(kafka_settings.topic_events, raw, key=b"u-key")
    finally:
        await producer.stop()

    received = await outputs(kafka_settings, expected=3)
    decisions = [r for r in received if r.topic == kafka_settings.topic_decisions]
    alerts = [r.document() for r in received if r.topic == kafka_settings.topic_fraud_alerts]
    assert [r.document()["event_id"] for r in decisions] == ["e-once"]
    assert decisions[0].key == b"u-key"
    # Each repeat is reported (same bytes: a retry or a replay, an analyst decides).
    assert [(a["event_id"], a["reasons"]) for a in alerts] == [("e-once", ["event.replayed"])] * 2
    metrics = worker.get("/metrics")[1].decode()
    assert "rewardstream_rekeyed_events_total 1.0" in metrics
    assert "rewardstream_duplicate_events_total 2.0" in metrics


async def test_worker_keeps_deciding_after_hostile_input(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    hostile = [b"{" * 100_000, b"\x00" * 70_000, b'{"a":' * 3000, b"null", b"1e999"] * 4
    after = orjson.dumps(
        {"event_id": "after", "user_id": "u-z", "type": "page_view", "ts": "2026-03-01T12:00:00Z"}
    )
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        [*hostile, after],
        routes=event_routes(kafka_settings),
    )
    received = await outputs(kafka_settings, expected=len(hostile) + 1)
    decisions = [r.document() for r in received if r.topic == kafka_settings.topic_decisions]
    assert [d["event_id"] for d in decisions] == ["after"]
    assert len(received) == len(hostile) + 1
    assert worker.get("/health")[0] == 200


@pytest.mark.parametrize("count", [12, 120], ids=["12x60KB", "120x60KB"])
async def test_a_user_sending_many_large_valid_events_is_decided_and_its_row_stays_small(
    kafka_settings: Settings, worker: WorkerProcess, count: int
) -> None:
    """Valid events of about 60 KB each (just under the 64 KiB limit) for one user, with a
    device and an address: each is decided, and nothing the worker stores or sends grows
    with them (the user's row keeps what it needs of an event, never the event)."""
    user = f"u-big-{count}"
    lines = []
    for n in range(count):
        kind = {"type": "signup"} if n == 0 else {"type": "page_view"}
        document = {
            "event_id": f"big-{count}-{n}",
            "user_id": user,
            "ts": 1772366400000 + n * 1000,
            "device_id": "dev-big",
            "ip": "198.51.100.7",
            "attributes": {f"k{i}": "x" * 1010 for i in range(59)},
        } | kind
        lines.append(orjson.dumps(document))
    assert all(60_000 < len(line) < 65_536 for line in lines)
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        lines,
        routes=event_routes(kafka_settings),
    )
    received = await outputs(kafka_settings, expected=count)
    decided: list[dict[str, Any]] = [
        r.document() for r in received if r.topic == kafka_settings.topic_decisions
    ]
    assert sorted(d["event_id"] for d in decided) == sorted(
        f"big-{count}-{n}" for n in range(count)
    )
    assert not [r for r in received if r.topic == kafka_settings.topic_dead_letter]
    assert worker.process is not None
    assert worker.process.poll() is None
    # The largest record the worker wrote for this user anywhere: its state row.
    changelog = changelog_topic(kafka_settings.app_id, TABLE_USER_STATE)
    sizes = [
        len(record.value or b"")
        async for record in read(kafka_settings.bootstrap_servers, [changelog], idle_timeout_s=3.0)
        if record.key == user.encode()
    ]
    assert sizes
    assert max(sizes) < 8 * 1024
