"""What a topology declares to the runtime: stages, their inputs and tables, and views.

The runtime moves bytes; a topology says where they go. A :class:`Stage` reads
one or more input topics (by role), owns tables partitioned like its inputs,
and has a handler that turns one partition's batch into :class:`Output`
records. A view is a table that every worker keeps a read-only copy of, whole,
from its changelog (like Kafka Streams' global tables).

Every input of every stage must have the same number of partitions: partition
``p`` of all of them forms one task (:mod:`streams.task`), with one transactional
producer, so one transaction can commit the offsets of several inputs and the
changes of several tables together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Output(Protocol):
    """A record a handler asks to publish: the topic role, the Kafka key, the value.

    ``timestamp_ms`` keeps an input's time on a record copied between stages;
    ``headers`` carry what such a copy must remember of where it came from;
    ``source_ms`` (the input's Kafka timestamp) asks the runtime to measure, when the
    record is committed, how long after its input it became visible; ``partition``
    names the partition to write to (None: the producer's partitioner picks by key).
    """

    @property
    def role(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def timestamp_ms(self) -> int | None: ...
    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]: ...
    @property
    def source_ms(self) -> int | None: ...
    @property
    def partition(self) -> int | None: ...


class Message(Protocol):
    """What the runtime hands a handler: an aiokafka ``ConsumerRecord`` or anything like it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


Table = MutableMapping[bytes, bytes | None]


Effect = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Batch:
    """One partition's messages for one stage, with the stage's tables of that partition
    and the worker's views (read-only).

    ``effects`` collects what must happen only if the batch's transaction commits (a
    model learning from an answer, a counter moving): the runtime runs them, in order,
    after the commit, and drops them if the transaction fails, so a batch that is
    handled again after a failure has them once.
    """

    stage: str
    role: str  # the input role the messages were read from
    partition: int
    messages: Sequence[Message]
    tables: Mapping[str, Table]
    views: Mapping[str, Mapping[bytes, bytes]]
    effects: list[Effect] = field(default_factory=list)


Handler = Callable[[Batch], Sequence[Output]]


@dataclass(frozen=True)
class Stage:
    """One stage: the input roles it reads, the tables it owns, its handler.

    ``commit_within_ms`` bounds how long its outputs may wait for a transaction: the
    decide stage wants its decisions out at once; a stage off the decision's path can
    let its records gather into fewer, larger transactions.
    """

    name: str
    inputs: tuple[str, ...]
    tables: tuple[str, ...]
    handler: Handler
    commit_within_ms: int = 0


@dataclass(frozen=True)
class Topology:
    """The stages of a worker, the views it keeps, and how a table names its changelog."""

    stages: tuple[Stage, ...]
    views: tuple[str, ...] = ()
    changelog_of: Callable[[str], str] = field(default=lambda table: f"{table}-changelog")
    # Roles whose records other clients write: their keys and values are not ours to trust.
    external_inputs: frozenset[str] = frozenset()

    def stage_of_role(self) -> dict[str, Stage]:
        return {role: stage for stage in self.stages for role in stage.inputs}

    def tables(self) -> tuple[str, ...]:
        return tuple(table for stage in self.stages for table in stage.tables)

    def input_roles(self) -> tuple[str, ...]:
        return tuple(role for stage in self.stages for role in stage.inputs)
