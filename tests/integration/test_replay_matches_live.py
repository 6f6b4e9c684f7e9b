"""Offline replay and the live worker are the same engine: same input log, same decisions.

The decide stage reads ``events`` (and ``rekeyed``, for events stored on another
partition than their user's: none here, as every event is keyed by its user_id
and placed by Kafka's default partitioner, as the worker places users). A live
decision depends on the order in which users' events met in their partition,
which is that partition's offset order, and on what the link view showed at that
moment, which the decision records (``links``), and on the notes other users'
alerts sent it (``related``: the farm below names its first accounts).
Replaying each partition's events with those must give every live decision (ids,
rewards, budgets left per partition, propensities, reasons, facts, sentences)
byte for byte, however far the view trailed the link stage. Without outcome
events nothing is learned, so how partitions interleave cannot matter.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import aclosing

import orjson
import pytest

from app.assembly import build_engine
from app.contract.records import Event, decision_id_for
from app.fraud import LinkFacts, LinkState, link_keys
from app.fraud.links import network_of
from app.fraud.signals import RelatedNote
from app.kafkaio import Received, event_routes, produce, read
from app.pipeline import CONTROL_TYPES
from app.replay import kafka_partitioner, replay_decide_log
from app.settings import Settings
from harness.simulation import EventSimulator, SimulatorConfig
from harness.workerproc import WorkerProcess
from topologies.rewards import TABLE_LINK_STATE, changelog_topic

pytestmark = pytest.mark.kafka


def shared_device(start_ms: int) -> list[bytes]:
    """Six accounts sign up on one phone and one network within minutes: their decisions
    depend on what the view (and the worker's overlay) showed of the others."""
    return [
        orjson.dumps(
            {
                "event_id": f"farm-{n}",
                "user_id": f"farm-user-{n}",
                "type": "signup",
                "ts": start_ms + n * 30_000,
                "device_id": "dev-farm",
                "ip": f"198.51.100.{n + 1}",
            }
        )
        for n in range(6)
    ]


async def read_all(settings: Settings, topic: str, idle_timeout_s: float = 3.0) -> list[Received]:
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, [topic], idle_timeout_s=idle_timeout_s)
    async with aclosing(records):
        return [record async for record in records]


async def test_replay_reproduces_the_live_decisions(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    # A day of traffic (event time), so accounts get past the program's pending period.
    simulator = EventSimulator(
        SimulatorConfig(users=40, seed=21, program=kafka_settings.program, events_per_second=0.004)
    )
    lines: list[bytes] = []
    while len(lines) < 400:
        line = simulator.next_message()
        kind = orjson.loads(line)["type"]
        # Control events come from topics of their own: how they met a partition's other
        # events is in no one log, so the audit path covers the events topic alone.
        if not kind.startswith("reward_") and kind not in CONTROL_TYPES:
            lines.append(line)
    lines[200:200] = shared_device(simulator.config.start_ms + 200 * 250_000)
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        lines,
        routes=event_routes(kafka_settings),
    )
    live: dict[str, bytes] = {}
    # read() is an async generator, closed here (so its consumer stops).
    records = read(
        kafka_settings.bootstrap_servers, [kafka_settings.topic_decisions], idle_timeout_s=20.0
    )
    async with aclosing(records):
        async for record in records:
            live[orjson.loads(record.value)["decision_id"]] = record.value
            if len(live) == len(lines):
                break
    assert len(live) == len(lines)

    # What each partition decided, in its order: every event was stored on its user's
    # partition (the worker's placement), so none was rekeyed; the rekeyed topic holds
    # only the notes the farm's alerts sent to the accounts they named.
    topics = kafka_settings.topic_names()
    rekeyed = await read_all(kafka_settings, topics["rekeyed"])
    assert all(b'"alert_id"' in record.value for record in rekeyed)
    events = await read_all(kafka_settings, kafka_settings.topic_events)
    assert len(events) == len(lines)
    events.sort(key=lambda record: (record.partition, record.offset))
    place = kafka_partitioner(kafka_settings.partitions)
    engine = build_engine(kafka_settings)
    log: list[tuple[int, bytes, tuple[LinkFacts, ...], tuple[RelatedNote, ...]]] = []
    for record in events:
        event = orjson.loads(record.value)
        assert record.partition == place(event["user_id"].encode())
        decision = orjson.loads(
            live[decision_id_for(engine.program.id, event["user_id"], event["event_id"])]
        )
        facts = tuple(LinkFacts.from_document(document) for document in decision["links"])
        notes = tuple(RelatedNote(**document) for document in decision["related"])
        log.append((record.partition, record.value, facts, notes))
    offline = {
        orjson.loads(value)["decision_id"]: value
        for value in replay_decide_log(
            engine,
            log,
            max_event_bytes=kafka_settings.max_event_bytes,
            state_ttl_ms=kafka_settings.state_ttl_ms,
        )
        if b'"kind":"decision"' in value
    }
    differing = sorted(k for k in live if live[k] != offline.get(k))
    first = differing[0] if differing else None
    assert not differing, (
        f"{len(differing)} decisions differ; first, live then offline:\n"
        f"{live.get(first or '')!r}\n{offline.get(first or '')!r}"
    )
    decided = [orjson.loads(v) for v in live.values()]
    assert any(d["status"] == "granted" for d in decided), (
        "the comparison must include rewards, not only refusals"
    )
    # ...and decisions given facts about other accounts, not only about the user alone.
    farm = [d for d in decided if d["user_id"].startswith("farm-user-")]
    assert max(d["links"][0]["accounts_24h"] for d in farm) > 1

    # The worker sent each decided event on to its device and its network, and the link
    # stage kept what each saw in the link-state table (its changelog feeds every view).
    hops = await read_all(kafka_settings, topics["links"])
    wanted = {
        (key, orjson.loads(line)["event_id"]) for line in lines for _, key in link_keys_of(line)
    }
    assert {(hop.key, orjson.loads(hop.value)["event_id"]) for hop in hops} == wanted
    changelog = changelog_topic(kafka_settings.app_id, TABLE_LINK_STATE)
    latest: dict[bytes, bytes] = {}
    for row in await read_all(kafka_settings, changelog):
        if row.key is not None:
            latest[row.key] = row.value
    users_of: dict[bytes, set[str]] = defaultdict(set)
    for line in lines:
        for _, key in link_keys_of(line):
            users_of[key].add(orjson.loads(line)["user_id"])
    assert set(latest) == set(users_of)
    device = LinkState.from_bytes(latest[b"device:dev-farm"])
    assert {seen.user_id for seen in device.accounts} == users_of[b"device:dev-farm"]
    network = b"net:" + network_of("198.51.100.1").encode()
    assert {f"farm-user-{n}" for n in range(6)} <= {
        seen.user_id for seen in LinkState.from_bytes(latest[network]).accounts
    }


def link_keys_of(line: bytes) -> tuple[tuple[str, bytes], ...]:
    document = orjson.loads(line)
    return link_keys(Event.from_document(document, 0))
