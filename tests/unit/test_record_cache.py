"""A worker's tables are written when they are drained for a commit, not after every
batch (app.pipeline.open_rows, streams.state.PartitionTable.before_drain): a row changed
by many batches of one commit is encoded once, the next batch reads what the last one
left, and what a batch only read is read from the table again."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

import app.pipeline
from app.contract import SourcePosition
from app.decisioning import Engine
from app.features.state import UserState
from app.metrics import Metrics
from app.pipeline import OpenRows, Pipeline, Tables
from app.programs import load_builtin
from streams.state import PartitionTable

RETAIL = load_builtin("retail-loyalty")
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
START = 1_772_366_400_000  # 2026-03-01T12:00:00Z


def _event(n: int, user: str, type_: str = "page_view") -> bytes:
    document = {"event_id": f"e-{n}", "user_id": user, "type": type_, "ts": START + n * 1000}
    return orjson.dumps(document)


class WorkerTables:
    """A worker's table partitions, and a fresh Tables over them for each batch (as the
    reward topology makes one per batch)."""

    def __init__(self) -> None:
        self.users = PartitionTable("users-changelog", 0)
        self.ledgers = PartitionTable("ledgers-changelog", 0)

    def batch(self) -> Tables:
        return Tables(users=self.users, ledgers=self.ledgers)


def _encodes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the user rows encoded."""
    counted: Counter[str] = Counter()
    decode, encode = app.pipeline.CODECS["users"]

    def counting(state: Any) -> bytes | None:
        counted["users"] += 1
        return encode(state)

    monkeypatch.setitem(app.pipeline.CODECS, "users", (decode, counting))
    return counted


def test_a_row_changed_by_every_batch_of_a_commit_is_encoded_once_at_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encodes = _encodes(monkeypatch)
    pipeline = Pipeline(
        Engine(PROGRAM, partitions=1), Metrics(CollectorRegistry()), max_event_bytes=4096
    )
    tables = WorkerTables()
    kinds = ["signup", "page_view", "page_view"]
    for n, kind in enumerate(kinds):  # one batch each
        [decision] = pipeline.handle(
            tables.batch(), SourcePosition("e", 0, n), _event(n, "u", kind)
        )
        assert orjson.loads(decision.value)["kind"] == "decision"
    # Nothing written yet: the batches left the row decoded, each read what the last left.
    assert encodes["users"] == 0
    assert b"u" not in tables.users.rows
    assert not tables.users.changed
    [record] = [r for r in tables.users.drain() if r.key == b"u"]
    assert encodes["users"] == 1
    assert record.value is not None
    assert UserState.from_bytes(record.value).events == 3
    assert tables.users.rows[b"u"] is record.value
    # The next commit's batches start from the row as written.
    pipeline.handle(tables.batch(), SourcePosition("e", 0, 3), _event(3, "u"))
    assert not tables.users.changed
    [record] = [r for r in tables.users.drain() if r.key == b"u"]
    assert UserState.from_bytes(record.value).events == 4
    assert encodes["users"] == 2
    assert [r for r in tables.users.drain() if r.key == b"u"] == []  # nothing left to write


def test_the_drain_writes_the_same_rows_as_writing_after_every_batch() -> None:
    """What a commit carries does not depend on when its rows were encoded."""
    lines = [_event(n, f"u{n % 3}", "signup" if n < 3 else "page_view") for n in range(12)]
    pipeline = Pipeline(
        Engine(PROGRAM, partitions=1), Metrics(CollectorRegistry()), max_event_bytes=4096
    )
    plain = Tables(users={}, ledgers={})
    for n, line in enumerate(lines):
        pipeline.handle(plain, SourcePosition("e", 0, n), line)
    pipeline = Pipeline(
        Engine(PROGRAM, partitions=1), Metrics(CollectorRegistry()), max_event_bytes=4096
    )
    worker = WorkerTables()
    written: dict[bytes, bytes | None] = {}
    for n, line in enumerate(lines):
        pipeline.handle(worker.batch(), SourcePosition("e", 0, n), line)
        if n % 5 == 4:  # a commit now and then
            written.update((r.key, r.value) for r in worker.users.drain())
    written.update((r.key, r.value) for r in worker.users.drain())
    assert written == plain.users
    assert worker.users.rows == plain.users


def test_a_row_only_read_is_read_from_the_table_again_in_the_next_batch() -> None:
    """Between batches the table may change a row no batch wrote (the time-to-live sweep
    deletes it): only the rows waiting to be written stay decoded."""
    table = PartitionTable("users-changelog", 0)
    table.rows[b"read"] = UserState(events=5).to_bytes()
    rows: OpenRows[UserState] = OpenRows(
        table, UserState.from_bytes, UserState.to_bytes, at_drain=True
    )
    assert rows.get(b"read").events == 5
    rows.put(b"changed", UserState(events=1))
    rows.release()  # the batch ended
    del table[b"read"]  # the sweep
    assert rows.get(b"read").events == 0  # as a row never written
    assert rows.get(b"changed").events == 1  # still waiting for the drain


def test_a_table_is_drained_after_its_writers_wrote_what_they_kept() -> None:
    table = PartitionTable("t-changelog", 2)
    table[b"a"] = b"1"
    table.before_drain.append(lambda: table.__setitem__(b"b", b"2"))
    drained = table.drain()
    assert {(r.key, r.value) for r in drained} == {(b"a", b"1"), (b"b", b"2")}
    assert all(r.topic == "t-changelog" and r.partition == 2 for r in drained)
    # The writers are called at every drain (what they write is theirs to say).
    assert [(r.key, r.value) for r in table.drain()] == [(b"b", b"2")]
