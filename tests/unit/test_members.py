"""Bringing a running program's members in: ``member_imported`` on the members topic.

A program switched onto rewardstream already has members. Without an import the first
event seen of each starts the program's new-account pending period (retail: 12 h), and
every member's first paid reward would wait it out. An import says since when the user
has been a member: the pending period counts from then. It is a control event (only the
member system may send it, on a topic of its own), it is no trigger, and it only ever
moves ``first_ts`` earlier: it cannot make someone look newer, nor erase their risk,
holds or history.
"""

from __future__ import annotations

import itertools
from typing import Any

import fastjsonschema
import msgspec
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.contract import Decision, Event, SourcePosition
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.fraud import LinkState
from app.fraud.view import LinkView
from app.metrics import Metrics
from app.pipeline import Output, Pipeline, Tables
from app.programs import load_builtin

RETAIL = load_builtin("retail-loyalty")  # new accounts' first rewards wait 12 h
START = 1_772_366_400_000  # 2026-03-01T12:00:00Z
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
YEARS_AGO = START - 2 * 365 * DAY
check_decision = fastjsonschema.compile(load_schema("decision"))
ids = itertools.count()


class FixedClock:
    """The worker's clock, at START."""

    def now_ms(self) -> int:
        return START

    def monotonic_s(self) -> float:
        return 0.0


def make_pipeline() -> Pipeline:
    return Pipeline(
        Engine(RETAIL, partitions=1),
        Metrics(CollectorRegistry(), clock=FixedClock()),
        max_event_bytes=65_536,
        max_ahead_ms=HOUR,
    )


def document(type_: str, user: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e-{next(ids)}", "user_id": user, "type": type_, "ts": ts, **fields}


def member_imported(user: str, since: int, ts: int = START - MINUTE, **profile: Any) -> bytes:
    return orjson.dumps(
        document("member_imported", user, ts, attributes={"member_since": since, **profile})
    )


def purchase(user: str, ts: int = START, amount: float = 60.0) -> bytes:
    return orjson.dumps(
        document("purchase", user, ts, amount=amount, currency="EUR", channel="web")
    )


def signup(user: str, ts: int = START) -> bytes:
    return orjson.dumps(document("signup", user, ts, channel="web", attributes={"age": 30}))


class Feed:
    """One pipeline's tables, fed message by message from a named input."""

    def __init__(self) -> None:
        self.pipeline = make_pipeline()
        self.tables = Tables(users={}, ledgers={})
        self.offsets = itertools.count()

    def send(self, raw: bytes, role: str) -> list[Output]:
        key = orjson.loads(raw)["user_id"].encode()
        source = SourcePosition(role, 0, next(self.offsets), key)
        view = LinkView(lambda _: LinkState())
        outputs = self.pipeline.decide(self.tables, 0, source, raw, view, role=role)
        self.pipeline.flush(self.tables)
        return outputs

    def decide(self, raw: bytes, role: str = "events") -> dict[str, Any]:
        """The one decision on ``raw`` (no alert, no dead letter)."""
        [output] = self.send(raw, role)
        assert output.role == "decisions", orjson.loads(output.value)
        decision: dict[str, Any] = orjson.loads(output.value)
        check_decision(decision)
        return decision

    def user(self, user: str) -> UserState:
        return UserState.from_bytes(self.tables.users.get(user.encode()))


# ------------------------------------------------------------------ the import itself


def test_an_import_is_decided_as_no_reward_saying_the_member_was_imported() -> None:
    feed = Feed()
    decision = feed.decide(member_imported("m-1", YEARS_AGO, age=41, country="DE"), "members")
    assert (decision["status"], decision["action"], decision["cost"]) == ("none", None, 0.0)
    assert "member.imported" in decision["reasons"]
    assert "trigger.not_a_trigger" in decision["reasons"]
    state = feed.user("m-1")
    assert state.first_ts == YEARS_AGO
    assert state.profile == {"age": 41, "country": "DE"}  # the program's profile fields
    assert state.rewards_granted == 0
    assert state.risk.hold is None


def test_an_imported_members_first_paid_reward_is_granted_not_held() -> None:
    feed = Feed()
    feed.decide(member_imported("m-1", YEARS_AGO), "members")
    feed.decide(member_imported("m-2", YEARS_AGO), "members")
    for decision in (feed.decide(purchase("m-1")), feed.decide(signup("m-2"))):
        assert decision["status"] == "granted", decision["reasons"]
        assert decision["cost"] > 0  # a paid reward: the kind the pending period holds
        assert not [r for r in decision["reasons"] if "pending" in r]
    assert feed.user("m-1").rewards_granted == feed.user("m-2").rewards_granted == 1


def test_a_new_user_who_was_not_imported_has_a_first_paid_reward_held() -> None:
    feed = Feed()
    for decision in (feed.decide(purchase("n-1")), feed.decide(signup("n-2"))):
        assert decision["status"] == "held"
        assert "fraud.new_account_pending" in decision["reasons"]


def test_the_pending_period_counts_from_membership() -> None:
    feed = Feed()
    feed.decide(member_imported("joined-2h-ago", START - 2 * HOUR), "members")
    feed.decide(member_imported("joined-13h-ago", START - 13 * HOUR), "members")
    recent = feed.decide(purchase("joined-2h-ago"))
    assert recent["status"] == "held"
    assert "fraud.new_account_pending" in recent["reasons"]
    assert feed.decide(purchase("joined-13h-ago"))["status"] == "granted"


def test_member_since_ahead_of_the_clock_is_dead_lettered() -> None:
    feed = Feed()
    [dead] = feed.send(member_imported("m-9", START + HOUR + 1, ts=START), "members")
    letter = orjson.loads(dead.value)
    assert (dead.role, letter["reason"]) == ("dead-letter", "ts_in_future")
    assert letter["error"].startswith("attributes.member_since ")
    assert b"m-9" not in feed.tables.users  # nothing of the user was kept
    # Up to the bound it is taken (a member from "now" still waits out the period).
    feed.decide(member_imported("m-9", START + HOUR, ts=START), "members")
    assert feed.user("m-9").first_ts == START


@pytest.mark.parametrize(
    "attributes",
    [{}, {"member_since": "2019-05-01"}, {"member_since": 1_556_668_800}, {"age": 30}],
    ids=["nothing", "a-date-string", "seconds", "no-member-since"],
)
def test_an_import_without_a_member_since_in_epoch_ms_is_a_schema_error(
    attributes: dict[str, Any],
) -> None:
    feed = Feed()
    raw = orjson.dumps(document("member_imported", "m-3", START, attributes=attributes))
    [dead] = feed.send(raw, "members")
    letter = orjson.loads(dead.value)
    assert letter["reason"] == "schema"
    assert "member_since" in letter["error"]


def test_an_import_names_no_device_nor_address_so_it_links_no_accounts() -> None:
    feed = Feed()
    for field in ({"device_id": "importer-1"}, {"ip": "198.51.100.1"}):
        raw = orjson.dumps(
            document("member_imported", "m-4", START, attributes={"member_since": YEARS_AGO})
            | field
        )
        [dead] = feed.send(raw, "members")
        assert orjson.loads(dead.value)["reason"] == "schema"
        assert "must not be there" in orjson.loads(dead.value)["error"]


def test_only_the_members_topic_carries_imports() -> None:
    feed = Feed()
    for role in ("events", "consent", "fraud-labels"):
        [dead] = feed.send(member_imported("m-5", YEARS_AGO), role)
        letter = orjson.loads(dead.value)
        assert letter["reason"] == "unauthorized"
        assert "send it to the members topic" in letter["error"]
    assert b"m-5" not in feed.tables.users
    # So the member's first paid reward is held, as any new account's.
    assert feed.decide(purchase("m-5"))["status"] == "held"


# ------------------------------------------------------------------ someone already known


def engine_run(*events: Event, engine: Engine | None = None) -> tuple[UserState, list[Decision]]:
    engine = engine or Engine(RETAIL)
    state, ledger, decisions = UserState(), Ledger(), []
    for event in events:
        outcome = engine.process(state, ledger, event)
        state, ledger = outcome.user, outcome.ledger
        [decision, *_] = outcome.records
        assert isinstance(decision, Decision)
        decisions.append(decision)
    return state, decisions


def event(type_: str, ts: int, user: str = "u-1", **fields: Any) -> Event:
    return Event(event_id=f"e-{next(ids)}", user_id=user, type=type_, ts=ts, **fields)


def imported(since: int, ts: int, **profile: Any) -> Event:
    return event("member_imported", ts, attributes={"member_since": since, **profile})


def test_first_ts_only_moves_earlier() -> None:
    first = event("page_view", START)
    state, _ = engine_run(first, imported(START + HOUR, START + 2 * HOUR))
    assert state.first_ts == START  # a later membership date makes no one newer
    state, _ = engine_run(first, imported(START - DAY, START + HOUR))
    assert state.first_ts == START - DAY
    state, _ = engine_run(
        first, imported(START - DAY, START + HOUR), imported(START - HOUR, START + 2 * HOUR)
    )
    assert state.first_ts == START - DAY  # a second import cannot undo the first either
    # The import is itself an event the user was seen at.
    state, _ = engine_run(imported(START + HOUR, START))
    assert state.first_ts == START


def test_an_import_changes_nothing_but_first_ts_and_profile_beyond_what_any_event_does() -> None:
    """What an import does to a user with a history is what a page view at the same time
    does (counted as an event), but for the membership date and the profile it brings."""
    history = [
        event("signup", START - 30 * DAY, channel="web", attributes={"age": 30}),
        event("purchase", START - 10 * DAY, amount=80.0, currency="EUR", channel="web"),
        event("session_start", START - 9 * DAY, channel="mobile"),
    ]
    at = START
    view = event("page_view", at)
    member = msgspec.structs.replace(
        view, type="member_imported", attributes={"member_since": YEARS_AGO, "age": 31}
    )
    after_view, _ = engine_run(*history, view)
    after_import, [*_, decision] = engine_run(*history, member)
    assert decision.status == "none"
    assert after_import.first_ts == YEARS_AGO
    assert after_import.profile == {**after_view.profile, "age": 31}
    ignored = {"first_ts", "profile", "recent_event_digests"}
    for name in UserState.__struct_fields__:
        if name not in ignored:
            assert getattr(after_import, name) == getattr(after_view, name), name
    assert after_import.rewards_granted == after_view.rewards_granted > 0
    assert after_import.purchases == 1


def test_an_import_does_not_clear_a_fraud_verdict() -> None:
    label = event("fraud_label", START - HOUR, attributes={"label": "confirmed"})
    state, decisions = engine_run(
        event("signup", START - 2 * HOUR, channel="web"),
        label,
        imported(YEARS_AGO, START),
        event("purchase", START + MINUTE, amount=60.0, currency="EUR", channel="web"),
    )
    assert state.risk.label == "confirmed"
    assert decisions[-1].status == "blocked"
    assert decisions[-1].risk == 1.0


def test_an_import_releases_no_held_reward_itself_and_the_next_event_does() -> None:
    """A member whose first event came before the import: its reward was held as a new
    account's. The import's own decision is no reward, and the hold stays; the member's
    next event finds the pending period (now counted from membership) over and releases
    it, through the checks of any release (risk, budgets, stock)."""
    state, decisions = engine_run(
        event("signup", START, channel="web", attributes={"age": 30}),
        imported(YEARS_AGO, START + MINUTE),
        event("page_view", START + 2 * MINUTE, channel="web"),
    )
    held, import_decision, released = decisions
    assert held.status == "held"
    assert "fraud.new_account_pending" in held.reasons
    assert (import_decision.status, import_decision.action) == ("none", None)
    assert "member.imported" in import_decision.reasons
    assert released.status == "granted"
    assert f"hold.released:{held.decision_id}" in released.reasons
    assert state.risk.hold is None
    assert state.rewards_granted == 1
