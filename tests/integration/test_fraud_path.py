"""Fraud on the real data path: attacks mixed into normal traffic, through the worker's
intake, link and decide stages on the real broker.

Attackers must be named in alerts and paid nothing once flagged; normal users in
the same stream must keep getting their rewards.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import orjson
import pytest

from app.assembly import load_program_setting
from app.decisioning import Engine
from app.kafkaio import event_routes, produce, read
from app.settings import Settings
from harness.bench.fraud import attack_take, undefended_program
from harness.simulation.attacks import AttackConfig, attacker_accounts, generate
from harness.simulation.events import START_MS
from harness.workerproc import WorkerProcess

pytestmark = pytest.mark.kafka

HOUR_MS = 3_600_000


async def test_attackers_are_flagged_and_unpaid_while_normal_users_keep_their_rewards(
    kafka_settings: Settings, worker: WorkerProcess
) -> None:
    config = AttackConfig(
        seed=3,
        start_ms=START_MS,
        duration_ms=36 * HOUR_MS,
        normal_users=150,
        normal_events=2_500,
        scenarios=("account_farm", "referral_ring", "forged_redemption", "bot_burst"),
    )
    events = generate(config)
    attackers = set().union(*attacker_accounts(events).values())
    normal = {e.document["user_id"] for e in events} - attackers
    await produce(
        kafka_settings.bootstrap_servers,
        kafka_settings.topic_events,
        [orjson.dumps(e.document) for e in events],
        routes=event_routes(kafka_settings),
    )
    decisions, alerts = await _outputs(kafka_settings, decisions_expected=len(events))
    assert len(decisions) == len(events)

    named = {u for a in alerts for u in (a["user_id"], *a["related_users"])}
    assert attackers <= named, f"never flagged: {sorted(attackers - named)}"

    # Once an attacker's own events are flagged, their rewards stop: per user, events are
    # decided in order, so "after" is well defined there (across users it is not).
    flagged_at: dict[str, int] = {}
    for d in sorted(decisions, key=lambda d: d["ts"]):
        if d["user_id"] in attackers and d["risk"] >= 0.6:
            flagged_at.setdefault(d["user_id"], d["ts"])
    paid_after_flag = [
        (d["user_id"], d["action"])
        for d in decisions
        if d["user_id"] in flagged_at
        and d["status"] == "granted"
        and d["ts"] > flagged_at[d["user_id"]]
    ]
    assert paid_after_flag == []
    refused = [d for d in decisions if d["user_id"] in attackers and d["status"] != "granted"]
    assert any("fraud.risk" in " ".join(d["reasons"]) for d in refused)

    # What attackers still took (rewards granted before anything showed) against what the
    # same engine without its fraud layer pays them for the same stream.
    taken = sum(
        d["cost"] for d in decisions if d["user_id"] in attackers and d["status"] == "granted"
    )
    undefended = attack_take(
        Engine(
            undefended_program(load_program_setting(kafka_settings.program)),
            seed=kafka_settings.seed,
            partitions=4,
        ),
        events,
    )
    undefended_cost = sum(t.cost for name, t in undefended.items() if name != "normal")
    assert taken <= 0.5 * undefended_cost, (taken, undefended_cost)

    # Normal users keep their rewards: those still around once their pending period as
    # new accounts is over (the program holds a newcomer's first reward that long).
    pending = load_program_setting(kafka_settings.program).fraud.new_account_pending
    wait = 0 if pending is None else pending.seconds * 1000
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for e in events:
        user, ts = e.document["user_id"], int(e.document["ts"])
        first[user] = min(first.get(user, ts), ts)
        last[user] = max(last.get(user, ts), ts)
    settled = {u for u in normal if last[u] > first[u] + wait}
    rewarded = {d["user_id"] for d in decisions if d["status"] == "granted"}
    assert len(settled) >= 50
    assert len(settled & rewarded) >= 0.9 * len(settled)
    falsely_flagged = normal & named
    why = {r for a in alerts if a["user_id"] in falsely_flagged for r in a["reasons"]}
    assert len(falsely_flagged) <= 0.02 * len(normal), (sorted(falsely_flagged), why)


async def _outputs(
    settings: Settings, *, decisions_expected: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every decision and alert, by id: read until the decisions arrived, then quiet for 5 s."""
    found: dict[str, dict[str, Any]] = {}
    topics = [settings.topic_decisions, settings.topic_fraud_alerts]

    def decided() -> int:
        return sum(1 for key in found if key.startswith("d-"))

    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, topics, idle_timeout_s=120.0)
    async with aclosing(records):
        async for record in records:
            document = orjson.loads(record.value)
            found[document.get("decision_id") or document["alert_id"]] = document
            if decided() >= decisions_expected:
                break
    async for record in read(settings.bootstrap_servers, topics, idle_timeout_s=5.0):
        document = orjson.loads(record.value)
        found[document.get("decision_id") or document["alert_id"]] = document
    decisions = [d for d in found.values() if d["kind"] == "decision"]
    alerts = [d for d in found.values() if d["kind"] == "fraud_alert"]
    return decisions, alerts
