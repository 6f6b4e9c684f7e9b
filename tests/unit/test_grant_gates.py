"""Every path that grants passes the same gates: a fresh decision, the end of a new
account's pending period and an analyst's release of a held reward.

A property test sends random streams of sign-ups, sessions, purchases, risky events,
labels, answers and consent changes for a few users sharing one ledger, over times that
cross the pending period, the daily and weekly windows and the holds' expiry, and checks
every granted decision against the program's limits, recomputed here from the decisions
alone: the contact caps (per day, per week, per channel), suppression after dismissals,
marketing consent, the per-user, total and daily budgets, and the stock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import fastjsonschema
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contract import Decision, Event
from app.contract.schemas import load_schema
from app.decisioning import Engine
from app.decisioning.checks import contact_counts
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.features.state import Grant
from app.fraud import LinkFacts
from app.programs import Program, load_program

PROGRAM = load_program(Path(__file__).parents[1] / "fixtures" / "gates-program.yaml")
check_decision = fastjsonschema.compile(load_schema("decision"))
T0 = 1_772_366_400_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# A device shared by many fresh accounts: enough for a risk hold on its own.
FARM = (LinkFacts("device", accounts_24h=9, signups_24h=9),)


@dataclass
class World:
    """A few users through one engine and one ledger, and what the engine granted."""

    engine: Engine = field(default_factory=lambda: Engine(PROGRAM, seed=3))
    ledger: Ledger = field(default_factory=Ledger)
    users: dict[str, UserState] = field(default_factory=dict)
    granted: list[Decision] = field(default_factory=list)
    decided: dict[str, list[Decision]] = field(default_factory=dict)
    # (order sent, marketing consent) changes per user, and dismissals per user; the order
    # each decision was made in (consent changed at the same time as a grant counts only
    # if it came first).
    marketing: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)
    dismissed: dict[str, list[int]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def send(
        self, user: str, type_: str, ts: int, links: tuple[LinkFacts, ...] = (), **fields: object
    ) -> Decision | None:
        event = Event(event_id=f"e{next(self.ids)}", user_id=user, type=type_, ts=ts, **fields)  # type: ignore[arg-type]
        outcome = self.engine.process(
            self.users.get(user, UserState()), self.ledger, event, links=links
        )
        self.users[user], self.ledger = outcome.user, outcome.ledger
        decisions = [r for r in outcome.records if isinstance(r, Decision)]
        for decision in decisions:
            check_decision(orjson.loads(decision.to_json()))
            self.order[decision.decision_id] = len(self.order)
            self.decided.setdefault(user, []).append(decision)
            if decision.status == "granted":
                self.granted.append(decision)
        return decisions[0] if decisions else None

    def open_offer(self, user: str, ts: int, program: Program) -> str | None:
        """The user's latest granted decision still awaiting an answer at ``ts`` (not
        answered yet, and within the program's response window): only an answer to an
        open offer is an answer (a dismissal that counts towards suppression)."""
        window = program.learning.response_window.seconds * 1000
        for decision in reversed(self.decided.get(user, [])):
            if (
                decision.status == "granted"
                and decision.decision_id not in self.answered
                and ts < decision.ts + window
            ):
                return decision.decision_id
        return None


# Sessions and short gaps are listed more than once: hypothesis draws uniformly, and the
# streams that matter most (a hold waiting while free rewards reach a cap, then its
# release) need several of them in a row.
STEP_KINDS = (
    "signup",
    "session",
    "session",
    "session",
    "purchase",
    "risky_session",
    "label_cleared",
    "label_confirmed",
    "redeem",
    "dismiss",
    "marketing_off",
    "marketing_on",
)
GAPS_MS = (0, MINUTE, MINUTE, 20 * MINUTE, 70 * MINUTE, 70 * MINUTE, 5 * HOUR, 13 * HOUR, 3 * DAY)

steps = st.lists(
    st.tuples(
        st.integers(0, 1),  # which user
        st.sampled_from(STEP_KINDS),
        st.sampled_from(GAPS_MS),
        st.sampled_from((5.0, 15.0, 60.0, 200.0)),  # a purchase's amount
        st.sampled_from(("web", "mobile", "email")),
    ),
    min_size=1,
    max_size=60,
)


def play(world: World, script: list[tuple[int, str, int, float, str]]) -> None:
    ts = T0
    for who, kind, gap, amount, channel in script:
        ts += gap
        user = f"u-{who}"
        if kind == "signup":
            world.send(user, "signup", ts, channel=channel, attributes={"age": 30})
        elif kind == "session":
            world.send(user, "session_start", ts, channel=channel)
        elif kind == "purchase":
            world.send(user, "purchase", ts, channel=channel, amount=amount, currency="EUR")
        elif kind == "risky_session":
            world.send(user, "session_start", ts, links=FARM, channel=channel)
        elif kind in ("label_cleared", "label_confirmed"):
            label = kind.removeprefix("label_")
            world.send(user, "fraud_label", ts, attributes={"label": label})
        elif kind in ("redeem", "dismiss"):
            decision_id = world.open_offer(user, ts, PROGRAM)
            if decision_id is None:
                continue
            world.answered.add(decision_id)
            world.send(user, f"reward_{kind}ed", ts, decision_id=decision_id)
            if kind == "dismiss":
                world.dismissed.setdefault(user, []).append(ts)
        else:
            allowed = kind == "marketing_on"
            world.marketing.setdefault(user, []).append((len(world.order), allowed))
            world.send(user, "consent_updated", ts, attributes={"marketing": allowed})


def violations(world: World, program: Program) -> list[str]:
    """Every way the granted decisions break the program's limits, recomputed from them."""
    found: list[str] = []
    contact, budgets = program.contact, program.budgets
    by_user: dict[str, list[Decision]] = {}
    for grant in world.granted:
        by_user.setdefault(grant.user_id, []).append(grant)
    for user, grants in by_user.items():
        for grant in grants:
            ts = grant.ts

            def since(
                start: int,
                channel: str | None = None,
                grants: list[Decision] = grants,
                ts: int = ts,
            ) -> list[Decision]:
                return [
                    g
                    for g in grants
                    if start < g.ts <= ts and (channel is None or g.channel == channel)
                ]

            if contact.max_per_day is not None and len(since(ts - DAY)) > contact.max_per_day:
                found.append(f"{user}: {len(since(ts - DAY))} grants within a day at {ts}")
            if contact.max_per_week is not None and len(since(ts - 7 * DAY)) > contact.max_per_week:
                found.append(f"{user}: {len(since(ts - 7 * DAY))} grants within a week at {ts}")
            for channel, limit in contact.per_channel.items():
                weekly = since(ts - 7 * DAY, channel)
                if limit.max_per_week is not None and len(weekly) > limit.max_per_week:
                    found.append(f"{user}: {len(weekly)} grants on {channel} within a week")
            if budgets.per_user is not None and budgets.per_user_window is not None:
                window = budgets.per_user_window.seconds * 1000
                spent = sum(g.cost for g in since(ts - window))
                if spent > budgets.per_user + 1e-6:
                    found.append(f"{user}: spent {spent} within the per-user window")
            made = world.order[grant.decision_id]
            changes = [allowed for at, allowed in world.marketing.get(user, []) if at <= made]
            marketing = changes[-1] if changes else program.consent_defaults.marketing
            if grant.channel in program.marketing_channels and not marketing:
                found.append(f"{user}: granted on {grant.channel} without marketing consent")
            suppression = contact.suppression
            if suppression is not None:
                within = suppression.within.seconds * 1000
                dismissals = sorted(world.dismissed.get(user, []))
                for k in range(suppression.dismissals - 1, len(dismissals)):
                    streak = dismissals[k - suppression.dismissals + 1 : k + 1]
                    start = dismissals[k]
                    if streak[-1] - streak[0] < within and (
                        start < ts < start + suppression.lasts.seconds * 1000
                    ):
                        found.append(f"{user}: granted at {ts} while suppressed since {start}")
                        break
    every = sorted(world.granted, key=lambda g: g.ts)
    total = sum(g.cost for g in every)
    if budgets.total is not None and total > budgets.total + 1e-6:
        found.append(f"spent {total} of a total budget of {budgets.total}")
    for period in budgets.periods:
        window = period.window.seconds * 1000
        for grant in every:
            spent = sum(g.cost for g in every if grant.ts - window < g.ts <= grant.ts)
            if spent > period.limit + 1e-6:
                found.append(f"spent {spent} within {period.window.text}")
    taken = Counter(g.action for g in every)
    for reward in program.rewards:
        if reward.stock is not None and taken[reward.id] > reward.stock:
            found.append(f"{taken[reward.id]} {reward.id} granted from a stock of {reward.stock}")
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_no_stream_grants_beyond_the_programs_limits(
    script: list[tuple[int, str, int, float, str]],
) -> None:
    world = World()
    play(world, script)
    assert violations(world, PROGRAM) == []


def test_a_released_hold_respects_the_contact_limit() -> None:
    """The case that broke it: a new account's first paid reward waits out its pending
    period while free badges reach the daily cap; the release must not be a fourth
    grant within the day."""
    world = World()
    held = world.send("u", "signup", T0, channel="web", attributes={"age": 30})
    assert held is not None
    assert (held.status, held.hold, held.action) == ("held", "pending", "points")
    badges = [world.send("u", "session_start", T0 + k * MINUTE, channel="web") for k in (1, 2, 3)]
    assert [(b.status, b.action) for b in badges if b] == [("granted", "badge")] * 3
    release = world.send("u", "session_start", T0 + 2 * HOUR, channel="web")
    assert release is not None
    assert release.status == "none"
    assert f"hold.not_released:{held.decision_id}" in release.reasons
    assert "contact.daily_limit" in release.reasons
    assert "contact limit" in release.explanation or "today" in release.explanation
    assert violations(world, PROGRAM) == []
    assert world.users["u"].risk.hold is None  # the hold ended; nothing waits any more


def test_a_pending_hold_is_released_when_the_gates_allow_it() -> None:
    world = World()
    held = world.send("u", "signup", T0, channel="web", attributes={"age": 30})
    assert held is not None
    assert held.hold == "pending"
    release = world.send("u", "session_start", T0 + 2 * HOUR, channel="web")
    assert release is not None
    assert (release.status, release.action) == ("granted", "points")
    assert f"hold.released:{held.decision_id}" in release.reasons
    assert release.hold is None


def test_a_release_keeps_to_marketing_consent() -> None:
    """A reward held for delivery by email is released on another channel once the user
    withdrew marketing consent, never by email."""
    world = World()
    held = world.send("u", "signup", T0, channel="email", attributes={"age": 30})
    assert held is not None
    assert (held.status, held.channel) == ("held", "email")
    world.send("u", "consent_updated", T0 + MINUTE, attributes={"marketing": False})
    release = world.send("u", "session_start", T0 + 2 * HOUR, channel="mobile")
    assert release is not None
    assert (release.status, release.action, release.channel) == ("granted", "points", "web")


def test_risk_and_pending_holds_say_which_they_are() -> None:
    world = World()
    pending = world.send("new", "signup", T0, channel="web", attributes={"age": 30})
    world.send("old", "signup", T0 - 3 * DAY, channel="web", attributes={"age": 30})
    world.send("old", "session_start", T0 - 2 * DAY, channel="web")
    risky = world.send("old", "session_start", T0, links=FARM, channel="web")
    assert pending is not None
    assert risky is not None
    assert (pending.status, pending.hold) == ("held", "pending")
    assert (risky.status, risky.hold) == ("held", "risk")
    plain = world.send("old", "purchase", T0 + 3 * DAY, amount=5.0, currency="EUR")
    assert plain is not None
    assert plain.hold is None


def test_a_release_checks_the_rewards_rules_again(tmp_path: Path) -> None:
    """A rule that held when the reward was earned but no longer holds at the release (a
    first-reward rule, after a free badge was granted meanwhile) stops the release."""
    text = (Path(__file__).parents[1] / "fixtures" / "gates-program.yaml").read_text()
    text = text.replace(
        "    triggers: [signup, session_start]\n",
        "    triggers: [signup, session_start]\n"
        "    eligibility:\n      first: rewards_granted == 0\n",
        1,
    )
    path = tmp_path / "first-reward.yaml"
    path.write_text(text)
    program = load_program(path)
    world = World(engine=Engine(program, seed=3))
    held = world.send("u", "signup", T0, channel="web", attributes={"age": 30})
    assert held is not None
    assert (held.status, held.action, held.hold) == ("held", "points", "pending")
    badge = world.send("u", "session_start", T0 + MINUTE, channel="web")
    assert badge is not None
    assert (badge.status, badge.action) == ("granted", "badge")
    release = world.send("u", "session_start", T0 + 2 * HOUR, channel="web")
    assert release is not None
    assert release.status == "none"
    assert f"hold.not_released:{held.decision_id}" in release.reasons
    assert "rule.first:failed" in release.reasons


ANY: str | None = "any channel"


@given(
    st.lists(
        st.tuples(st.integers(0, 9 * DAY), st.sampled_from([None, "email", "push", "in_app"])),
        max_size=30,
    ),
    st.integers(0, 9 * DAY),
)
def test_contact_counts_are_the_grants_made_after_each_windows_start(
    grants: list[tuple[int, str | None]], ts: int
) -> None:
    """Counted once per event for all of its rewards: each count is exactly the grants
    strictly after the start of the day or week that ends at ``ts``."""
    state = UserState(grants=tuple(Grant(at, channel, 1.0) for at, channel in grants))
    counts = contact_counts(state, ts)

    def made_after(since: int, channel: str | None = ANY) -> int:
        return sum(1 for at, c in grants if at > since and (channel is ANY or c == channel))

    assert (counts.day, counts.week) == (made_after(ts - DAY), made_after(ts - 7 * DAY))
    for channel in (None, "email", "push", "in_app"):
        assert counts.day_by_channel.get(channel, 0) == made_after(ts - DAY, channel)
        assert counts.week_by_channel.get(channel, 0) == made_after(ts - 7 * DAY, channel)
