"""Plain aiokafka clients for the CLI, the demo and the tests: create topics, produce, read.

The worker itself runs in ``streams/``; these helpers are the outside
world's view of the engine: a producer writing events and a consumer reading
decisions, alerts and dead letters.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context

from app.settings import Settings

TOPIC_ALREADY_EXISTS = 36
# DescribeConfigs: a value set on the topic itself (not a broker default or a synonym).
DYNAMIC_TOPIC_CONFIG = 1
# Connection options for aiokafka clients (security protocol, SASL, TLS), from settings.
ClientOptions = Mapping[str, Any]


def client_options(settings: Settings) -> dict[str, Any]:
    """How every client of the engine authenticates and encrypts, as aiokafka arguments."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL_"):
        options |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password,
        }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile or None,
            certfile=settings.ssl_certfile or None,
            keyfile=settings.ssl_keyfile or None,
        )
    return options


class TopicError(RuntimeError):
    """A topic could not be created, or exists with the wrong shape."""


@dataclass(frozen=True)
class TopicRequest:
    name: str
    partitions: int
    replication_factor: int
    compacted: bool = False
    # Topic configs the engine needs (retention, compaction bounds); cleanup.policy follows
    # ``compacted``.
    configs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def all_configs(self) -> dict[str, str]:
        return {"cleanup.policy": "compact" if self.compacted else "delete", **self.configs}


async def ensure_topics(
    bootstrap_servers: str, wanted: Sequence[TopicRequest], *, client: ClientOptions | None = None
) -> dict[str, str]:
    """Create missing topics; check existing ones have the wanted partition count and set
    the configs the engine needs on them (keeping any other config set on the topic).

    Returns topic name -> "created", "exists" or "updated" (its configs were changed).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client or {}))
    await admin.start()
    try:
        requests = [
            NewTopic(
                t.name,
                t.partitions,
                t.replication_factor,
                topic_configs=t.all_configs(),
            )
            for t in wanted
        ]
        response = await admin.create_topics(requests)
        result: dict[str, str] = {}
        for name, code, message in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise TopicError(f"could not create topic {name!r}: {message} (error {code})")
            result[name] = "created" if code == 0 else "exists"
        await _check_partitions(admin, wanted)
        existing = [t for t in wanted if result[t.name] == "exists"]
        for name in await _align_configs(admin, existing):
            result[name] = "updated"
        return result
    finally:
        await admin.close()


async def _align_configs(admin: AIOKafkaAdminClient, wanted: Sequence[TopicRequest]) -> list[str]:
    """Set each topic's wanted configs where they differ; return the topics changed.

    AlterConfigs replaces a topic's whole set of configs, so the configs an operator set
    on the topic (min.insync.replicas, say) are read first and sent back with ours.
    """
    if not wanted:
        return []
    current = {
        name: {entry[0]: entry[1] for entry in entries if _set_on_topic(entry[3], entry[1])}
        for name, entries in (await _described(admin, [t.name for t in wanted])).items()
    }
    changes = []
    for topic in wanted:
        have = current.get(topic.name, {})
        want = topic.all_configs()
        if any(have.get(key) != value for key, value in want.items()):
            changes.append(ConfigResource(ConfigResourceType.TOPIC, topic.name, {**have, **want}))
    if not changes:
        return []
    for response in await admin.alter_configs(changes):
        for error_code, message, _, name in response.resources:
            if error_code:
                raise TopicError(f"could not set the configs of {name!r}: {message}")
    return [change.name for change in changes]


async def message_limits(
    bootstrap_servers: str, names: Sequence[str], *, client: ClientOptions | None = None
) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker applies it (the topic's own value,
    else the broker's default): the largest record batch it accepts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client or {}))
    await admin.start()
    try:
        return {
            name: int(entry[1])
            for name, entries in (await _described(admin, names)).items()
            for entry in entries
            if entry[0] == "max.message.bytes" and entry[1] is not None
        }
    finally:
        await admin.close()


async def _described(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, list[Any]]:
    """Each topic's described config entries (name, value, read-only, source, ...)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    described: dict[str, list[Any]] = {}
    for response in await admin.describe_configs(resources):
        for error_code, message, _, name, entries in response.resources:
            if error_code:
                raise TopicError(f"could not read the configs of {name!r}: {message}")
            described[name] = list(entries)
    return described


def _set_on_topic(source: int | bool, value: str | None) -> bool:
    """Whether a described config was set on the topic itself (version 0 of the answer
    says only whether it is a default)."""
    if value is None:
        return False
    if isinstance(source, bool):
        return not source
    return source == DYNAMIC_TOPIC_CONFIG


async def _check_partitions(
    admin: AIOKafkaAdminClient, wanted: Sequence[TopicRequest], *, timeout_s: float = 30.0
) -> None:
    actual = await _partition_counts(admin, [t.name for t in wanted], timeout_s=timeout_s)
    for topic in wanted:
        if actual.get(topic.name) != topic.partitions:
            raise TopicError(
                f"topic {topic.name!r} has {actual.get(topic.name)} partitions but the settings "
                f"say {topic.partitions} (REWARDSTREAM_PARTITIONS); state is partitioned like "
                f"the events topic, so they must agree"
            )


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], *, timeout_s: float
) -> dict[str, int]:
    """Partitions per topic, waiting while a topic just created is not fully visible yet.

    A topic created a moment ago can be described with no partitions (or as unknown)
    until the broker's metadata catches up; that is not a mismatch.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        actual = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
        settled = all(actual.get(name, 0) > 0 for name in names)
        if settled or loop.time() >= deadline:
            return actual
        await asyncio.sleep(0.2)


async def _partition_ids(
    bootstrap_servers: str, topic: str, client: ClientOptions | None = None
) -> list[int]:
    """The partitions of ``topic``, or none if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client or {}))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        return []
    return sorted(p["partition"] for p in described["partitions"])


async def seek_to_first(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """Position ``partitions`` (assigned to ``consumer``) at their first offsets; return them.

    An explicit seek, not ``seek_to_beginning``: that only asks for a reset, and a reset
    the fetcher started on its own after ``assign`` (to the consumer's default, the end)
    can answer after it and win. A restore positioned at the end reads nothing.
    """
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(list(partitions))
    for tp in partitions:
        consumer.seek(tp, starts[tp])
    return starts


def user_key(line: bytes, key_field: str = "user_id") -> bytes | None:
    """The Kafka key for one JSON line: its ``user_id``, or None if it has none."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    value = document.get(key_field) if isinstance(document, dict) else None
    return value.encode() if isinstance(value, str) else None


def event_routes(settings: Settings) -> dict[str, str]:
    """The topic of each control event type; every other event goes to ``events``."""
    return {
        "fraud_label": settings.topic_fraud_labels,
        "consent_updated": settings.topic_consent,
        "member_imported": settings.topic_members,
        "erasure_requested": settings.topic_erasure_requests,
    }


def route(value: bytes, topic: str, routes: Mapping[str, str]) -> str:
    """The topic ``value`` goes to: its type's route, else ``topic``."""
    if not routes:
        return topic
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return topic
    kind = document.get("type") if isinstance(document, dict) else None
    return routes.get(kind, topic) if isinstance(kind, str) else topic


async def produce(
    bootstrap_servers: str,
    topic: str,
    values: Iterable[bytes],
    *,
    key_field: str = "user_id",
    client: ClientOptions | None = None,
    routes: Mapping[str, str] | None = None,
) -> int:
    """Send each value (as-is, valid or not) keyed by its user id, to ``topic`` or, for an
    event type in ``routes``, to that type's topic; return how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all", **(client or {})
    )
    await producer.start()
    count = 0
    try:
        for value in values:
            target = route(value, topic, routes or {})
            await producer.send(target, value, key=user_key(value, key_field))
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


@dataclass(frozen=True)
class Received:
    """One record read back from an output topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int

    def document(self) -> dict[str, object]:
        parsed: dict[str, object] = orjson.loads(self.value)
        return parsed


async def read(
    bootstrap_servers: str,
    topics: Sequence[str],
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = 5.0,
    max_records: int | None = None,
    client: ClientOptions | None = None,
) -> AsyncGenerator[Received, None]:
    """Read ``topics`` without a consumer group until idle for ``idle_timeout_s``.

    ``idle_timeout_s=None`` reads forever (``tail --follow``).
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        # Only what a worker committed: with exactly-once delivery, records of a
        # transaction that was aborted (a killed worker's) are never read.
        isolation_level="read_committed",
        **(client or {}),
    )
    await consumer.start()
    seen = 0
    loop = asyncio.get_running_loop()
    last_record_at = loop.time()
    try:
        while max_records is None or seen < max_records:
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if idle_timeout_s is not None and loop.time() - last_record_at > idle_timeout_s:
                    return
                continue
            last_record_at = loop.time()
            for messages in batch.values():
                for message in messages:
                    yield Received(
                        message.topic,
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                        message.timestamp,
                    )
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return
    finally:
        await consumer.stop()


def topic_requests(settings: Settings) -> list[TopicRequest]:
    """The topics of the engine as creation requests."""
    from topologies import topic_specs  # the topology is the one place topics are declared

    return [
        TopicRequest(
            spec.name, spec.partitions, spec.replication_factor, spec.compacted, spec.configs
        )
        for spec in topic_specs(settings)
    ]


async def latest_by_key(
    bootstrap_servers: str, topic: str, key: bytes, *, client: ClientOptions | None = None
) -> bytes | None:
    """The newest value under ``key`` in ``topic``, read from the start to the current end."""
    ids = await _partition_ids(bootstrap_servers, topic, client)
    partitions = [TopicPartition(topic, p) for p in ids]
    if not partitions:
        return None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **(client or {}),
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await seek_to_first(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        latest = None
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    if message.key == key:
                        latest = message.value
        return latest
    finally:
        await consumer.stop()
