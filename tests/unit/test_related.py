"""Risk that reaches accounts other than the one that raised it: the accounts a fraud alert
names as related, and users who send the same event again and again."""

from __future__ import annotations

import dataclasses
import itertools

import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.contract import Decision, Event, FraudAlert, SourcePosition
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.fraud import LinkFacts
from app.fraud.signals import RELATED_WEIGHT, RelatedNote
from app.metrics import Metrics
from app.pipeline import RELATED_HEADER, Pipeline, Tables, is_related_note
from app.programs import load_builtin

RETAIL = load_builtin("retail-loyalty")
# Without the pending period: these follow risk, not a new account's wait.
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
T0 = 1_772_366_400_000
HOUR = 3_600_000
ids = itertools.count()


def event(user: str, type_: str, ts: int, **fields: object) -> Event:
    return Event(event_id=f"e{next(ids)}", user_id=user, type=type_, ts=ts, **fields)  # type: ignore[arg-type]


def decide(
    engine: Engine, user: UserState, item: Event, links: tuple[LinkFacts, ...] = ()
) -> tuple[UserState, Decision | None, list[FraudAlert]]:
    outcome = engine.process(user, Ledger(), item, links=links)
    decisions = [r for r in outcome.records if isinstance(r, Decision)]
    alerts = [r for r in outcome.records if isinstance(r, FraudAlert)]
    return outcome.user, (decisions[0] if decisions else None), alerts


def test_a_note_becomes_evidence_on_the_accounts_next_decision_only() -> None:
    engine = Engine(PROGRAM, seed=1)
    user, _, _ = decide(engine, UserState(), event("u", "signup", T0, channel="web"))
    user = engine.note_related(user, RelatedNote("a-farm-1", "u-farmer", T0 + HOUR))
    user = engine.note_related(user, RelatedNote("a-farm-1", "u-farmer", T0 + HOUR))  # again
    assert len(user.risk.related) == 1
    purchase = event("u", "purchase", T0 + 2 * HOUR, amount=40.0, currency="EUR")
    user, decision, _ = decide(engine, user, purchase)
    assert decision is not None
    assert "fraud.account.related" in decision.reasons
    assert decision.risk == pytest.approx(RELATED_WEIGHT)
    assert decision.status not in ("held", "blocked")  # on its own, under the hold threshold
    assert user.risk.related == ()  # used once
    later, _, _ = decide(engine, user, event("u", "page_view", T0 + 3 * HOUR))
    assert later.risk.related == ()


def test_a_note_and_a_weak_signal_of_its_own_add_up_to_an_alert() -> None:
    engine = Engine(PROGRAM, seed=1)
    user, _, _ = decide(engine, UserState(), event("u", "signup", T0, channel="web"))
    user = engine.note_related(user, RelatedNote("a-1", "u-x", T0 + HOUR))
    shared = (LinkFacts("device", accounts_24h=4, signups_24h=3),)  # 0.3 on its own
    session = event("u", "session_start", T0 + 2 * HOUR, channel="web")
    _, decision, alerts = decide(engine, user, session, shared)
    assert decision is not None
    assert {"fraud.account.related", "fraud.device.signups"} <= set(decision.reasons)
    # Noisy-OR: 1 - (1 - 0.4)(1 - 0.3), over the alert threshold; neither alone is.
    assert decision.risk == pytest.approx(0.58)
    assert len(alerts) == 1
    assert "account.related" in alerts[0].reasons
    assert "u-x" in alerts[0].related_users


def test_with_fraud_scoring_off_a_note_changes_nothing() -> None:
    off = dataclasses.replace(PROGRAM, fraud=dataclasses.replace(PROGRAM.fraud, enabled=False))
    engine = Engine(off, seed=1)
    user, _, _ = decide(engine, UserState(), event("u", "signup", T0, channel="web"))
    assert engine.note_related(user, RelatedNote("a-1", "u-x", T0)) is user


def test_identical_copies_add_up_to_a_hold() -> None:
    engine = Engine(PROGRAM, seed=1)
    user, _, _ = decide(engine, UserState(), event("u", "signup", T0, channel="web"))
    purchase = event("u", "purchase", T0 + HOUR, amount=40.0, currency="EUR")
    user, first, _ = decide(engine, user, purchase)
    assert first is not None
    risks = []
    for _ in range(4):
        outcome = engine.process(user, Ledger(), purchase)
        assert outcome.duplicate
        user = outcome.user
        risks.append(user.risk.level)
    assert risks == sorted(risks)
    assert risks[0] < PROGRAM.fraud.hold <= risks[-1]
    nxt = event("u", "purchase", T0 + HOUR + 60_000, amount=40.0, currency="EUR")
    _, decision, _ = decide(engine, user, nxt)
    assert decision is not None
    assert decision.status in ("held", "blocked")


def signup(user: str, device: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"s-{user}",
            "user_id": user,
            "type": "signup",
            "ts": ts,
            "channel": "web",
            "device_id": device,
        }
    )


def test_the_pipeline_sends_each_related_account_its_note_and_applies_it() -> None:
    """A device farm: the accounts that signed up before the device looked like a farm
    are named in the alert of the one that tipped it, and each gets the note."""
    registry = CollectorRegistry()
    pipeline = Pipeline(Engine(PROGRAM, seed=1), Metrics(registry), max_event_bytes=4096)
    tables = Tables(users={}, ledgers={})
    alerts: list[dict[str, object]] = []
    for n in range(7):
        source = SourcePosition("events", 0, n, f"u-{n}".encode(), None)
        for output in pipeline.handle(tables, source, signup(f"u-{n}", "dev-farm", T0 + n)):
            if output.role == "fraud-alerts":
                alerts.append(orjson.loads(output.value))
    assert alerts, "the farm raised no alert"
    named = {str(u) for a in alerts for u in a["related_users"]}  # type: ignore[attr-defined]
    assert "u-0" in named
    notes = registry.get_sample_value("rewardstream_related_notes_total")
    assert notes is not None
    assert notes >= 1
    # u-0's next event, from another device, carries the note as evidence.
    later = orjson.dumps(
        {"event_id": "p-0", "user_id": "u-0", "type": "page_view", "ts": T0 + HOUR}
    )
    [decision] = pipeline.handle(tables, SourcePosition("events", 0, 99, b"u-0", None), later)
    assert "fraud.account.related" in orjson.loads(decision.value)["reasons"]


def test_a_note_is_an_internal_record_marked_by_its_header() -> None:
    assert is_related_note(((RELATED_HEADER, b"1"),))
    assert not is_related_note((("rewardstream-source", b"events/0/1"),))
    assert not is_related_note(None)
