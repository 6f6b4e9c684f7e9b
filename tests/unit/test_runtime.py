"""The worker's loop without Kafka: a batch's outputs and changelog records, and the
background sweep of state whose time to live is over."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from app.contract import SourcePosition
from app.decisioning import Engine
from app.metrics import Metrics
from app.pipeline import Pipeline
from app.programs import load_builtin
from app.settings import Settings, SettingsError
from streams.packing import pack
from streams.runtime import SWEEP_SLICE, StageRunner
from streams.state import PartitionTable
from topologies import STAGES, TABLE_USER_STATE, changelog_topic

DAY_MS = 86_400_000
START = 1_772_366_400_000


class Message(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = -1  # aiokafka's for a record without one


def runner(ttl_days: int = 30) -> StageRunner:
    settings = Settings(state_ttl_days=ttl_days)
    pipeline = Pipeline(
        Engine(load_builtin("retail-loyalty")),
        Metrics(CollectorRegistry()),
        max_event_bytes=4096,
        state_ttl_ms=settings.state_ttl_ms,
    )
    runner = StageRunner(settings, pipeline, STAGES)
    linked = settings.topic_names()["linked"]
    for table in next(s for s in STAGES if s.name == "decide").tables:
        topic = changelog_topic(settings.app_id, table)
        runner.tables[(table, 0)] = PartitionTable(topic, 0)
    runner.owned.add(TopicPartition(linked, 0))
    return runner


def linked_event(runner: StageRunner, offset: int, user: str, ts: int) -> Message:
    event = {"event_id": f"e-{offset}", "user_id": user, "type": "page_view", "ts": ts}
    source = SourcePosition("events", 0, offset, user.encode())
    [output] = runner.pipeline.intake(source, orjson.dumps(event))
    return Message(runner.topic_of_role["linked"], 0, offset, output.key, output.value)


def test_a_batch_yields_its_decisions_and_one_changelog_record_per_changed_row() -> None:
    loop = runner()
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    batch = [linked_event(loop, n, f"u-{n % 2}", START + n) for n in range(4)]
    outputs, changes = loop._handle(tp, batch)
    assert [o.role for o in outputs] == ["decisions"] * 4
    users = changelog_topic(loop.settings.app_id, TABLE_USER_STATE)
    assert sorted(c.key for c in changes if c.topic == users) == [b"u-0", b"u-1"]
    assert all(c.partition == 0 for c in changes)
    # Nothing changed since: the next batch of nothing writes nothing.
    assert loop._handle(tp, []) == ([], [])


def test_a_packed_record_is_decided_item_by_item_and_a_broken_one_is_dead_lettered() -> None:
    loop = runner()
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    events = [linked_event(loop, n, f"u-{n % 3}", START + n) for n in range(5)]
    [packed] = pack([(m.key or b"", m.value) for m in events])
    outputs, _ = loop._handle(tp, [Message(tp.topic, 0, 0, None, packed)])
    decided = [orjson.loads(o.value)["event_id"] for o in outputs]
    assert decided == [f"e-{n}" for n in range(5)]
    # Cut short: one dead letter that says why, and the loop goes on.
    outputs, _ = loop._handle(tp, [Message(tp.topic, 0, 1, None, packed[:-3])])
    [letter] = outputs
    assert letter.role == "dead-letter"
    assert orjson.loads(letter.value)["error"].startswith("PackError: a packed record ends")


def test_the_sweep_deletes_forgotten_users_with_tombstones_in_the_same_batch() -> None:
    loop = runner(ttl_days=30)
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    old = [linked_event(loop, n, f"old-{n}", START) for n in range(3)]
    loop._handle(tp, old)
    # Forty days later (in event time, and before the wall clock) a new user arrives.
    _, changes = loop._handle(tp, [linked_event(loop, 10, "new", START + 40 * DAY_MS)])
    users = changelog_topic(loop.settings.app_id, TABLE_USER_STATE)
    deleted = sorted(c.key for c in changes if c.topic == users and c.value is None)
    assert deleted == [b"old-0", b"old-1", b"old-2"]
    assert set(loop.tables[(TABLE_USER_STATE, 0)]) == {b"new"}


def test_an_event_from_the_far_future_cannot_make_everybody_expire() -> None:
    # A time to live long enough that the wall clock alone expires nobody here.
    loop = runner(ttl_days=1_000)
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    loop._handle(tp, [linked_event(loop, n, f"u-{n}", START) for n in range(3)])
    far = 4_000_000_000_000  # the year 2096: valid, but later than the wall clock
    loop._handle(tp, [linked_event(loop, 9, "time-traveller", far)])
    loop._handle(tp, [])
    assert {b"u-0", b"u-1", b"u-2"} <= set(loop.tables[(TABLE_USER_STATE, 0)])


def test_the_sweep_looks_at_a_bounded_slice_per_batch() -> None:
    loop = runner(ttl_days=30)
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    table = loop.tables[(TABLE_USER_STATE, 0)]
    stale = orjson.dumps({"last_ts": START})
    for n in range(SWEEP_SLICE * 2 + 10):
        table.apply(f"x-{n}".encode(), stale)
    loop._handle(tp, [linked_event(loop, 1, "new", START + 40 * DAY_MS)])
    assert len(table) == SWEEP_SLICE + 10 + 1
    loop._handle(tp, [])
    loop._handle(tp, [])
    assert set(table) == {b"new"}


def test_settings_reject_a_time_to_live_below_a_day() -> None:
    with pytest.raises(SettingsError, match="STATE_TTL_DAYS"):
        Settings.from_env(environ={"REWARDSTREAM_STATE_TTL_DAYS": "0"})
    assert dataclasses.replace(Settings(), state_ttl_days=2).state_ttl_ms == 2 * DAY_MS


def test_repeated_client_log_lines_are_held_back_and_counted() -> None:
    import logging

    from streams.worker import RepeatFilter

    gate = RepeatFilter(every_s=3600)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    assert gate.filter(record("aiokafka", "Unable connect to node %s"))
    assert not gate.filter(record("aiokafka", "Unable connect to node %s"))
    assert gate.filter(record("aiokafka", "Another message"))
    assert gate.filter(record("streams.runtime", "partition.recovered"))  # ours: never held
    assert gate.filter(record("streams.runtime", "partition.recovered"))
    gate.every_s = 0.0
    again = record("aiokafka", "Unable connect to node %s")
    assert gate.filter(again)
    assert "(1 similar held back)" in again.getMessage()


class Positions:
    """What the consumer knows of each partition's end (None: not fetched yet)."""

    def __init__(self, stable: dict[TopicPartition, int], highwater: dict[TopicPartition, int]):
        self.stable, self.high = stable, highwater
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.stable)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable.get(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


def test_consumer_lag_is_exported_per_owned_partition_and_forgotten_when_it_goes() -> None:
    loop = runner()
    events = TopicPartition(loop.topic_of_role["events"], 3)
    linked = TopicPartition(loop.topic_of_role["linked"], 0)
    fresh = TopicPartition(loop.topic_of_role["events"], 4)  # nothing handled yet
    loop.owned |= {events, linked, fresh}
    loop.next_offsets |= {events: 100, linked: 7}
    # No stable offset known for ``linked`` yet (-1): the high watermark stands in.
    ends = Positions({events: 130, linked: -1, fresh: 50}, {linked: 9})
    loop._export_lag(loop._behind(ends))  # type: ignore[arg-type]
    registry = loop.pipeline.metrics.registry

    def lag(tp: TopicPartition) -> float | None:
        labels = {"topic": tp.topic, "partition": str(tp.partition)}
        return registry.get_sample_value("rewardstream_consumer_lag_records", labels)

    assert (lag(events), lag(linked), lag(fresh)) == (30, 2, None)
    loop.owned.discard(events)  # a rebalance gave it to another worker
    loop._export_lag(loop._behind(ends))  # type: ignore[arg-type]
    assert (lag(events), lag(linked)) == (None, 2)


def test_the_kafka_timestamp_of_an_event_reaches_the_latency_of_its_decision() -> None:
    loop = runner()
    clock = loop.pipeline.metrics.clock
    produced = clock.now_ms() - 60_000  # a minute old when it is decided
    event = {"event_id": "e-1", "user_id": "u-1", "type": "signup", "ts": START}
    events = TopicPartition(loop.topic_of_role["events"], 0)
    intake = Message(events.topic, 0, 0, b"u-1", orjson.dumps(event), timestamp=produced)
    [linked, *_] = loop._handle(events, [intake])[0]
    assert linked.role == "linked"
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    [decision], _ = loop._handle(tp, [Message(tp.topic, 0, 0, linked.key, linked.value)])
    assert decision.role == "decisions"
    registry = loop.pipeline.metrics.registry
    assert registry.get_sample_value("rewardstream_event_to_decision_seconds_count") == 1
    waited = registry.get_sample_value("rewardstream_event_to_decision_seconds_sum") or 0.0
    assert 60 <= waited < 120


def test_intake_pauses_while_a_later_stage_lags_and_resumes_once_it_has_caught_up() -> None:
    loop = runner()
    events = TopicPartition(loop.topic_of_role["events"], 0)
    linked = TopicPartition(loop.topic_of_role["linked"], 0)
    loop.owned |= {events, linked}
    loop.next_offsets |= {events: 0, linked: 0}

    def pace(linked_end: int) -> set[TopicPartition]:
        # Intake itself far behind never pauses it: only a later stage's lag does.
        consumer = Positions({events: 10_000, linked: linked_end}, {})
        loop._pace_intake(consumer, loop._behind(consumer))  # type: ignore[arg-type]
        return consumer.paused

    assert pace(10) == set()
    assert pace(100) == {events}  # more than 64 behind
    assert pace(40) == {events}  # still above the resume mark of 16
    assert pace(10) == set()


def test_a_lag_made_of_offsets_no_fetch_returns_never_holds_intake_back() -> None:
    """Aborted records and commit markers take offsets that read_committed never
    returns: when the last fetch brought nothing, intake reads on."""
    loop = runner()
    events = TopicPartition(loop.topic_of_role["events"], 0)
    links = TopicPartition(loop.topic_of_role["links"], 0)
    loop.owned |= {events, links}
    loop.next_offsets |= {events: 0, links: 0}
    consumer = Positions({events: 500, links: 100}, {})
    loop._pace_intake(consumer, loop._behind(consumer))  # type: ignore[arg-type]
    assert consumer.paused == {events}
    loop.idle = True  # the fetch of the round brought nothing, though 100 offsets "remain"
    loop._pace_intake(consumer, loop._behind(consumer))  # type: ignore[arg-type]
    assert consumer.paused == set()
    loop.idle = False  # records arrive again: the lag is real, intake waits
    loop._pace_intake(consumer, loop._behind(consumer))  # type: ignore[arg-type]
    assert consumer.paused == {events}


async def test_a_recovered_partition_drops_what_it_held() -> None:
    """Messages held while a partition's commit was in flight come after the batch that
    failed; recovery reads from the committed offset again, so they come again too and
    must not be handled on the restored state."""
    loop = runner()
    tp = TopicPartition(loop.topic_of_role["linked"], 0)
    loop.held[tp] = [linked_event(loop, 7, "u-1", START)]
    loop.rebalancing = True  # the branch that needs no broker: the partition is dropped
    await loop._recover(tp)
    assert tp not in loop.held
    assert tp not in loop.owned
