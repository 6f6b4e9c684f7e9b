"""A hostile stream through the real worker: garbage, huge and deeply nested payloads,
NaN and Infinity, odd unicode, timestamps far away, repeated event ids, answers to
decisions that never existed. Every message ends as a decision, a dead letter with
its reason, or a counted repeat; the counts reconcile; the worker stays up."""

from __future__ import annotations

import random
import re
from collections import Counter
from contextlib import aclosing

import orjson
import pytest

from app.kafkaio import produce, read
from app.settings import Settings
from harness.workerproc import WorkerProcess

pytestmark = pytest.mark.kafka
TS = 1_772_366_400_000


def hostile_messages(rng: random.Random) -> list[bytes]:
    def event(n: int, **fields: object) -> dict[str, object]:
        return {"event_id": f"h-{n}", "user_id": f"u-{n % 7}", "type": "page_view", "ts": TS + n}

    messages: list[bytes] = [
        b"[" * 100_000 + b"]" * 100_000,  # nesting far beyond any parser's limit
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b"x" * 200_000,  # larger than max_event_bytes
        orjson.dumps(event(1))[:-1] + b',"amount":NaN}',
        orjson.dumps(event(2) | {"type": "purchase", "currency": "EUR"})[:-1] + b',"amount":1e999}',
        b'{"event_id":"h-3","user_id":"\\ud800","type":"signup","ts":1772366400000}',
        orjson.dumps(event(4) | {"ts": "9999-12-31T23:59:59Z"}),
        orjson.dumps(event(5) | {"ts": "0001-01-01T00:00:00Z"}),
        orjson.dumps(event(6) | {"ts": True}),
        orjson.dumps(event(7) | {"user_id": 7}),
        orjson.dumps(event(8) | {"attributes": {"deep": [[[[[[[[[[[[1]]]]]]]]]]]]}}),
        b"\x00\x01\x02\xff",
        b"",
        b"null",
    ]
    # Valid but strange: they are decided like any other event.
    messages += [
        orjson.dumps(event(20) | {"user_id": "\u202eevil\u200b"}),
        orjson.dumps(event(21) | {"user_id": "emoji-\U0001f600"}),
        orjson.dumps(
            event(22)
            | {"type": "reward_redeemed", "decision_id": "d-00000000000000000000000000000000"}
        ),
        orjson.dumps(event(23) | {"type": "reward_dismissed", "decision_id": "d-does-not-exist"}),
    ]
    valid = [orjson.dumps(event(100 + n)) for n in range(60)]
    messages += valid + rng.sample(valid, 10)  # ten repeated event ids
    messages += [rng.randbytes(rng.randint(1, 64)) for _ in range(20)]
    rng.shuffle(messages)
    return messages


def metric_total(page: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", page, re.M))


async def test_hostile_stream_reconciles_and_the_worker_survives(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    messages = hostile_messages(random.Random(11))
    await produce(kafka_settings.bootstrap_servers, kafka_settings.topic_events, messages)

    topics = [kafka_settings.topic_decisions, kafka_settings.topic_dead_letter]
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    dead_offsets: set[tuple[int, int]] = set()
    # read() is an async generator, closed here (so its consumer stops).
    records = read(kafka_settings.bootstrap_servers, topics, idle_timeout_s=20.0)
    async with aclosing(records):
        async for record in records:
            document = orjson.loads(record.value)
            kinds[document["kind"]] += 1
            if document["kind"] == "dead_letter":
                reasons[document["reason"]] += 1
                dead_offsets.add((document["source"]["partition"], document["source"]["offset"]))

    page = worker.get("/metrics")[1].decode()
    decided = metric_total(page, "rewardstream_events_total")
    dead = metric_total(page, "rewardstream_dead_letters_total")
    repeats = metric_total(page, "rewardstream_duplicate_events_total")
    assert worker.get("/ready")[0] == 200, "the worker did not survive the stream"
    assert repeats == 10
    assert kinds["decision"] == decided
    assert kinds["dead_letter"] == dead == len(dead_offsets)  # one per message, never two
    assert decided + dead + repeats == len(messages)
    assert "internal_error" not in reasons, reasons  # every rejection is a named reason
    assert {"bad_json", "oversized", "schema", "bad_timestamp"} <= set(reasons)
