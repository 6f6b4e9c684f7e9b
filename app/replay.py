"""Offline replay: the same pipeline and engine as the worker, over a file, with no broker.

Each input line is one message value. Output is JSON lines of every record the
worker would publish (decisions, fraud alerts, dead letters), each with its
``kind``, in input order. Ledgers are split across ``partitions`` exactly as the
Kafka producer's default partitioner would place each user, so a replay spends
budgets the way the live stream would. For a given program, seed and input,
the output is byte-for-byte the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from app.contract.records import Event, SourcePosition
from app.decisioning.engine import Engine
from app.fraud.links import LinkFacts, LinkState
from app.fraud.signals import RelatedNote
from app.fraud.view import LinkView
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables

# Changed rows are encoded back into the tables once per this many lines, as the worker
# does once per batch (see app.pipeline.OpenRows); the output does not depend on it
# (tests/unit/test_replay.py). A replay has no changelog to write, so it encodes a row
# only to keep its tables compact: a user whose events fall in one batch is encoded once
# for all of them. On the bench's traffic (2,000 users), 10,000 lines a batch replayed
# 50,000 events in 7,963-8,376 events a CPU-second against 6,891-7,188 with 1,000, the
# output byte for byte the same (by hand, 2026-12-07, docs/decisions.md §51). What a
# batch holds decoded is at most one state per line of it (about 4 KB each).
BATCH_LINES = 10_000


# Keys whose partition a partitioner remembers: murmur2 in Python costs about 7 us a key,
# and the same users, devices and networks come back all the time.
PLACEMENT_CACHE = 100_000


def kafka_partitioner(partitions: int) -> Callable[[bytes], int]:
    """The partition the Kafka default partitioner gives a key (murmur2, positive, modulo)."""
    known: dict[bytes, int] = {}

    def place(key: bytes) -> int:
        partition = known.get(key)
        if partition is None:
            if len(known) >= PLACEMENT_CACHE:
                known.clear()
            partition = known[key] = (murmur2(key) & 0x7FFFFFFF) % partitions
        return partition

    return place


@dataclass
class ReplayCounts:
    lines: int = 0
    records: int = 0
    duplicates: int = 0


def replay(
    engine: Engine,
    lines: Iterable[bytes],
    *,
    source_name: str,
    max_event_bytes: int,
    counts: ReplayCounts | None = None,
    state_ttl_ms: int | None = None,
    shadow: Engine | None = None,
) -> Iterator[bytes]:
    """Yield each output record (JSON bytes) for each input line; with a ``shadow``
    engine, its decisions too (``kind: shadow_decision``), after the live records of
    the same line."""
    counts = counts if counts is not None else ReplayCounts()
    pipeline = Pipeline(
        engine,
        Metrics(CollectorRegistry()),
        max_event_bytes=max_event_bytes,
        partitioner=kafka_partitioner(engine.partitions),
        state_ttl_ms=state_ttl_ms,
        shadow=shadow,
    )
    tables = Tables(users={}, ledgers={}, partitions=engine.partitions)
    for number, line in enumerate(lines):
        counts.lines += 1
        position = SourcePosition(source_name, 0, number)
        outputs = pipeline.handle(tables, position, line, flush=number % BATCH_LINES == 0)
        counts.duplicates += not outputs
        for output in outputs:
            counts.records += 1
            yield output.value


def replay_decide_log(
    engine: Engine,
    records: Iterable[
        tuple[int, bytes, tuple[LinkFacts, ...]]
        | tuple[int, bytes, tuple[LinkFacts, ...], tuple[RelatedNote, ...]]
    ],
    *,
    max_event_bytes: int,
    state_ttl_ms: int | None = None,
    shadow: Engine | None = None,
) -> Iterator[bytes]:
    """The decide stage alone over what it read: ``(partition, event, links[, related])``
    for each event in the order its partition decided it, with the link facts and the
    related-account notes its decision recorded (the decision's ``links`` and
    ``related``).

    A live decision depends on the order in which users' events met in their
    partition, on what the link view showed at that moment, and on the notes of
    other users' alerts that had reached the user; the first is in the partition's
    log and the others in the decision. Replaying them reproduces the worker's
    decisions byte for byte: this is the audit path. With the worker's ``shadow``
    engine, the shadow's decisions too.
    """
    pipeline = Pipeline(
        engine,
        Metrics(CollectorRegistry()),
        max_event_bytes=max_event_bytes,
        state_ttl_ms=state_ttl_ms,
        shadow=shadow,
    )
    tables = Tables(users={}, ledgers={}, partitions=engine.partitions)
    for number, (partition, value, links, *rest) in enumerate(records):
        position = SourcePosition("events", partition, -1)
        notes: tuple[RelatedNote, ...] = rest[0] if rest else ()
        if notes:
            # Each note reached the user's partition before this event, as in the worker.
            user_key = str(orjson.loads(value)["user_id"]).encode()
            for note in notes:
                pipeline.related(tables, user_key, note.to_json(), position)
        view = RecordedLinks(links)
        for output in pipeline.decide(tables, partition, position, value, view):
            if output.role not in ("links", "rekeyed"):
                yield output.value
        if number % BATCH_LINES == 0:
            pipeline.flush(tables)


class RecordedLinks(LinkView):
    """A view that shows the link facts a decision recorded, whatever the event."""

    def __init__(self, links: tuple[LinkFacts, ...]) -> None:
        super().__init__(lambda key: LinkState())
        self.links = links

    def facts(self, event: Event) -> tuple[LinkFacts, ...]:
        return self.links
