"""The seam between the runtime and Kafka: every client the runtime uses is made here.

The worker uses :class:`KafkaClients` (aiokafka). The runtime's unit tests pass
a fake with the same methods, so rebalances mid-commit, aborts and recoveries
run in milliseconds without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

# Retry backoff of the transactional producers: the broker refuses to add partitions to
# a transaction while the previous commit of the same producer is still completing, and
# the producer retries after this backoff (aiokafka's 100 ms default was most of the
# latency).
TRANSACTION_RETRY_BACKOFF_MS = 10
# How long aiokafka's background fetcher sleeps when nothing wakes it (its default, 200 ms,
# once added up to 200 ms to a hop); each wake-up walks every assigned partition, so 10 ms
# cost an idle worker about 4% of a core more than this.
FETCHER_IDLE_MS = 50


class Clients(Protocol):
    def group_consumer(self, group_id: str) -> Any: ...
    def reader(self) -> Any: ...
    def producer(self, transactional_id: str | None) -> Any: ...


class KafkaClients:
    """aiokafka clients for one worker, with the deployment's connection options."""

    def __init__(
        self,
        bootstrap_servers: str,
        options: Mapping[str, Any],
        *,
        fetch_max_wait_ms: int,
        linger_ms: int,
    ) -> None:
        self.common = {"bootstrap_servers": bootstrap_servers, **options}
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms

    def group_consumer(self, group_id: str) -> AIOKafkaConsumer:
        """The consumer of every stage's inputs. The range assignor gives one member the
        same partition numbers of every input topic (they have as many partitions): the
        partitions of one task (streams.task) never part."""
        return AIOKafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            consumer_timeout_ms=FETCHER_IDLE_MS,
            **self.common,
        )

    def reader(self) -> AIOKafkaConsumer:
        """A consumer with no group, for restores and views: committed records only."""
        return AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # if compaction removes the start mid-read
            isolation_level="read_committed",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            consumer_timeout_ms=FETCHER_IDLE_MS,
            **self.common,
        )

    def producer(self, transactional_id: str | None) -> AIOKafkaProducer:
        """A transactional producer with ``transactional_id``, or (None) a plain idempotent one."""
        if transactional_id is None:
            return AIOKafkaProducer(
                acks="all", enable_idempotence=True, linger_ms=self.linger_ms, **self.common
            )
        return AIOKafkaProducer(
            transactional_id=transactional_id,
            linger_ms=self.linger_ms,
            retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
            **self.common,
        )
