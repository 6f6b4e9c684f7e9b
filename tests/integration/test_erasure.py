"""Erasure through the CLI on the real broker: `rewardstream erase` gets its receipt from a
running worker and the user's row is gone from the changelog while the others stay;
`topics create` sets the erasure bound on existing topics and keeps what an operator set.
(The byte-for-byte scan after the bound is tests/privacy.)"""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.erasure import receipt_subject
from app.settings import Settings
from harness.workerproc import WorkerProcess
from tests.integration.test_cli import cli
from tests.reliability.helpers import latest_state
from topologies.rewards import TABLE_USER_STATE, erasure_configs

pytestmark = pytest.mark.kafka

NOW = 1_769_860_800_000


def _event(user: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{user}-{n}",
            "user_id": user,
            "type": "page_view",
            "ts": NOW + n,
            "device_id": f"device-of-{user}",
            "ip": "198.51.100.20",
        }
    )


def test_erase_prints_the_receipt_and_the_user_is_gone_from_the_changelog(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    lines = [_event("u-forget-me", 1), _event("u-stays", 2), _event("u-forget-me", 3)]
    produced = cli(kafka_settings, "produce", "-", stdin=b"\n".join(lines) + b"\n")
    assert produced.returncode == 0, produced.stderr.decode()
    decided = cli(kafka_settings, "tail", "decisions", "--jsonl", "--max", "3", "--idle", "30")
    assert len(decided.stdout.splitlines()) == 3

    erased = cli(
        kafka_settings, "erase", "--user", "u-forget-me", "--request-id", "req-1", "--wait", "60"
    )
    assert erased.returncode == 0, erased.stderr.decode()
    receipt = orjson.loads(erased.stdout)
    assert receipt["request_id"] == "req-1"
    assert receipt["subject"] == receipt_subject("u-forget-me", kafka_settings.app_id)
    assert receipt["removed"]["user_state"] is True
    assert b"u-forget-me" not in erased.stdout

    rows = asyncio.run(latest_state(kafka_settings, TABLE_USER_STATE))
    assert b"u-forget-me" not in rows
    assert b"u-stays" in rows

    shown = cli(kafka_settings, "tail", "erasures", "--jsonl", "--max", "1", "--idle", "30")
    assert orjson.loads(shown.stdout)["request_id"] == "req-1"


def test_erase_without_a_worker_says_the_request_waits(kafka_settings: Settings) -> None:
    created = cli(kafka_settings, "topics", "create")
    assert created.returncode == 0, created.stderr.decode()
    result = cli(kafka_settings, "erase", "--user", "u-1", "--wait", "2")
    assert result.returncode == 1
    assert b"No receipt within 2 s: is a worker running?" in result.stderr


async def _configs(settings: Settings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        (response,) = await admin.describe_configs([resource])
        (_, _, _, _, entries) = response.resources[0]
        return {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()


async def _alter(settings: Settings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


def test_topics_create_sets_the_bound_on_existing_topics_and_keeps_other_configs(
    kafka_settings: Settings,
) -> None:
    settings = dataclasses.replace(kafka_settings, erasure_bound_s=86_400)
    first = cli(settings, "topics", "create")
    assert first.returncode == 0, first.stderr.decode()
    wanted = erasure_configs(86_400_000, compacted=False)
    topic = settings.topic_decisions
    assert {k: asyncio.run(_configs(settings, topic))[k] for k in wanted} == wanted

    # An operator sets a config of their own, and someone loosens retention by hand.
    asyncio.run(_alter(settings, topic, {"max.message.bytes": "2000000", "retention.ms": "1"}))
    again = cli(settings, "topics", "create")
    assert again.returncode == 0, again.stderr.decode()
    line = next(x for x in again.stdout.decode().splitlines() if x.startswith(topic + " "))
    assert line.endswith("updated")
    now = asyncio.run(_configs(settings, topic))
    assert {k: now[k] for k in wanted} == wanted
    assert now["max.message.bytes"] == "2000000"
    third = cli(settings, "topics", "create")
    assert b"updated" not in third.stdout  # nothing left to change
