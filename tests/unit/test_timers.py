"""Event-time timers (app.timers) and what the pipeline does with them: an offer whose
user never comes back is learned as a "no" once the partition's event time passes its
response window, the same at whatever event a restart or a replay resumes, and an
erasure leaves no timer naming the user."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from app.contract import SourcePosition
from app.decisioning import Engine
from app.metrics import Metrics
from app.pipeline import LIVE_SUBJECT, Pipeline, Tables, offer_timers, open_rows
from app.programs import load_builtin
from app.timers import Timers, clock_key, timer_key

RETAIL = load_builtin("retail-loyalty")
# Without the pending period for new accounts, a sign-up is granted its welcome reward.
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
START = 1_772_366_400_000  # 2026-03-01T12:00:00Z
HOUR_MS = 3_600_000
TABLE_FIELDS = ("users", "ledgers", "links", "shadow_users", "shadow_ledgers", "erased", "timers")
WINDOW_MS = PROGRAM.learning.response_window.seconds * 1000
PROGRAM_LABEL = {"program": PROGRAM.id}


# ------------------------------------------------------------ the index


def test_timers_fire_in_time_order_once_the_clock_passes_them() -> None:
    table: dict[bytes, bytes | None] = {}
    timers = Timers(table)
    timers.add(0, 300, b"b")
    timers.add(0, 100, b"a")
    timers.add(0, 100, b"a")  # the same timer once
    timers.add(1, 50, b"other-partition")
    assert len(timers) == 3
    assert timers.pop_due(0) == []  # no clock yet: nothing is due
    assert timers.advance(0, 200)
    assert not timers.advance(0, 150)  # event time never goes back
    assert timers.clock(0) == 200
    assert timers.pop_due(0) == [b"a"]
    assert timers.pop_due(0) == []
    assert timer_key(0, 100, b"a") not in table  # fired timers are deleted
    assert timer_key(0, 300, b"b") in table
    assert timers.pop_due(1) == []  # partition 1's clock has not moved


def test_a_subject_with_several_timers_due_fires_once() -> None:
    timers = Timers({})
    for due in (10, 20, 30):
        timers.add(0, due, b"u")
    timers.advance(0, 25)
    assert timers.pop_due(0) == [b"u"]
    assert timers.covers(0, b"u", 30)
    assert not timers.covers(0, b"u", 29)


def test_cancelled_timers_never_fire_and_leave_no_row() -> None:
    table: dict[bytes, bytes | None] = {}
    timers = Timers(table)
    timers.add(0, 10, b"gone")
    timers.add(0, 20, b"gone")
    timers.add(0, 15, b"kept")
    assert timers.cancel(0, b"gone") == 2
    assert timers.cancel(0, b"gone") == 0
    assert not [key for key in table if b"gone" in key]
    timers.advance(0, 100)
    assert timers.pop_due(0) == [b"kept"]


def test_the_index_rebuilt_from_the_rows_alone_is_the_same_index() -> None:
    """What a restore sees: the rows of the changelog, nothing decoded."""
    rng = random.Random(5)
    table: dict[bytes, bytes | None] = {}
    timers = Timers(table)
    for n in range(300):
        partition = rng.randrange(3)
        timers.add(partition, rng.randrange(1_000), f"s-{n % 40}".encode())
    for partition in range(3):
        timers.advance(partition, rng.randrange(500))
        timers.pop_due(partition)
    timers.cancel(0, b"s-7")
    restored = Timers(dict(table))
    assert restored.of_subject == timers.of_subject
    assert restored.clocks == timers.clocks
    assert table[clock_key(1)] == timers.clocks[1].to_bytes(8, "big")
    for partition in range(3):
        timers.advance(partition, 2_000)
        restored.advance(partition, 2_000)
        assert restored.pop_due(partition) == timers.pop_due(partition)


# ------------------------------------------------------------ in the pipeline


def _pipeline(registry: CollectorRegistry, shadow: Engine | None = None) -> Pipeline:
    return Pipeline(
        Engine(PROGRAM, partitions=4), Metrics(registry), max_event_bytes=4096, shadow=shadow
    )


def _event(n: int, user: str, ts: int, type_: str = "signup", **fields: object) -> bytes:
    document = {"event_id": f"e-{n}", "user_id": user, "type": type_, "ts": ts}
    return orjson.dumps(document | fields)


def _handle(pipeline: Pipeline, tables: Tables, n: int, value: bytes) -> list[bytes]:
    # Every message on partition 0: the pipeline decides each on the partition it came from.
    outputs = pipeline.handle(tables, SourcePosition("events", 0, n), value)
    return [output.value for output in outputs]


def _sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, PROGRAM_LABEL) or 0.0


def test_an_offer_whose_user_never_returns_is_learned_as_a_no_when_its_window_ends() -> None:
    registry = CollectorRegistry()
    pipeline, tables = _pipeline(registry), Tables(users={}, ledgers={})
    [granted] = _handle(pipeline, tables, 0, _event(0, "u-gone", START))
    assert orjson.loads(granted)["status"] == "granted"
    gone = open_rows(tables, "users").get(b"u-gone")
    assert len(gone.pending) == 1
    # Other users' events move the partition's event time; u-gone sends nothing more.
    _handle(pipeline, tables, 1, _event(1, "u-busy", START + WINDOW_MS - HOUR_MS))
    assert open_rows(tables, "users").get(b"u-gone").pending == gone.pending
    assert _sample(registry, "rewardstream_offers_timed_out_total") == 0
    steps = _sample(registry, "rewardstream_model_updates_total")
    _handle(pipeline, tables, 2, _event(2, "u-busy", START + WINDOW_MS, "page_view"))
    after = open_rows(tables, "users").get(b"u-gone")
    assert after.pending == ()
    assert after.rewards_granted == 1
    assert after.rewards_redeemed == 0
    assert _sample(registry, "rewardstream_offers_timed_out_total") == 1
    assert _sample(registry, "rewardstream_model_updates_total") == steps + 1
    # Its timer went with it; u-busy's own offer keeps one.
    assert not [key for key in tables.timers if key.endswith(b"u-gone")]
    assert offer_timers(tables).covers(0, LIVE_SUBJECT + b"u-busy", START + 2 * WINDOW_MS)


def test_an_answer_before_the_window_ends_leaves_the_timer_nothing_to_close() -> None:
    registry = CollectorRegistry()
    pipeline, tables = _pipeline(registry), Tables(users={}, ledgers={})
    [granted] = _handle(pipeline, tables, 0, _event(0, "u-1", START))
    decision_id = orjson.loads(granted)["decision_id"]
    answer = _event(1, "u-1", START + HOUR_MS, "reward_redeemed", decision_id=decision_id)
    _handle(pipeline, tables, 1, answer)
    steps = _sample(registry, "rewardstream_model_updates_total")
    _handle(pipeline, tables, 2, _event(2, "u-2", START + 2 * WINDOW_MS))
    assert _sample(registry, "rewardstream_offers_timed_out_total") == 0
    assert _sample(registry, "rewardstream_model_updates_total") == steps  # no second answer
    assert open_rows(tables, "users").get(b"u-1").rewards_redeemed == 1


def _traffic(users: int, events: int, seed: int) -> list[bytes]:
    """Sign-ups and purchases over a couple of months, some of them late (stamped up to
    a day before the newest, a few up to a week: their offers' windows may be over on
    arrival, and only the partition's clock as it was says when they time out)."""
    rng = random.Random(seed)
    lines, newest = [], START
    for n in range(events):
        newest += rng.randrange(HOUR_MS * 6)
        late = rng.choice((0, 0, 0, 0, 0, 24, 24, 24, 168))
        ts = newest - rng.randrange(late * HOUR_MS + 1)
        user = f"u-{rng.randrange(users)}"
        kind = "signup" if rng.random() < 0.5 else "purchase"
        fields: dict[str, object] = {}
        if kind == "purchase":
            fields = {"amount": 30.0, "currency": "EUR"}
        lines.append(_event(n, user, ts, kind, **fields))
    return lines


def test_a_restart_anywhere_times_out_the_same_offers_at_the_same_events() -> None:
    """The worker's tables after an assignment are their rows alone: the index and the
    clock are rebuilt from them, and the rest of the run is what it would have been."""
    lines = _traffic(users=60, events=240, seed=3)
    straight_registry = CollectorRegistry()
    straight, tables = _pipeline(straight_registry), Tables(users={}, ledgers={})
    expected = [_handle(straight, tables, n, line) for n, line in enumerate(lines)]
    timed_out = _sample(straight_registry, "rewardstream_offers_timed_out_total")
    assert timed_out >= 10  # the run is long enough for windows to end unanswered

    for cut in range(5, len(lines), 20):
        registry = CollectorRegistry()
        pipeline, first = _pipeline(registry), Tables(users={}, ledgers={})
        outputs = [_handle(pipeline, first, n, line) for n, line in enumerate(lines[:cut])]
        # A new worker: the same models (learning is not what is tested here), fresh
        # tables holding the committed rows, nothing decoded, no index.
        copies: dict[str, Any] = {name: dict(getattr(first, name)) for name in TABLE_FIELDS}
        resumed = Tables(**copies)
        outputs += [
            _handle(pipeline, resumed, n, line) for n, line in enumerate(lines[cut:], start=cut)
        ]
        assert outputs == expected, f"restarted after {cut} events"
        assert _sample(registry, "rewardstream_offers_timed_out_total") == timed_out


def test_an_erasure_leaves_no_timer_naming_the_user() -> None:
    registry = CollectorRegistry()
    pipeline, tables = _pipeline(registry), Tables(users={}, ledgers={})
    _handle(pipeline, tables, 0, _event(0, "u-erased", START))
    assert [key for key in tables.timers if b"u-erased" in key]
    request = _event(1, "u-erased", START + HOUR_MS, "erasure_requested")
    [receipt] = _handle(pipeline, tables, 1, request)
    assert orjson.loads(receipt)["removed"]["offer_timers"] is True
    assert not [key for key in tables.timers if b"u-erased" in key]


def test_a_shadow_programs_offers_time_out_in_its_own_state() -> None:
    registry = CollectorRegistry()
    challenger = dataclasses.replace(PROGRAM, id="retail-challenger")
    shadow = Engine(challenger, partitions=4)
    pipeline, tables = _pipeline(registry, shadow), Tables(users={}, ledgers={})
    _handle(pipeline, tables, 0, _event(0, "u-gone", START))
    assert open_rows(tables, "shadow_users").get(b"u-gone").pending
    _handle(pipeline, tables, 1, _event(1, "u-busy", START + WINDOW_MS))
    assert open_rows(tables, "shadow_users").get(b"u-gone").pending == ()
    assert open_rows(tables, "users").get(b"u-gone").pending == ()
    # Each program's offer was closed once, by its own engine.
    assert _sample(registry, "rewardstream_offers_timed_out_total") == 1
