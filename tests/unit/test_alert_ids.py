"""Fraud alert ids: one per alert, the same whenever the same input is processed again.

Consumers deduplicate alerts by ``alert_id`` (docs/contract.md): two alerts sharing an
id would lose the second, and an id that changed between runs would break replay.
"""

from __future__ import annotations

import dataclasses
import re

import msgspec
import orjson

from app.contract import Event, FraudAlert
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.fraud import Linker
from app.programs import load_builtin

RETAIL = load_builtin("retail-loyalty")
PROGRAM = dataclasses.replace(
    RETAIL, fraud=dataclasses.replace(RETAIL.fraud, new_account_pending=None)
)
T0 = 1_772_366_400_000
MINUTE = 60_000
ALERT_ID = re.compile(r"a-[0-9a-f]{32}")


def purchase(amount: float, ts: int = T0, event_id: str = "ev-1") -> Event:
    return Event(
        event_id=event_id,
        user_id="u-1",
        type="purchase",
        ts=ts,
        amount=amount,
        currency="EUR",
        channel="web",
    )


def sign_up() -> Event:
    return Event(
        event_id="ev-0",
        user_id="u-1",
        type="signup",
        ts=T0 - 60 * MINUTE,
        channel="web",
        attributes={"age": 30, "country": "DE"},
    )


# One purchase, then copies: the same bytes twice (a retried batch), then the same id
# twice more with bigger amounts (replays edited to earn twice).
STREAM = (
    sign_up(),
    purchase(30.0),
    purchase(30.0),
    purchase(30.0),
    purchase(300.0, ts=T0 + MINUTE),
    purchase(900.0, ts=T0 + 2 * MINUTE),
)


def alerts_of(events: tuple[Event, ...], user: UserState | None = None) -> list[FraudAlert]:
    engine, linker = Engine(PROGRAM, seed=7), Linker()
    user, ledger = user or UserState(), Ledger()
    found: list[FraudAlert] = []
    for event in events:
        outcome = engine.process(user, ledger, event, links=linker.link(event))
        user, ledger = outcome.user, outcome.ledger
        found += [r for r in outcome.records if isinstance(r, FraudAlert)]
    return found


def test_every_copy_of_an_event_raises_an_alert_with_its_own_id() -> None:
    alerts = alerts_of(STREAM)
    replays = [a for a in alerts if a.event_id == "ev-1"]
    assert [a.reasons[0] for a in replays] == [
        "event.replayed",
        "event.replayed",
        "event.replayed_altered",
        "event.replayed_altered",
    ]
    ids = [a.alert_id for a in alerts]
    assert all(ALERT_ID.fullmatch(alert_id) for alert_id in ids)
    assert len(set(ids)) == len(ids), "a consumer deduplicating by alert_id would lose alerts"


def test_the_same_input_gives_the_same_ids() -> None:
    first, second = alerts_of(STREAM), alerts_of(STREAM)
    assert first
    assert [a.to_json() for a in first] == [a.to_json() for a in second]


def test_the_count_behind_the_ids_survives_the_stored_state() -> None:
    """A worker restarted from its stored rows goes on numbering where it stopped."""
    engine, ledger = Engine(PROGRAM, seed=7), Ledger()
    user = UserState()
    for event in STREAM[:3]:
        outcome = engine.process(user, ledger, event)
        user, ledger = outcome.user, outcome.ledger
    (before,) = [r for r in outcome.records if isinstance(r, FraudAlert)]
    restored = UserState.from_bytes(user.to_bytes())
    assert restored == user
    assert restored.repeats == 1
    (after,) = [
        r for r in engine.process(restored, ledger, STREAM[3]).records if isinstance(r, FraudAlert)
    ]
    assert after.reasons == before.reasons == ("event.replayed",)
    assert after.alert_id != before.alert_id


def test_a_row_stored_before_the_count_reads_as_none_counted() -> None:
    document = orjson.loads(msgspec.json.encode(UserState(events=3)))
    del document["repeats"]
    state = UserState.from_bytes(orjson.dumps(document))
    assert (state.events, state.repeats, state.messages) == (3, 0, 3)
