"""The console's index: what a loyalty manager and a fraud analyst read from it.

Fed decision, alert and erasure-receipt records as the reader would; no Kafka.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.console.index import ConsoleIndex
from app.console.packed import pack, unpack
from app.erasure import receipt_subject

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
T0 = 1_780_000_000_000
KEY = "receipt-key"


def index(history: int = 50) -> ConsoleIndex:
    return ConsoleIndex(
        history=history,
        hold_for_ms=7 * DAY_MS,
        pending_ms=12 * HOUR_MS,
        ttl_ms=400 * DAY_MS,
        receipt_key=KEY,
    )


def decision(user: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "decision",
        "decision_id": f"d-{n:032x}",
        "event_id": f"ev-{n}",
        "user_id": user,
        "ts": T0 + n * 1000,
        "action": None,
        "channel": None,
        "value": 0.0,
        "cost": 0.0,
        "propensity": 1.0,
        "risk": 0.0,
        "status": "none",
        "reasons": ["trigger.not_a_trigger"],
        "explanation": f"decision {n}",
        "model_version": "retail-loyalty@00000000/lr+0",
        "program": "retail-loyalty",
        "hold": None,
        **fields,
    }


def held(user: str, n: int, kind: str = "risk") -> dict[str, Any]:
    return decision(
        user,
        n,
        status="held",
        hold=kind,
        action="cashback",
        value=3.25,
        cost=3.25,
        risk=0.72,
        reasons=["policy.exploit", "fraud.risk:0.72", "fraud.device.signups", "fraud.held"],
    )


def feed(idx: ConsoleIndex, record: dict[str, Any], published_ms: int = T0) -> bool:
    if record["kind"] == "fraud_alert":
        return idx.add_alert(orjson.dumps(record), record, published_ms)
    return idx.add_decision(orjson.dumps(record), record, published_ms)


def test_packed_records_come_back_byte_for_byte() -> None:
    raw = orjson.dumps(decision("u-1", 1))
    assert unpack(pack(raw)) == raw
    assert len(pack(raw)) < len(raw) / 2


def test_a_user_reads_their_newest_decisions_first_within_the_history() -> None:
    idx = index(history=3)
    for n in range(5):
        feed(idx, decision("u-1", n))
    found = idx.user("u-1")
    assert found is not None
    shown = [d["explanation"] for d in found["decisions"]]
    assert shown == ["decision 4", "decision 3", "decision 2"]
    assert idx.user("u-2") is None


def test_a_decision_read_twice_is_shown_once() -> None:
    idx = index()
    assert feed(idx, decision("u-1", 1))
    assert not feed(idx, decision("u-1", 1))
    found = idx.user("u-1")
    assert found is not None
    assert len(found["decisions"]) == 1


def test_why_not_names_each_reward_passed_over_and_the_gate_that_refused_it() -> None:
    idx = index()
    reasons = [
        "policy.exploit",
        "skip.discount-10:rule.loyal-spender:failed",
        "skip.bonus-points:contact.daily_limit",
        "skip.cashback:budget.total:exhausted",
        "skip.sms-coupon:consent.marketing",
        "skip.gift:some.future_code",
    ]
    feed(idx, decision("u-1", 1, reasons=reasons))
    found = idx.user("u-1")
    assert found is not None
    assert [(w["reward"], w["words"]) for w in found["decisions"][0]["why_not"]] == [
        ("discount-10", "rule loyal-spender failed"),
        ("bonus-points", "the daily contact limit is reached"),
        ("cashback", "the program's budget is spent"),
        ("sms-coupon", "only marketing channels, and no marketing consent"),
        ("gift", "some.future_code"),  # a code it does not know is shown as it is
    ]


def test_a_held_reward_waits_in_the_queue_oldest_first_until_its_decision_ends_it() -> None:
    idx = index()
    feed(idx, held("u-late", 20))
    feed(idx, held("u-early", 10, kind="pending"))
    queue = idx.queue(T0 + HOUR_MS)
    assert [h.user_id for h in queue] == ["u-early", "u-late"]
    risk_hold = queue[1]
    assert risk_hold.factors == ("device.signups",)
    assert risk_hold.deadline_ms == risk_hold.ts + 7 * DAY_MS
    assert queue[0].deadline_ms == queue[0].ts + 12 * HOUR_MS
    assert [h.user_id for h in idx.queue(T0, kinds=("risk",))] == ["u-late"]
    # A fraud hold a day from its deadline is flagged: unreviewed, it would be cancelled.
    assert not risk_hold.to_document(T0 + HOUR_MS)["expires_soon"]
    assert risk_hold.to_document(risk_hold.deadline_ms - HOUR_MS)["expires_soon"]
    assert risk_hold.to_document(risk_hold.deadline_ms)["overdue"]

    released = decision(
        "u-late",
        21,
        status="granted",
        action="cashback",
        reasons=["fraud.label:cleared", f"hold.released:{risk_hold.decision_id}"],
    )
    feed(idx, released)
    assert [h.user_id for h in idx.queue(T0 + HOUR_MS)] == ["u-early"]


def test_a_decision_ending_another_hold_leaves_the_open_one_in_the_queue() -> None:
    idx = index()
    feed(idx, held("u-1", 1))
    feed(idx, decision("u-1", 2, reasons=[f"hold.expired:d-{99:032x}"]))
    assert [h.decision_id for h in idx.queue(T0)] == [f"d-{1:032x}"]


def test_a_hold_takes_one_label_until_its_decision_comes_back() -> None:
    idx = index()
    feed(idx, held("u-1", 1))
    hold_id = f"d-{1:032x}"
    assert idx.mark_labelled("u-1", f"d-{2:032x}", "cleared") is None  # not the open hold
    assert idx.mark_labelled("u-1", hold_id, "cleared") is not None
    assert idx.mark_labelled("u-1", hold_id, "confirmed") is None  # a second click
    assert idx.queue(T0)[0].label_sent == "cleared"
    idx.unmark_labelled("u-1", hold_id)  # the send failed
    assert idx.mark_labelled("u-1", hold_id, "confirmed") is not None


def test_an_erasure_receipt_forgets_the_user_and_anything_of_theirs_read_later() -> None:
    idx = index()
    feed(idx, held("u-gone", 1), published_ms=T0)
    feed(idx, decision("u-kept", 2), published_ms=T0)
    alert = {
        "kind": "fraud_alert",
        "alert_id": f"a-{1:032x}",
        "event_id": "ev-2",
        "user_id": "u-kept",
        "ts": T0,
        "score": 0.9,
        "reasons": ["device.signups"],
        "evidence": {"device.signups": "3 accounts"},
        "related_users": ["u-gone", "u-other"],
        "program": "retail-loyalty",
    }
    feed(idx, alert)
    receipt = {"kind": "erasure_receipt", "subject": receipt_subject("u-gone", KEY)}
    assert idx.add_receipt(receipt, T0 + 10) == ["u-gone"]
    assert idx.user("u-gone") is None
    assert idx.queue(T0) == []
    kept = idx.user("u-kept")
    assert kept is not None
    assert kept["alerts"][0]["related_users"] == ["u-other"]
    # Published before the receipt but read after it (another partition was behind).
    assert not feed(idx, decision("u-gone", 3), published_ms=T0 + 5)
    assert idx.user("u-gone") is None
    # After the erasure, the same id is a new user.
    assert feed(idx, decision("u-gone", 4), published_ms=T0 + 20)
    back = idx.user("u-gone")
    assert back is not None
    assert [d["event_id"] for d in back["decisions"]] == ["ev-4"]


def test_users_past_the_engines_time_to_live_are_forgotten() -> None:
    idx = index()
    feed(idx, decision("u-old", 1))
    feed(idx, decision("u-new", 2, ts=T0 + 401 * DAY_MS))
    assert idx.expire() == 1
    assert idx.user("u-old") is None
    assert idx.user("u-new") is not None
