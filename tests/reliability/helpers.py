"""What every fault test does: build a stream, produce it at a pace, read back and audit."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.decisioning.ledger import Ledger
from app.features.state import UserState
from app.kafkaio import read, user_key
from app.settings import Settings
from app.simulation import EventSimulator, SimulatorConfig
from topologies import TABLE_LEDGER, TABLE_USER_STATE, changelog_topic


def simulated_stream(settings: Settings, *, events: int, users: int, seed: int) -> list[bytes]:
    """``events`` simulated user events (no answers to rewards: those need live decisions)."""
    simulator = EventSimulator(
        SimulatorConfig(users=users, seed=seed, program=settings.program, events_per_second=0.02)
    )
    lines: list[bytes] = []
    while len(lines) < events:
        line = simulator.next_message()
        if not orjson.loads(line)["type"].startswith("reward_"):
            lines.append(line)
    return lines


async def produce_paced(
    bootstrap_servers: str, topic: str, lines: list[bytes], *, per_second: float
) -> None:
    """Send ``lines`` keyed by user at about ``per_second``, so faults land mid-stream."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        chunk = max(1, int(per_second / 10))
        for start in range(0, len(lines), chunk):
            for line in lines[start : start + chunk]:
                await producer.send(topic, line, key=user_key(line))
            await asyncio.sleep(chunk / per_second)
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Audit:
    """What consumers saw, read back with read_committed."""

    decisions: dict[str, dict[str, object]] = field(default_factory=dict)
    copies: Counter[str] = field(default_factory=Counter)

    @property
    def granted_cost(self) -> float:
        return sum(
            float(str(d["cost"])) for d in self.decisions.values() if d["status"] == "granted"
        )


async def read_decisions(settings: Settings, *, expected: int, idle_s: float = 30.0) -> Audit:
    audit = Audit()
    records = read(settings.bootstrap_servers, [settings.topic_decisions], idle_timeout_s=idle_s)
    async with aclosing(records):
        async for record in records:
            document = orjson.loads(record.value)
            audit.decisions.setdefault(document["decision_id"], document)
            audit.copies[document["decision_id"]] += 1
    return audit


async def latest_state(settings: Settings, table: str) -> dict[bytes, bytes]:
    """The newest committed value per key of ``table``'s changelog."""
    latest: dict[bytes, bytes] = {}
    topic = changelog_topic(settings.app_id, table)
    async for record in read(settings.bootstrap_servers, [topic], idle_timeout_s=5.0):
        if record.key is None:
            continue
        if record.value:
            latest[record.key] = record.value
        else:
            latest.pop(record.key, None)
    return latest


async def assert_exactly_once(settings: Settings, lines: list[bytes]) -> Audit:
    """The promise of docs/reliability.md, checked against what Kafka holds.

    One decision per event, each published once; every user's state counted each
    of the user's events once; the ledgers spent exactly what the granted decisions cost.
    """
    documents = [orjson.loads(line) for line in lines]
    expected = {d["event_id"] for d in documents}
    audit = await read_decisions(settings, expected=len(expected))

    decided = {str(d["event_id"]) for d in audit.decisions.values()}
    assert decided == expected, f"{len(expected - decided)} events never decided"
    twice = {k: n for k, n in audit.copies.items() if n > 1}
    assert not twice, f"{len(twice)} decisions published more than once"

    per_user = Counter(str(d["user_id"]) for d in documents)
    users = await latest_state(settings, TABLE_USER_STATE)
    counted = {key.decode(): UserState.from_bytes(value).events for key, value in users.items()}
    miscounted = {u: (counted.get(u), n) for u, n in per_user.items() if counted.get(u) != n}
    assert not miscounted, f"users whose state miscounted their events: {miscounted}"

    ledgers = await latest_state(settings, TABLE_LEDGER)
    spent = sum(Ledger.from_bytes(value).spent_total for value in ledgers.values())
    assert spent == pytest.approx(audit.granted_cost, abs=1e-6)
    return audit
