"""The console's program view: budgets and stock from the ledger the engine spends from,
and the last hour of grants, redemptions, alerts and latency."""

from __future__ import annotations

from typing import Any

from app.assembly import build_engine
from app.console.program import HOUR_MS, ProgramStats
from app.decisioning.ledger import Ledger, ledger_key
from app.settings import Settings

NOW = 1_780_000_000_000
PARTITIONS = 4


def stats() -> ProgramStats:
    engine = build_engine(Settings(partitions=PARTITIONS))
    return ProgramStats(engine.program, partitions=PARTITIONS, bucket_ms=engine.bucket_ms)


def granted(user: str, n: int, reward: str = "cashback", ts: int = NOW) -> dict[str, Any]:
    return {
        "decision_id": f"d-{n:032x}",
        "event_id": f"ev-{n}",
        "user_id": user,
        "ts": ts,
        "status": "granted",
        "action": reward,
    }


def redemption(user: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"answer-{user}-{n}",
        "user_id": user,
        "type": "reward_redeemed",
        "decision_id": f"d-{n:032x}",
    }


def by_reward(view: dict[str, Any], reward: str) -> tuple[int, int]:
    row = next(r for r in view["last_hour"]["by_reward"] if r["reward"] == reward)
    return row["granted"], row["redeemed"]


def test_budgets_and_stock_left_are_every_partitions_share_less_its_ledger() -> None:
    program = stats()
    spent = Ledger().charge(
        ts=NOW, cost=40.0, reward_id="discount-10", bucket_ms=program.bucket_ms, keep_ms=0
    )
    spent = spent.charge(
        ts=NOW, cost=10.0, reward_id="discount-10", bucket_ms=program.bucket_ms, keep_ms=0
    )
    program.add_ledger(ledger_key("retail-loyalty", 1), spent.to_bytes())
    program.add_decision(granted("u-1", 1, ts=NOW), NOW)
    budgets = {b["budget"]: b for b in program.budgets()["left"]}
    assert budgets["total"]["left"] == 100_000 - 50.0
    assert budgets["total"]["limit"] == 100_000
    assert budgets["1d"]["left"] == 5_000 - 50.0
    stock = {s["reward"]: s for s in program.stock()}
    assert stock["discount-10"] == {"reward": "discount-10", "stock": 5000, "left": 4998}

    program.add_ledger(ledger_key("retail-loyalty", 1), None)  # a tombstone: the row is gone
    assert {b["budget"]: b["left"] for b in program.budgets()["left"]}["total"] == 100_000


def test_grants_and_redemptions_by_reward_over_the_last_hour() -> None:
    program = stats()
    program.add_decision(granted("u-1", 1, "cashback"), NOW - 2 * HOUR_MS)  # too old
    program.add_decision(granted("u-2", 2, "cashback"), NOW - 60_000)
    program.add_decision(granted("u-3", 3, "free-shipping"), NOW - 60_000)
    program.add_event(redemption("u-2", 2), NOW - 30_000)
    program.add_event(redemption("u-2", 2), NOW - 20_000)  # the same answer again
    program.add_event(redemption("u-9", 3), NOW - 20_000)  # someone else's grant: forged
    program.add_event(redemption("u-4", 4), NOW - 10_000)  # read before its grant
    program.add_event(redemption("u-2", 2) | {"decision_id": ["d-x"]}, NOW)  # a producer's junk
    program.add_decision(granted("u-4", 4, "free-shipping"), NOW - 15_000)
    view = program.view(NOW)
    assert by_reward(view, "cashback") == (1, 1)
    assert by_reward(view, "free-shipping") == (2, 1)
    assert by_reward(view, "discount-10") == (0, 0)  # every reward of the program is listed


def test_alerts_by_reason_and_latency_from_produce_to_publish() -> None:
    program = stats()
    program.add_alert({"reasons": ["device.signups", "velocity.purchases"]}, NOW - 1000)
    program.add_alert({"reasons": ["device.signups"]}, NOW - 1000)
    # An event read before its decision, and a decision read before its event.
    program.add_event({"user_id": "u-1", "event_id": "ev-1", "type": "purchase"}, NOW - 500)
    program.add_decision(granted("u-1", 1) | {"event_id": "ev-1"}, NOW - 400)
    program.add_decision(granted("u-2", 2) | {"event_id": "ev-2"}, NOW - 100)
    program.add_event({"user_id": "u-2", "event_id": "ev-2", "type": "purchase"}, NOW - 400)
    hour = program.view(NOW)["last_hour"]
    assert hour["alerts_by_reason"] == {"device.signups": 2, "velocity.purchases": 1}
    assert hour["latency_ms"]["count"] == 2
    assert hour["latency_ms"]["p99"] == 300
    assert hour["decisions_by_status"] == {"granted": 2}


def test_an_erased_users_pairings_are_dropped() -> None:
    program = stats()
    program.add_decision(granted("u-1", 1), NOW)
    program.add_event({"user_id": "u-1", "event_id": "ev-9", "type": "page_view"}, NOW)
    program.forget("u-1")
    assert dict(program.granted) == {}
    assert dict(program.produced) == {}
