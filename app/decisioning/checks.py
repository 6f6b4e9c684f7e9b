"""The gates a reward must pass before it may be granted: rules, contact, consent, budget, stock.

Each check is a small pure function returning a :class:`Verdict`. A failed
verdict carries a reason code (for machines) and a few words (for the sentence
in the decision), so every reward that was not chosen says why. :func:`admit`
runs them all, in one order, for every path that grants: a fresh decision, a
pending period's end and an analyst's release of a held reward.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.decisioning.ledger import Ledger, Share
from app.features.state import DAY_MS, WEEK_MS, UserState
from app.programs import Program, Reward, evaluate_rule, resolve_amount


class Verdict(msgspec.Struct, frozen=True, gc=False):
    passed: bool
    code: str
    words: str = ""


PASS = Verdict(True, "")


class Admission(msgspec.Struct, frozen=True, gc=False):
    """What the gates made of one reward: the verdict of the first gate it failed (or
    :data:`PASS`), and for a reward that passed the channel, value and cost to grant it
    at. ``rule_codes`` are the codes of the eligibility rules evaluated."""

    verdict: Verdict
    channel: str | None = None
    value: float = 0.0
    cost: float = 0.0
    rule_codes: tuple[str, ...] = ()


def admit(
    program: Program,
    reward: Reward,
    state: UserState,
    ledger: Ledger,
    share: Share,
    *,
    env: dict[str, Any],
    channel: str | None,
    marketing: bool,
    ts: int,
    bucket_ms: int,
    amounts: tuple[float, float] | None = None,
    counts: ContactCounts | None = None,
) -> Admission:
    """Every gate, in order: eligibility rules, the user's contact policy, consent and
    the channel's own limits, the amounts, the budgets, the stock.

    ``env`` is what the rules see (:func:`app.features.derive.rule_env` of ``state``); ``channel``
    the one to prefer. ``amounts`` (value, cost) fixes the amounts of a reward decided
    earlier (a held reward keeps the amounts it was held at); else they are resolved
    from ``env``. ``counts`` are the user's grants counted at ``ts``
    (:func:`contact_counts`): an event's rewards share them; counted here if None.
    """
    verdict, rule_codes = eligibility(reward, env)
    if not verdict.passed:
        return Admission(verdict, rule_codes=rule_codes)
    if counts is None:
        counts = contact_counts(state, ts)
    verdict = contact(program, state, ts, counts)
    if not verdict.passed:
        return Admission(verdict, rule_codes=rule_codes)
    picked, verdict = pick_channel(
        program,
        reward,
        state,
        channel,
        marketing=marketing,
        ts=ts,
        counts=counts,
        # rule_env worked it out: one pass over the user's channels fewer per reward.
        preferred=env["preferred_channel"],
    )
    if not verdict.passed:
        return Admission(verdict, rule_codes=rule_codes)
    if amounts is None:
        value, cost = resolve_amount(reward.value, env), resolve_amount(reward.cost, env)
    else:
        value, cost = amounts
    if value is None or cost is None:
        unknown = Verdict(False, "value:unknown", "its value is unknown")
        return Admission(unknown, rule_codes=rule_codes)
    for verdict in (
        budget(program, state, ledger, share, cost=cost, ts=ts, bucket_ms=bucket_ms),
        stock(reward, ledger, share),
    ):
        if not verdict.passed:
            return Admission(verdict, rule_codes=rule_codes)
    return Admission(PASS, picked, value, cost, rule_codes)


def eligibility(reward: Reward, env: dict[str, Any]) -> tuple[Verdict, tuple[str, ...]]:
    """All of the reward's rules; the codes of every rule evaluated, in order."""
    codes: list[str] = []
    for rule in reward.eligibility:
        result = evaluate_rule(rule.expression, env)
        if result is None:
            codes.append(f"rule.{rule.name}:unknown")
            return Verdict(False, codes[-1], f"rule {rule.name} could not be checked"), tuple(codes)
        if not result:
            codes.append(f"rule.{rule.name}:failed")
            return Verdict(False, codes[-1], f"rule {rule.name} failed"), tuple(codes)
        codes.append(f"rule.{rule.name}:passed")
    return PASS, tuple(codes)


def pick_channel(
    program: Program,
    reward: Reward,
    state: UserState,
    event_channel: str | None,
    *,
    marketing: bool,
    ts: int,
    counts: ContactCounts | None = None,
    preferred: str | None,
) -> tuple[str | None, Verdict]:
    """The channel to deliver on: the event's, else the user's preferred, else the reward's first.

    Channels the user may not be contacted on (marketing opt-out) or whose own
    contact limit is reached are skipped. ``preferred`` is ``state.preferred_channel``.
    """
    allowed = [c for c in reward.channels if marketing or c not in program.marketing_channels]
    if not allowed:
        return None, Verdict(False, "consent.marketing", "only marketing channels, and no consent")
    if counts is None:
        counts = contact_counts(state, ts)
    open_channels = [c for c in allowed if _channel_has_room(program, counts, c)]
    if not open_channels:
        return None, Verdict(
            False, "contact.channel_limit", "every channel is at its contact limit"
        )
    for choice in (event_channel, preferred):
        if choice in open_channels:
            return choice, PASS
    return open_channels[0], PASS


class ContactCounts(msgspec.Struct, frozen=True, gc=False):
    """A user's grants within the day and the week before a moment, in all and per
    channel: what every contact limit compares with. Counted once per event, in one pass
    over the user's grants, and shared by all of its rewards' gates."""

    day: int
    week: int
    day_by_channel: dict[str | None, int]
    week_by_channel: dict[str | None, int]


def contact_counts(state: UserState, ts: int) -> ContactCounts:
    """The user's grants counted at ``ts``: a grant counts within a window ending at
    ``ts`` if it was made after the window's start."""
    day_since, week_since = ts - DAY_MS, ts - WEEK_MS
    day = week = 0
    day_by_channel: dict[str | None, int] = {}
    week_by_channel: dict[str | None, int] = {}
    for grant in state.grants:
        if grant.ts > week_since:  # a day is within the week
            week += 1
            week_by_channel[grant.channel] = week_by_channel.get(grant.channel, 0) + 1
            if grant.ts > day_since:
                day += 1
                day_by_channel[grant.channel] = day_by_channel.get(grant.channel, 0) + 1
    return ContactCounts(day, week, day_by_channel, week_by_channel)


def _channel_has_room(program: Program, counts: ContactCounts, channel: str) -> bool:
    limit = program.contact.per_channel.get(channel)
    if limit is None:
        return True
    day = limit.max_per_day
    if day is not None and counts.day_by_channel.get(channel, 0) >= day:
        return False
    week = limit.max_per_week
    return week is None or counts.week_by_channel.get(channel, 0) < week


def contact(
    program: Program, state: UserState, ts: int, counts: ContactCounts | None = None
) -> Verdict:
    """The user-level contact policy: suppression, then the daily and weekly caps."""
    if state.suppressed_until is not None and state.suppressed_until > ts:
        return Verdict(False, "contact.suppressed", "suppressed after repeated dismissals")
    policy = program.contact
    if counts is None:
        counts = contact_counts(state, ts)
    if policy.max_per_day is not None and counts.day >= policy.max_per_day:
        return Verdict(False, "contact.daily_limit", f"{policy.max_per_day} rewards today already")
    if policy.max_per_week is not None and counts.week >= policy.max_per_week:
        return Verdict(False, "contact.weekly_limit", f"{policy.max_per_week} rewards this week")
    return PASS


def _user_spent(program: Program, state: UserState, ts: int) -> float:
    """What the user's rewards cost within the per-user budget's window (or ever)."""
    window = program.budgets.per_user_window
    if window is None:
        return state.reward_cost
    return sum(g.cost for g in state.grants if g.ts > ts - window.seconds * 1000)


def budget(
    program: Program,
    state: UserState,
    ledger: Ledger,
    share: Share,
    *,
    cost: float,
    ts: int,
    bucket_ms: int,
) -> Verdict:
    """Per-user, total and per-period budgets for a reward costing ``cost``."""
    budgets = program.budgets
    if budgets.per_user is not None:
        spent = _user_spent(program, state, ts)
        if spent + cost > budgets.per_user + 1e-9:
            return Verdict(False, "budget.per_user:exhausted", "the user's budget is spent")
    if (
        budgets.total is not None
        and ledger.spent_total + cost > share.of_amount(budgets.total) + 1e-9
    ):
        return Verdict(False, "budget.total:exhausted", "the program's budget is spent")
    for period in budgets.periods:
        spent = ledger.spent_within(ts, period.window.seconds * 1000, bucket_ms)
        if spent + cost > share.of_amount(period.limit) + 1e-9:
            return Verdict(
                False,
                f"budget.{period.window.text}:exhausted",
                f"the {period.window.text} budget is spent",
            )
    return PASS


def stock(reward: Reward, ledger: Ledger, share: Share) -> Verdict:
    if reward.stock is None or ledger.stock_taken(reward.id) < share.of_stock(reward.stock):
        return PASS
    return Verdict(False, "stock:exhausted", "out of stock")


def budget_left(
    program: Program,
    state: UserState,
    ledger: Ledger,
    share: Share,
    reward: Reward,
    *,
    cost: float,
    ts: int,
    bucket_ms: int,
) -> tuple[str, ...]:
    """Reason codes with what is left of each limit once ``reward`` (at ``cost``) is granted.

    Program-wide figures are this partition's share (see :mod:`app.decisioning.ledger`).
    """
    budgets = program.budgets
    codes = [
        f"budget.{name}_left:{left:.2f}"
        for name, left in program_budgets_left(
            program, ledger, share, ts=ts, bucket_ms=bucket_ms, cost=cost
        )
    ]
    if budgets.per_user is not None:
        spent = _user_spent(program, state, ts)
        codes.append(f"budget.per_user_left:{max(budgets.per_user - spent - cost, 0.0):.2f}")
    if reward.stock is not None:
        left_items = share.of_stock(reward.stock) - ledger.stock_taken(reward.id) - 1
        codes.append(f"stock.{reward.id}_left:{max(left_items, 0)}")
    return tuple(codes)


def program_budgets_left(
    program: Program,
    ledger: Ledger,
    share: Share,
    *,
    ts: int,
    bucket_ms: int,
    cost: float = 0.0,
) -> tuple[tuple[str, float], ...]:
    """What is left of each program-wide budget in this partition's share once ``cost`` is
    spent at ``ts``, never below zero: ``("total", left)`` and one per rolling period,
    named by its window (``("1d", left)``)."""
    budgets = program.budgets
    left: list[tuple[str, float]] = []
    if budgets.total is not None:
        total_left = share.of_amount(budgets.total) - ledger.spent_total - cost
        left.append(("total", max(total_left, 0.0)))
    for period in budgets.periods:
        spent = ledger.spent_within(ts, period.window.seconds * 1000, bucket_ms)
        left.append((period.window.text, max(share.of_amount(period.limit) - spent - cost, 0.0)))
    return tuple(left)
