"""Routing of one message: decisions, dead letters with original bytes, rekeying, links,
repeats, time to live and what is observed on the way."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable

import fastjsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.contract import SourcePosition
from app.contract.records import Event, dead_letter_id_for
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.decisioning.ledger import Ledger, ledger_key
from app.features import UserState
from app.fraud import LinkState, observe_link
from app.fraud.view import LinkView
from app.metrics import Metrics
from app.pipeline import (
    MAX_DEAD_LETTER_KEY,
    MAX_DEAD_LETTER_PAYLOAD,
    SOURCE_HEADER,
    Output,
    Pipeline,
    Tables,
    first_read_at,
)
from app.programs import load_builtin

# Without the shipped pending period for new accounts: these tests follow a first reward
# from decision to ledger.
RETAIL = load_builtin("retail-loyalty")
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
PARTITIONS = 8
START = 1_772_366_400_000  # 2026-03-01T12:00:00Z
DAY_MS = 86_400_000
MIB = 1024 * 1024

check_dead_letter = fastjsonschema.compile(load_schema("dead_letter"))
check_decision = fastjsonschema.compile(load_schema("decision"))
VALID = orjson.dumps(
    {"event_id": "e-1", "user_id": "u-1", "type": "signup", "ts": "2026-03-01T12:00:00Z"}
)
# Where each test user's state lives, for pipelines given a partitioner.
HOMES = {b"u-1": 2, b"u-2": 2, b"u-3": 2, b"u-away": 5}


def home_of(key: bytes) -> int:
    return HOMES[key]


def at(offset: int, key: bytes | None = b"u-1", produced_ms: int | None = None) -> SourcePosition:
    return SourcePosition("events", 2, offset, key, produced_ms)


def event(event_id: str, user: str = "u-1", ts: int = START, **fields: object) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "user_id": user, "type": "signup", "ts": ts} | fields
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_pipeline(
    registry: CollectorRegistry,
    engine: Engine | None = None,
    *,
    max_event_bytes: int = 4096,
    partitioner: Callable[[bytes], int] | None = None,
    state_ttl_ms: int | None = None,
) -> Pipeline:
    return Pipeline(
        engine or Engine(PROGRAM, partitions=PARTITIONS),
        Metrics(registry),
        max_event_bytes=max_event_bytes,
        partitioner=partitioner,
        state_ttl_ms=state_ttl_ms,
    )


@pytest.fixture
def pipeline(registry: CollectorRegistry) -> Pipeline:
    return make_pipeline(registry)


def tables() -> Tables:
    return Tables(users={}, ledgers={})


def empty_view() -> LinkView:
    """A view of a link table that holds nothing yet, without an overlay."""
    return LinkView(lambda key: LinkState())


def roles(outputs: list[Output]) -> list[str]:
    return [o.role for o in outputs]


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


# ------------------------------------------------------------ decisions


def test_valid_event_yields_one_decision_and_stores_state(pipeline: Pipeline) -> None:
    state = tables()
    [output] = pipeline.handle(state, at(0), VALID)
    assert (output.role, output.key) == ("decisions", b"u-1")
    decision = orjson.loads(output.value)
    check_decision(decision)
    assert UserState.from_bytes(state.users[b"u-1"]).events == 1
    # The signup was granted welcome points: partition 2's ledger paid for them.
    assert decision["action"] == "welcome-points"
    ledger = Ledger.from_bytes(state.ledgers[ledger_key("retail-loyalty", 2)])
    assert ledger.spent_total == decision["cost"]
    # No device, no network: the decision was given no link facts.
    assert decision["links"] == []


def test_state_is_written_back_only_when_the_batch_is_flushed(pipeline: Pipeline) -> None:
    state = tables()
    pipeline.handle(state, at(0), VALID, flush=False)
    assert state.users == {}
    pipeline.handle(state, at(1), event("e-2", type="page_view"), flush=False)
    pipeline.flush(state)
    assert UserState.from_bytes(state.users[b"u-1"]).events == 2


def test_budgets_left_are_observed_per_partition_when_the_batch_is_flushed(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    [output] = pipeline.handle(state, at(0), VALID, flush=False)
    name = "rewardstream_budget_remaining"
    labels = {"program": "retail-loyalty", "partition": "2", "budget": "total"}
    assert registry.get_sample_value(name, labels) is None
    pipeline.flush(state)
    cost = orjson.loads(output.value)["cost"]
    assert cost > 0
    share = PROGRAM.budgets.total / PARTITIONS  # type: ignore[operator]
    assert registry.get_sample_value(name, labels) == pytest.approx(share - cost)
    day = labels | {"budget": "1d"}
    assert registry.get_sample_value(name, day) == pytest.approx(5000 / PARTITIONS - cost)


# ------------------------------------------------------------ dead letters


def test_invalid_event_becomes_a_dead_letter_with_original_bytes_and_position(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    raw = b'{"event_id": "e-9", "user_id": "u-1", "type": "teleport", "ts": 1772366400000}'
    [output] = pipeline.handle(tables(), at(41, b"k", produced_ms=1_772_366_400_000), raw)
    record = orjson.loads(output.value)
    check_dead_letter(record)
    assert (output.role, output.key) == ("dead-letter", b"k")
    assert (record["reason"], record["event_id"]) == ("schema", "e-9")
    assert record["source"] == {
        "topic": "events",
        "partition": 2,
        "offset": 41,
        "key_base64": base64.b64encode(b"k").decode(),
    }
    assert record["dead_letter_id"] == dead_letter_id_for("events", 2, 41)
    assert base64.b64decode(record["payload_base64"]) == raw
    assert record["payload_truncated"] is False
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert registry.get_sample_value("rewardstream_dead_letters_total", {"reason": "schema"}) == 1
    assert output.source_ms is None  # latency is measured for decisions only


def test_huge_payload_is_truncated_in_the_dead_letter_but_hashed_whole(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, max_event_bytes=1024)
    raw = b"x" * (MAX_DEAD_LETTER_PAYLOAD + 10)
    record = orjson.loads(pipeline.handle(tables(), at(1), raw)[0].value)
    check_dead_letter(record)
    assert record["reason"] == "oversized"
    assert record["payload_truncated"] is True
    assert record["payload_bytes"] == len(raw)
    assert len(base64.b64decode(record["payload_base64"])) == MAX_DEAD_LETTER_PAYLOAD
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_dead_letter_for_a_huge_key_and_payload_fits_well_under_the_record_limit(
    pipeline: Pipeline,
) -> None:
    """A key may be as large as the broker's record limit (1 MiB by default); the dead
    letter, key and body together, must still be accepted by the broker."""
    key = b"k" * (900 * 1024)
    raw = b"y" * (900 * 1024)
    [output] = pipeline.handle(tables(), at(3, key), raw)
    assert output.role == "dead-letter"
    assert output.key == key[:MAX_DEAD_LETTER_KEY]
    record = orjson.loads(output.value)
    check_dead_letter(record)
    assert base64.b64decode(record["source"]["key_base64"]) == key[:MAX_DEAD_LETTER_KEY]
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(output.key) + len(output.value) < 0.75 * MIB


class ExplodingEngine(Engine):
    def process(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise ZeroDivisionError("a bug")


def test_a_bug_in_the_engine_costs_one_dead_letter_not_the_worker(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, ExplodingEngine(PROGRAM))
    raw = event("e-1", device_id="dev-1")
    [output] = pipeline.handle(tables(), at(5), raw)  # and nothing sent on to the link stage
    record = orjson.loads(output.value)
    check_dead_letter(record)
    assert (output.role, record["reason"]) == ("dead-letter", "internal_error")
    assert "ZeroDivisionError: a bug" in record["error"]
    assert base64.b64decode(record["payload_base64"]) == raw
    labels = {"reason": "internal_error"}
    assert registry.get_sample_value("rewardstream_dead_letters_total", labels) == 1


def test_a_link_view_that_fails_costs_one_dead_letter_not_the_worker(pipeline: Pipeline) -> None:
    def broken(key: bytes) -> LinkState:
        raise OSError("view unreadable")

    state = tables()
    outputs = pipeline.decide(state, 2, at(6), event("e-1", device_id="d"), LinkView(broken))
    assert roles(outputs) == ["dead-letter"]
    assert "OSError: view unreadable" in orjson.loads(outputs[0].value)["error"]
    pipeline.flush(state)
    assert state.users == {}


# ------------------------------------------------------------ rekeying


def test_an_event_stored_on_another_partition_than_its_users_is_sent_there_unchanged(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, partitioner=home_of)
    state = tables()
    raw = event("e-7", user="u-away", device_id="dev-1")  # u-away lives on partition 5
    source = at(41, key=b"someone-else", produced_ms=1_772_366_399_000)
    [output] = pipeline.decide(state, 2, source, raw, empty_view())
    assert output == Output(
        "rekeyed",
        b"u-away",
        raw,
        timestamp_ms=1_772_366_399_000,
        headers=((SOURCE_HEADER, b"events/2/41"),),
    )
    pipeline.flush(state)
    assert (state.users, state.ledgers) == ({}, {})  # not decided here
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1


def test_a_rekeyed_event_is_decided_on_its_users_partition(registry: CollectorRegistry) -> None:
    pipeline = make_pipeline(registry, partitioner=home_of)
    state = tables()
    raw = event("e-7", user="u-away")
    [moved] = pipeline.decide(state, 2, at(41, key=None, produced_ms=1000), raw, empty_view())
    # As the worker reads it back from partition 5 of the rekeyed topic.
    read = SourcePosition("app-rekeyed", 5, 0, moved.key, moved.timestamp_ms)
    source = first_read_at(read, moved.headers)
    assert source == SourcePosition("events", 2, 41, b"u-away", 1000)
    [decision] = pipeline.decide(state, 5, source, moved.value, empty_view())
    assert (decision.role, decision.key, decision.source_ms) == ("decisions", b"u-away", 1000)
    pipeline.flush(state)
    cost = orjson.loads(decision.value)["cost"]
    assert Ledger.from_bytes(state.ledgers[ledger_key("retail-loyalty", 5)]).spent_total == cost
    assert ledger_key("retail-loyalty", 2) not in state.ledgers
    assert UserState.from_bytes(state.users[b"u-away"]).events == 1
    # Counted once, where the key was wrong; not again on the rekeyed topic.
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1


def test_a_rekeyed_event_that_cannot_be_decided_names_where_it_was_first_read(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, ExplodingEngine(PROGRAM), partitioner=home_of)
    raw = event("e-7", user="u-away")
    [moved] = pipeline.decide(tables(), 2, at(41, key=b"k"), raw, empty_view())
    assert moved.role == "rekeyed"  # validated, but not decided on the wrong partition
    source = first_read_at(SourcePosition("app-rekeyed", 5, 9, b"u-away"), moved.headers)
    [dead] = pipeline.decide(tables(), 5, source, moved.value, empty_view())
    record = orjson.loads(dead.value)
    assert record["reason"] == "internal_error"
    assert record["source"]["topic"] == "events"
    assert (record["source"]["partition"], record["source"]["offset"]) == (2, 41)
    assert record["dead_letter_id"] == dead_letter_id_for("events", 2, 41)
    assert base64.b64decode(record["payload_base64"]) == raw
    # In-process (replay), the same dead letter: the same position, not the user's partition.
    [same] = pipeline.handle(tables(), at(41, key=b"k"), raw)
    assert orjson.loads(same.value)["dead_letter_id"] == record["dead_letter_id"]
    assert orjson.loads(same.value)["source"]["partition"] == 2


def test_a_message_without_the_source_header_is_its_own_first_read() -> None:
    source = SourcePosition("events", 3, 7, b"u-1", 55)
    assert first_read_at(source, None) is source
    assert first_read_at(source, [("other", b"x")]) is source


def test_an_event_under_the_wrong_key_on_its_users_partition_is_decided_at_once(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, partitioner=home_of)
    [output] = pipeline.handle(tables(), at(3, key=None), VALID)  # u-1 lives on 2
    assert (output.role, output.key) == ("decisions", b"u-1")
    assert registry.get_sample_value("rewardstream_rekeyed_events_total") == 1


def test_in_process_an_event_is_decided_with_its_users_partition_ledger(
    registry: CollectorRegistry,
) -> None:
    """Replay reads every line as partition 0: each user's events are decided where the
    worker would decide them, and nothing internal is published."""
    pipeline = make_pipeline(registry, partitioner=home_of)
    state = tables()
    outputs = pipeline.handle(state, at(0, key=None), event("e-1", "u-away", device_id="d"))
    assert roles(outputs) == ["decisions"]
    assert ledger_key("retail-loyalty", 5) in state.ledgers
    assert ledger_key("retail-loyalty", 2) not in state.ledgers
    assert set(state.links) == {b"device:d"}


# ------------------------------------------------------------ links


def test_a_decided_event_goes_on_to_each_device_and_network_it_names(pipeline: Pipeline) -> None:
    state = tables()
    raw = event("e-5", device_id="dev-1", ip="192.0.2.77")
    outputs = pipeline.decide(state, 2, at(7), raw, empty_view())
    assert [(o.role, o.key) for o in outputs] == [
        ("decisions", b"u-1"),
        ("links", b"device:dev-1"),
        ("links", b"net:192.0.2.0/24"),
    ]
    for hop in outputs[1:]:
        # The event as the link stage reads it, with what it needs of it.
        document = orjson.loads(hop.value)
        hopped = Event.from_document(document, document["ts"])
        assert (hopped.event_id, hopped.user_id, hopped.type, hopped.ts) == (
            "e-5",
            "u-1",
            "signup",
            START,
        )
        assert (hopped.device_id, hopped.ip) == ("dev-1", "192.0.2.77")
        assert (hop.source_ms, hop.headers) == (None, ())
    # The link stage counts it in each device's and network's state.
    for hop in outputs[1:]:
        pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 0, 0))
    pipeline.flush(state)
    assert set(state.links) == {b"device:dev-1", b"net:192.0.2.0/24"}
    for key in state.links:
        [seen] = LinkState.from_bytes(state.links[key]).accounts
        assert seen.user_id == "u-1"


def test_a_referral_reaches_the_link_state_of_its_device(pipeline: Pipeline) -> None:
    """Referral rings are found where a device's referrals are kept: the copy of the event
    sent to the device says whom it referred."""
    state = tables()
    raw = event(
        "e-8", type="referral", device_id="dev-1", attributes={"referred_user_id": "u-friend"}
    )
    [_, hop] = pipeline.decide(state, 2, at(8), raw, empty_view())
    pipeline.link(state, hop.key or b"", hop.value, SourcePosition("links", 0, 0))
    pipeline.flush(state)
    [referral] = LinkState.from_bytes(state.links[b"device:dev-1"]).referrals
    assert (referral.referred, referral.referrer, referral.ts) == ("u-friend", "u-1", START)


@pytest.mark.parametrize(
    "raw",
    [
        event("e-5", device_id="dev-1", ip="192.0.2.77", type="teleport"),  # invalid
        event("e-6", type="page_view"),  # names no device nor network
    ],
)
def test_an_event_that_names_no_link_or_is_not_valid_goes_to_no_link(
    pipeline: Pipeline, raw: bytes
) -> None:
    outputs = pipeline.decide(tables(), 2, at(7), raw, empty_view())
    assert "links" not in roles(outputs)


def test_a_rekeyed_event_goes_to_its_links_only_once_decided(registry: CollectorRegistry) -> None:
    pipeline = make_pipeline(registry, partitioner=home_of)
    raw = event("e-7", user="u-away", device_id="dev-1")
    [moved] = pipeline.decide(tables(), 2, at(1, key=None), raw, empty_view())
    assert moved.role == "rekeyed"
    outputs = pipeline.decide(tables(), 5, at(1, key=b"u-away"), moved.value, empty_view())
    assert roles(outputs) == ["decisions", "links"]


def test_a_repeated_event_goes_to_no_link(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    """A repeat is not decided: whatever device it names, no link state counts it."""
    state = tables()
    first = pipeline.decide(state, 2, at(0), event("e-1", device_id="d"), empty_view())
    assert roles(first) == ["decisions", "links"]
    exact = pipeline.decide(state, 2, at(1), event("e-1", device_id="d"), empty_view())
    altered = pipeline.decide(state, 2, at(2), event("e-1", device_id="other"), empty_view())
    assert roles(exact) == ["fraud-alerts"]
    assert roles(altered) == ["fraud-alerts"]
    pipeline.flush(state)  # what a batch counts shows once the batch is flushed
    assert registry.get_sample_value("rewardstream_duplicate_events_total") == 2


def test_a_link_record_that_cannot_be_read_is_counted_never_guessed_at(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    [_, hop] = pipeline.decide(state, 2, at(8), event("e-6", device_id="d"), empty_view())
    pipeline.link(state, b"device:other", hop.value, SourcePosition("links", 0, 9))  # wrong key
    pipeline.link(state, b"device:d", b"not json", SourcePosition("links", 0, 10))
    pipeline.flush(state)
    assert state.links == {}
    assert registry.get_sample_value("rewardstream_link_failures_total") == 2


def test_a_decision_carries_the_link_facts_it_was_given(pipeline: Pipeline) -> None:
    """Three accounts sign up on one device (and network): each decision records what the
    view showed, and the fourth, given four sign-ups, is blocked."""
    state = tables()
    decisions = []
    for n in range(4):
        raw = event(f"e-{n}", user=f"u-{n}", ts=START + n * 60_000, device_id="d", ip=f"10.0.0.{n}")
        [decision, *_] = pipeline.handle(state, at(n, f"u-{n}".encode()), raw)
        decisions.append(orjson.loads(decision.value))
    for decision in decisions:
        check_decision(decision)
    device = [decision["links"][0] for decision in decisions]
    assert device[0] == {
        "kind": "device",
        "accounts_24h": 1,
        "signups_24h": 1,
        "same_ip_24h": 0,
    }
    assert device[2] == {
        "kind": "device",
        "accounts_24h": 3,
        "signups_24h": 3,
        "same_ip_24h": 0,
        "related": ["u-1", "u-0"],
    }
    assert [d["links"][1]["kind"] for d in decisions] == ["net"] * 4
    assert decisions[3]["links"][1]["signups_24h"] == 4
    assert [d["status"] for d in decisions] == ["granted", "granted", "granted", "blocked"]


def test_the_facts_a_decision_records_are_the_facts_it_was_decided_on(
    pipeline: Pipeline,
) -> None:
    """A view that shows a crowded device: the decision is blocked and says why."""
    crowded = LinkState()
    for n in range(4):
        other = Event(f"x-{n}", f"v-{n}", "signup", START - 1000 + n, device_id="d")
        crowded, _ = observe_link(crowded, other, "device")
    view = LinkView(lambda key: crowded if key == b"device:d" else LinkState())
    outputs = pipeline.decide(tables(), 2, at(0), event("e-1", device_id="d"), view)
    decision = orjson.loads(outputs[0].value)
    assert decision["status"] == "blocked"
    assert decision["links"][0]["signups_24h"] == 5
    assert "fraud.device.signups" in decision["reasons"]


# ------------------------------------------------------------ repeats


def test_repeat_of_an_event_is_counted_not_decided(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    assert len(pipeline.handle(state, at(0), VALID)) == 1
    # No second decision; the repeat is reported to the fraud-alerts topic.
    repeat = pipeline.handle(state, at(1, produced_ms=1_772_366_400_000), VALID)
    assert roles(repeat) == ["fraud-alerts"]
    assert repeat[0].source_ms is None
    assert registry.get_sample_value("rewardstream_duplicate_events_total") == 1
    assert UserState.from_bytes(state.users[b"u-1"]).events == 1


# ------------------------------------------------------------ what is observed


def test_policy_modes_and_learning_are_counted(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    state = tables()
    [output] = pipeline.handle(state, at(0), VALID)
    decision = orjson.loads(output.value)
    labels = {"program": "retail-loyalty", "mode": "exploit"}
    assert registry.get_sample_value("rewardstream_policy_choices_total", labels) == 1
    redeemed = orjson.dumps(
        {
            "event_id": "e-2",
            "user_id": "u-1",
            "type": "reward_redeemed",
            "ts": "2026-03-01T13:00:00Z",
            "decision_id": decision["decision_id"],
        }
    )
    pipeline.handle(state, at(1), redeemed)
    updates = registry.get_sample_value(
        "rewardstream_model_updates_total", {"program": "retail-loyalty"}
    )
    assert updates == 1


def test_a_decision_asks_for_latency_from_its_events_kafka_timestamp(pipeline: Pipeline) -> None:
    state = tables()
    [decision] = pipeline.handle(state, at(0, produced_ms=1_772_366_400_123), VALID)
    assert decision.source_ms == 1_772_366_400_123
    # Without a Kafka timestamp (aiokafka says -1, replay says nothing) there is none to ask.
    for produced in (None, -1, 0):
        raw = event(f"e-{produced}", type="page_view")
        [decision] = pipeline.handle(state, at(1, produced_ms=produced), raw)
        assert (decision.role, decision.source_ms) == ("decisions", None)


def test_committed_observes_latency_only_from_the_timestamps_given(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    count, total = (
        "rewardstream_event_to_decision_seconds_count",
        ("rewardstream_event_to_decision_seconds_sum"),
    )
    pipeline.committed([], 10_000)
    assert sample(registry, count) == 0
    # A producer's clock ahead of ours counts as no wait, never as a negative one.
    pipeline.committed([8_500, 9_750, 12_000], 10_000)
    assert sample(registry, count) == 3
    assert sample(registry, total) == pytest.approx(1.5 + 0.25 + 0)


# ------------------------------------------------------------ time to live


def page_view(n: int, ts: int) -> bytes:
    return orjson.dumps({"event_id": f"e-{n}", "user_id": "u-1", "type": "page_view", "ts": ts})


def test_a_user_silent_longer_than_the_time_to_live_is_forgotten(
    registry: CollectorRegistry,
) -> None:
    pipeline = make_pipeline(registry, state_ttl_ms=30 * DAY_MS)
    state = tables()
    pipeline.handle(state, at(0), page_view(0, START))
    pipeline.handle(state, at(1), page_view(1, START + 29 * DAY_MS))
    assert UserState.from_bytes(state.users[b"u-1"]).events == 2
    pipeline.handle(state, at(2), page_view(2, START + 60 * DAY_MS))  # 31 days of silence
    assert UserState.from_bytes(state.users[b"u-1"]).events == 1
    expired = {"table": "user-state"}
    assert registry.get_sample_value("rewardstream_state_expired_total", expired) == 1
    # What the background sweep may delete: nothing newer than the time to live, and
    # nothing while the newest event seen is not past it (a backfill of old events).
    row = state.users[b"u-1"]
    assert not pipeline.stale("users", row, START + 1000 * DAY_MS)
    pipeline.handle(state, at(3, b"u-9"), event("e-late", user="u-9", ts=START + 1000 * DAY_MS))
    assert not pipeline.stale("users", row, START + 60 * DAY_MS + 30 * DAY_MS)
    assert pipeline.stale("users", row, START + 60 * DAY_MS + 30 * DAY_MS + 1)
    assert not make_pipeline(CollectorRegistry()).stale(
        "users", row, START + 1000 * DAY_MS
    )  # no time to live: never
    assert not pipeline.stale("ledgers", row, START + 1000 * DAY_MS)  # ledgers never expire
    assert not pipeline.stale("users", b"\xff not a row", START + 1000 * DAY_MS)
    assert not pipeline.stale("users", None, START + 1000 * DAY_MS)


def test_a_device_silent_longer_than_the_time_to_live_is_forgotten(
    registry: CollectorRegistry,
) -> None:
    """Forgotten alike by the link stage (its state) and the view (the decision's facts),
    both at read time: u-2 is decided as if u-1 had never been on the device."""
    pipeline = make_pipeline(registry, state_ttl_ms=10 * DAY_MS)
    state = tables()
    decisions = []
    for n, (user, ts) in enumerate([("u-1", START), ("u-2", START + 20 * DAY_MS)]):
        raw = event(f"e-{n}", user=user, ts=ts, device_id="d")
        [decision] = pipeline.handle(state, at(n, key=user.encode()), raw)
        decisions.append(orjson.loads(decision.value))
    accounts = LinkState.from_bytes(state.links[b"device:d"]).accounts
    assert [seen.user_id for seen in accounts] == ["u-2"]  # u-1's sign-up is forgotten
    assert "related" not in decisions[1]["links"][0]  # none: left out, like other defaults
    # Counted once, by the link stage: the view's read is not a second expiry.
    assert (
        registry.get_sample_value("rewardstream_state_expired_total", {"table": "link-state"}) == 1
    )
    row = state.links[b"device:d"]
    assert not pipeline.stale("links", row, START + 31 * DAY_MS)  # nothing seen that late
    pipeline.handle(state, at(5, b"u-9"), event("e-late", user="u-9", ts=START + 31 * DAY_MS))
    assert not pipeline.stale("links", row, START + 30 * DAY_MS)
    assert pipeline.stale("links", row, START + 30 * DAY_MS + 1)


# ------------------------------------------------------------ who may send what

LABEL = {"type": "fraud_label", "attributes": {"label": "cleared"}}
CONSENT = {"type": "consent_updated", "attributes": {"marketing": True}}
MEMBER = {"type": "member_imported", "attributes": {"member_since": START - 400 * DAY_MS}}
HOME_TOPICS = {
    "fraud_label": "fraud-labels",
    "consent_updated": "consent",
    "member_imported": "members",
}


@pytest.mark.parametrize(
    "control", [LABEL, CONSENT, MEMBER], ids=["fraud_label", "consent_updated", "member_imported"]
)
def test_a_control_event_on_events_is_dead_lettered_unauthorized_and_changes_nothing(
    pipeline: Pipeline, registry: CollectorRegistry, control: dict[str, object]
) -> None:
    state = tables()
    pipeline.decide(state, 2, at(0), event("e-0"), empty_view(), role="events")
    pipeline.flush(state)
    before = dict(state.users)
    raw = orjson.dumps({"event_id": "e-1", "user_id": "u-1", "ts": START + 1} | control)
    [dead] = pipeline.decide(state, 2, at(1), raw, empty_view(), role="events")
    pipeline.flush(state)
    letter = orjson.loads(dead.value)
    assert (dead.role, letter["reason"], letter["event_id"]) == (
        "dead-letter",
        "unauthorized",
        "e-1",
    )
    assert str(control["type"]) in letter["error"]
    assert f"send it to the {HOME_TOPICS[str(control['type'])]} topic" in letter["error"]
    assert base64.b64decode(letter["payload_base64"]) == raw
    # No verdict, no consent, no membership (first_ts kept): the user is as before.
    assert state.users == before
    assert sample(registry, "rewardstream_dead_letters_total", {"reason": "unauthorized"}) == 1


def test_control_events_are_decided_from_their_own_topics_and_nothing_else_is(
    pipeline: Pipeline,
) -> None:
    state = tables()
    pipeline.decide(state, 2, at(0), event("e-0"), empty_view(), role="events")
    label = orjson.dumps({"event_id": "e-1", "user_id": "u-1", "ts": START + 1} | LABEL)
    consent = orjson.dumps({"event_id": "e-2", "user_id": "u-1", "ts": START + 2} | CONSENT)
    member = orjson.dumps({"event_id": "e-6", "user_id": "u-1", "ts": START + 2} | MEMBER)
    [decided_label] = pipeline.decide(state, 2, at(1), label, empty_view(), role="fraud-labels")
    [decided_consent] = pipeline.decide(state, 2, at(2), consent, empty_view(), role="consent")
    [decided_member] = pipeline.decide(state, 2, at(2), member, empty_view(), role="members")
    assert roles([decided_label, decided_consent, decided_member]) == ["decisions"] * 3
    # Each control topic carries its own type only.
    for role, raw in (
        ("fraud-labels", event("e-3", ts=START + 3)),
        ("consent", label),
        ("members", consent),
        ("members", event("e-7", ts=START + 3)),
        ("consent", member),
    ):
        [dead] = pipeline.decide(state, 2, at(3), raw, empty_view(), role=role)
        assert orjson.loads(dead.value)["reason"] == "unauthorized"
    # A trusted file (offline replay) names no topic: every type is decided.
    [replayed] = pipeline.decide(state, 2, at(4), label.replace(b"e-1", b"e-5"), empty_view())
    assert replayed.role == "decisions"
