"""Crashes on the real broker with ``REWARDSTREAM_PROCESSING_GUARANTEE=at_least_once``: the
promise of that mode (docs/reliability.md) is weaker than exactly-once, and this is what
it keeps through SIGKILLs under the whole traffic. Every event is decided at least once
(a crash may publish a decision again, with the same ``decision_id``); each user's state
counts each event once; no decision is charged twice to a budget or to a reward's stock.
Run by ``make test-at-least-once`` (CI runs it).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from app.assembly import load_program_setting
from app.decisioning.ledger import Ledger, ledger_key
from app.features.state import UserState
from app.settings import Settings
from harness.workerproc import WorkerProcess
from tests.reliability.helpers import (
    Lives,
    killed_under_whole_traffic,
    latest_state,
    read_to_end,
    whole_traffic_base,
    with_own_control_topics,
)
from topologies import TABLE_LEDGER, TABLE_USER_STATE

pytestmark = [pytest.mark.kafka, pytest.mark.at_least_once]

EVENTS = 2_000
KILLS = 3


async def test_sigkill_at_least_once_decides_every_event_and_charges_no_decision_twice(
    kafka_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[[Settings, Path], WorkerProcess],
) -> None:
    settings = dataclasses.replace(
        with_own_control_topics(kafka_settings),
        processing_guarantee="at_least_once",
        checkpoint_interval_s=1,
        worker_id="crashing",
    )
    base = whole_traffic_base(settings, events=EVENTS, users=300, seed=37)
    lives = Lives(start_worker)
    # Every message sent (base, answers, labels) has a decision once this returns: none lost.
    traffic = await killed_under_whole_traffic(
        settings, base, lives, tmp_path, kills=KILLS, seed=37, pauses_seed=7
    )

    dead = await read_to_end(settings.bootstrap_servers, settings.topic_dead_letter)
    assert not dead, Counter(orjson.loads(r.value or b"{}").get("reason") for r in dead)
    sent_ids = {sent.document["event_id"] for sent in traffic.sent}
    records = await read_to_end(settings.bootstrap_servers, settings.topic_decisions)
    decisions = [(r.partition, orjson.loads(r.value or b"")) for r in records]
    decided_ids = {document["event_id"] for _, document in decisions}
    assert decided_ids == sent_ids, (len(sent_ids - decided_ids), len(decided_ids - sent_ids))
    # A decision published again is the same decision: one id per event.
    ids_of_event: dict[str, set[str]] = defaultdict(set)
    for _, document in decisions:
        ids_of_event[document["event_id"]].add(document["decision_id"])
    assert all(len(ids) == 1 for ids in ids_of_event.values())
    copies = len(decisions) - len({d["decision_id"] for _, d in decisions})
    print(f"{len(decisions)} decision records for {len(sent_ids)} events ({copies} again)")

    # Each user's state counts each of the user's events once, whatever was redone.
    users = {
        key.decode(): UserState.from_bytes(value)
        for key, value in (await latest_state(settings, TABLE_USER_STATE)).items()
    }
    events_of = Counter(
        user for user, _ in {(s.document["user_id"], s.document["event_id"]) for s in traffic.sent}
    )
    state = {u: users.get(u, UserState()).events for u in events_of}
    wrong = {u: (state[u], n) for u, n in events_of.items() if state[u] != n}
    assert not wrong, f"{len(wrong)} users counted an event twice or not at all: {wrong}"

    # No decision charged twice: each partition's ledger spent at most what its distinct
    # granted decisions cost, and used each reward's stock at most once for each of them.
    program = load_program_setting(settings.program)
    ledgers = await latest_state(settings, TABLE_LEDGER)
    for partition in range(settings.partitions):
        granted: dict[str, dict[str, object]] = {}
        for p, d in decisions:
            if p == partition and d["status"] == "granted":
                kept = granted.get(d["decision_id"])
                if kept is None or float(d["cost"]) > float(str(kept["cost"])):
                    granted[d["decision_id"]] = d
        ledger = Ledger.from_bytes(ledgers.get(ledger_key(program.id, partition)))
        cost = sum(float(str(d["cost"])) for d in granted.values())
        assert ledger.spent_total <= cost + 1e-6, (partition, ledger.spent_total, cost)
        stock = Counter(str(d["action"]) for d in granted.values())
        over = {r: n for r, n in ledger.stock_used.items() if n > stock[r]}
        assert not over, (partition, over, stock)
