"""What a program change would do before it ships: the same traffic replayed under both.

:func:`compare` replays one file of events through the current program and through a
candidate, each with :func:`app.replay.replay` (the worker's own stages, no broker,
the same seed and partition count), and reads both record streams back: grants, cost,
redemption, when each budget and stock first refused a reward (event time), the users
left with nothing eligible and the gate that refused them, and per audit group (the
program's ``audit`` block) the grant rate and value per user with their ratio to the
best-served group. A group whose grant-rate ratio is under the program's
``audit.min_ratio`` is a :class:`Disparity`, named with the gate that refused its
decisions more often than the best group's.

Answers (``reward_redeemed``, ``reward_opened`` and ``reward_dismissed`` naming a
decision) are what users did with what the current program gave them: the file is
taken as the current program's traffic, and its replay reads them as they are. The
candidate's replay reads an answer only where the candidate granted the same reward at
the same event, as an answer to its own decision there (the rule a shadow program
follows, :mod:`app.shadow`); elsewhere its user never saw the candidate's reward, so the
answer is withheld and the candidate's grant is counted as unseen, not as refused.
The candidate's offers that users never saw time out unanswered and its models learn a
"no" from them: what it learns here is pessimistic where it chooses differently, which
is why this compares gates, budgets and reach, and leaves the value of a policy to
``rewardstream evaluate`` and to shadow programs.

Two equal programs feed their replays the same lines and draw the same exploration
(draws depend on the seed and the decision id, which depends on the program id), so
they differ by nothing: :func:`differences` is all zeros.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.decisioning.engine import Engine
from app.evaluation.offline import redeemed_decisions
from app.programs import Audit, Program
from app.programs.model import AUDIT_OTHER, AUDIT_UNKNOWN
from app.replay import replay
from app.shadow import ANSWER_TYPES

# A group with fewer decisions than this is shown but not judged: with a handful of
# decisions a grant rate swings by tens of percent on chance alone (at 30 decisions and
# a true rate of 0.5, one standard deviation is 0.09).
MIN_GROUP_DECISIONS = 30
NOTHING_ELIGIBLE = "policy.nothing_eligible"
GRANTED = "granted"
# A gate code in a decision's reasons: "skip.<reward>:<code>" for a reward that was not
# offered; a released hold that a gate refused carries the gate's code alone.
_SKIPPED = re.compile(r"skip\.(?P<reward>[^:]+):(?P<gate>.+)")
_BUDGET_OUT = re.compile(r"budget\.(?P<budget>[^:]+):exhausted")
# What no-grant decisions say besides skipped rewards: a policy that offered nothing.
_POLICY_REFUSALS = frozenset({"policy.below_minimum", "policy.holdout", "policy.control"})
_ANSWER_BYTES = tuple(kind.encode() for kind in ANSWER_TYPES)

# (user id, event id): how a decision finds the event it decided.
EventKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What both replays share, as ``rewardstream replay`` takes them."""

    seed: int
    partitions: int
    max_event_bytes: int
    state_ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class LimitReached:
    """A budget or a reward's stock that refused rewards: first at ``first_ts`` (event
    time, ms), ``refused`` decisions in all. Budgets are split across partitions, so
    the first refusal is the first partition whose share ran out."""

    limit: str  # "budget total", "budget 1d", "stock discount-10"
    first_ts: int
    refused: int


@dataclass(frozen=True, slots=True)
class GroupServed:
    """One audit group under one program: decisions on trigger events (as the live
    audit metric counts them), grants among them, and their value."""

    group: str
    users: int
    decisions: int
    grants: int
    value: float
    # This group's grant rate and value per user over the best-served group's (the judged
    # group with the highest grant rate); None when that group is granted nothing.
    ratio: float | None = None
    value_ratio: float | None = None
    judged: bool = True  # False: fewer than MIN_GROUP_DECISIONS decisions

    @property
    def grant_rate(self) -> float:
        return self.grants / self.decisions if self.decisions else 0.0

    @property
    def value_per_user(self) -> float:
        return self.value / self.users if self.users else 0.0


@dataclass(frozen=True, slots=True)
class Disparity:
    """A group served under the program's ``audit.min_ratio`` of the best group's grant
    rate, with the gate most responsible: the refusal code found on more of the group's
    decisions without a grant than on the best group's, as shares of each group's
    decisions (None when no gate refused the group more often)."""

    group: str
    best: str
    ratio: float
    min_ratio: float
    cause: str | None
    cause_share: float = 0.0  # of the group's decisions the cause refused
    best_share: float = 0.0  # of the best group's decisions it refused


@dataclass(frozen=True, slots=True)
class Served:
    """What one program did with the traffic."""

    program: str
    source_sha256: str
    currency: str
    decisions: int  # on trigger events
    grants: int  # every granted decision (releases of held rewards included)
    cost: float
    value: float
    redeemed: int  # grants a reward_redeemed answer in the input names
    unseen: int  # grants of a reward the current program did not give at that event
    limits: tuple[LimitReached, ...] = ()
    left_out_users: int = 0  # users whose every trigger decision had nothing eligible
    left_out_by: tuple[tuple[str, int], ...] = ()  # (refusal code, users), most first
    groups: tuple[GroupServed, ...] = ()
    disparities: tuple[Disparity, ...] = ()

    @property
    def redemption_rate(self) -> float:
        """Redeemed over the grants users saw (an unseen grant cannot have an answer)."""
        seen = self.grants - self.unseen
        return self.redeemed / seen if seen else 0.0


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The two runs side by side, the audit they were grouped by, and notes a reader
    must know."""

    lines: int
    current: Served
    candidate: Served
    audit: Audit | None
    notes: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> bool:
        """The candidate serves some group under its threshold: do not ship it as is."""
        return bool(self.candidate.disparities)


# ---------------------------------------------------------------- the replays


def compare(
    current: Program, candidate: Program, lines: Sequence[bytes], options: ReplayOptions
) -> WhatIf:
    """Replay ``lines`` (events, as ``rewardstream replay`` reads them) under both
    programs and read the two runs back (see the module). Raises ValueError when the
    file holds no event either program decided."""
    audit = candidate.audit or current.audit
    events = event_facts(lines, None if audit is None else audit.group_by)
    current_records = list(_records(current, lines, options))
    if not any(r.get("kind") == "decision" for r in current_records):
        raise ValueError(f"none of the {len(lines):,} lines is an event the engine decided")
    seen_grants = _grants(current_records)
    candidate_records, fed = _candidate_records(candidate, lines, seen_grants, options)
    shown = {(user, event): reward for user, event, reward in seen_grants.values()}
    current_served = served(
        current, current_records, events, audit, set(redeemed_decisions(lines)), shown
    )
    candidate_served = served(
        candidate, candidate_records, events, audit, set(redeemed_decisions(fed)), shown
    )
    return WhatIf(
        len(lines), current_served, candidate_served, audit, _notes(current, candidate, audit)
    )


def _records(program: Program, lines: Iterable[bytes], options: ReplayOptions) -> Iterator[Any]:
    engine = Engine(program, seed=options.seed, partitions=options.partitions)
    for record in replay(
        engine,
        lines,
        source_name="whatif",
        max_event_bytes=options.max_event_bytes,
        state_ttl_ms=options.state_ttl_ms,
    ):
        yield orjson.loads(record)


def _grants(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Each granted decision's id -> (user id, event id, reward)."""
    return {
        r["decision_id"]: (r["user_id"], r["event_id"], r["action"])
        for r in records
        if r.get("kind") == "decision" and r["status"] == GRANTED
    }


def _candidate_records(
    candidate: Program,
    lines: Iterable[bytes],
    seen_grants: Mapping[str, tuple[str, str, str]],
    options: ReplayOptions,
) -> tuple[list[Any], list[bytes]]:
    """The candidate's records, and the lines its replay was fed: every line, but for
    answers to the current program's grants, each passed on as an answer to the
    candidate's decision at the same event where that granted the same reward, and
    withheld elsewhere.

    The replay asks for a line only once every record of the line before has been
    read, so the candidate's decision at an answered event is known when its answer
    comes."""
    decided: dict[EventKey, Mapping[str, Any]] = {}
    fed: list[bytes] = []

    def as_seen_by_candidate() -> Iterator[bytes]:
        for line in lines:
            passed = answer_as_seen(line, seen_grants, decided)
            if passed is not None:
                fed.append(passed)
                yield passed

    records = []
    for record in _records(candidate, as_seen_by_candidate(), options):
        records.append(record)
        if record.get("kind") == "decision":
            decided[(record["user_id"], record["event_id"])] = record
    return records, fed


def answer_as_seen(
    line: bytes,
    seen_grants: Mapping[str, tuple[str, str, str]],
    decided: Mapping[EventKey, Mapping[str, Any]],
) -> bytes | None:
    """``line`` as another program's replay should read it, given the current program's
    grants (``seen_grants``: decision id -> user, event, reward) and the other program's
    decisions so far by event: an answer to a current grant becomes an answer to the
    other program's decision at that event if that granted the same reward, else None
    (withheld). Every other line is passed as it is, so is an answer to a decision the
    current program did not grant (each engine takes it as the live one would)."""
    if not any(kind in line for kind in _ANSWER_BYTES):
        return line  # most lines: no parse
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(document, dict) or document.get("type") not in ANSWER_TYPES:
        return line
    answered = document.get("decision_id")
    shown = seen_grants.get(answered) if isinstance(answered, str) else None
    if shown is None:
        return line
    user, event, reward = shown
    own = decided.get((user, event))
    if own is None or own["status"] != GRANTED or own["action"] != reward:
        return None
    if own["decision_id"] == document["decision_id"]:
        return line  # the same program id: nothing to translate
    return orjson.dumps({**document, "decision_id": own["decision_id"]})


# ---------------------------------------------------------------- reading a run back


@dataclass(frozen=True, slots=True)
class EventFact:
    """What the summaries need of an input event: its type, and the audit field's value
    if the event carries it (``carries`` False: the event says nothing of it)."""

    type: str
    carries: bool = False
    value: object = None


def event_facts(lines: Iterable[bytes], group_by: str | None) -> dict[EventKey, EventFact]:
    """Each parseable event by (user id, event id). A line the engine dead-letters may be
    here too: it has no decision, so nothing looks it up."""
    facts: dict[EventKey, EventFact] = {}
    for line in lines:
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(document, dict):
            continue
        user, event, kind = document.get("user_id"), document.get("event_id"), document.get("type")
        if not (isinstance(user, str) and isinstance(event, str) and isinstance(kind, str)):
            continue
        attributes = document.get("attributes")
        if isinstance(attributes, dict) and group_by is not None and group_by in attributes:
            facts.setdefault((user, event), EventFact(kind, True, attributes[group_by]))
        else:
            facts.setdefault((user, event), EventFact(kind))
    return facts


@dataclass
class _GroupTally:
    users: set[str] = field(default_factory=set)
    decisions: int = 0
    grants: int = 0
    value: float = 0.0
    refusals: Counter[str] = field(default_factory=Counter)


@dataclass
class _UserTally:
    triggers: int = 0
    nothing_eligible: int = 0
    refused_by: set[str] = field(default_factory=set)


def served(
    program: Program,
    records: Iterable[Mapping[str, Any]],
    events: Mapping[EventKey, EventFact],
    audit: Audit | None,
    redeemed: set[str],
    shown: Mapping[EventKey, str],
) -> Served:
    """One run read back: ``records`` as its replay wrote them, ``events`` the input's
    facts, ``redeemed`` the decision ids the answers it read name, ``shown`` the reward
    the current program granted at each event (what users saw)."""
    totals: Counter[str] = Counter()
    cost = value = 0.0
    limits: dict[str, list[int]] = {}  # limit -> [first ts, refusals]
    users: dict[str, _UserTally] = {}
    groups: dict[str, _GroupTally] = {}
    profiles: dict[str, dict[str, object]] = {}
    for record in records:
        if record.get("kind") != "decision":
            continue
        key = (record["user_id"], record["event_id"])
        fact = events.get(key, EventFact(""))
        granted = record["status"] == GRANTED
        if granted:
            totals["grants"] += 1
            cost += record["cost"]
            value += record["value"]
            totals["redeemed"] += record["decision_id"] in redeemed
            totals["unseen"] += shown.get(key) != record["action"]
        for limit in _limits_reached(record["reasons"]):
            found = limits.setdefault(limit, [record["ts"], 0])
            found[1] += 1
        if audit is not None and fact.carries:  # the profile as the engine keeps it
            profiles.setdefault(key[0], {})[audit.group_by] = fact.value
        if fact.type not in program.triggers:
            continue
        totals["decisions"] += 1
        refusals = set() if granted else refusal_causes(record)
        _tally_user(users.setdefault(key[0], _UserTally()), record, refusals)
        if audit is not None:
            group = groups.setdefault(audit.group_of(profiles.get(key[0], {})), _GroupTally())
            _tally_group(group, key[0], record, refusals)
    left_out = [u for u in users.values() if u.triggers == u.nothing_eligible]
    by_code = Counter(code for user in left_out for code in user.refused_by)
    found_groups, disparities = _judge(groups, audit)
    return Served(
        program=program.id,
        source_sha256=program.source_sha256,
        currency=program.currency,
        decisions=totals["decisions"],
        grants=totals["grants"],
        cost=round(cost, 2),
        value=round(value, 2),
        redeemed=totals["redeemed"],
        unseen=totals["unseen"],
        limits=tuple(LimitReached(name, ts, n) for name, (ts, n) in sorted(limits.items())),
        left_out_users=len(left_out),
        left_out_by=tuple(sorted(by_code.items(), key=lambda item: (-item[1], item[0]))),
        groups=found_groups,
        disparities=disparities,
    )


def _tally_user(user: _UserTally, record: Mapping[str, Any], refusals: set[str]) -> None:
    user.triggers += 1
    if NOTHING_ELIGIBLE in record["reasons"]:
        user.nothing_eligible += 1
        user.refused_by |= refusals


def _tally_group(
    group: _GroupTally, user: str, record: Mapping[str, Any], refusals: set[str]
) -> None:
    group.users.add(user)
    group.decisions += 1
    if record["status"] == GRANTED:
        group.grants += 1
        group.value += record["value"]
    group.refusals.update(refusals)


def _limits_reached(reasons: Iterable[str]) -> set[str]:
    """The program-wide budgets and stocks that refused a reward in this decision (a
    user's own budget is the user's, not the program's: it shows among the refusals)."""
    found = set()
    for code in reasons:
        skipped = _SKIPPED.fullmatch(code)
        gate = skipped["gate"] if skipped else code
        if skipped and gate == "stock:exhausted":
            found.add(f"stock {skipped['reward']}")
        elif (budget := _BUDGET_OUT.fullmatch(gate)) and budget["budget"] != "per_user":
            found.add(f"budget {budget['budget']}")
    return found


def refusal_causes(record: Mapping[str, Any]) -> set[str]:
    """Why a decision granted nothing, as codes: each reward not offered with the gate
    that refused it (``cashback:rule.in-market:failed``), a policy that offered nothing
    (``policy.below_minimum``), or the verdict on the chosen reward (``held:pending``,
    ``blocked``)."""
    causes = set()
    for code in record["reasons"]:
        if (skipped := _SKIPPED.fullmatch(code)) is not None:
            causes.add(f"{skipped['reward']}:{skipped['gate']}")
        elif code in _POLICY_REFUSALS:
            causes.add(code)
    status = record["status"]
    if status == "held":
        causes.add(f"held:{record.get('hold') or 'risk'}")
    elif status == "blocked":
        causes.add("blocked")
    return causes


def _group_order(audit: Audit) -> dict[str, int]:
    return {name: i for i, name in enumerate((*audit.groups, AUDIT_OTHER, AUDIT_UNKNOWN))}


def _judge(
    tallies: Mapping[str, _GroupTally], audit: Audit | None
) -> tuple[tuple[GroupServed, ...], tuple[Disparity, ...]]:
    """Each group with its ratios to the best-served judged group, and the judged groups
    under the audit's ``min_ratio``."""
    if audit is None or not tallies:
        return (), ()
    order = _group_order(audit)
    groups = [
        GroupServed(
            name,
            users=len(t.users),
            decisions=t.decisions,
            grants=t.grants,
            value=round(t.value, 2),
            judged=t.decisions >= MIN_GROUP_DECISIONS,
        )
        for name, t in sorted(tallies.items(), key=lambda item: order[item[0]])
    ]
    judged = [g for g in groups if g.judged]
    if not judged:
        return tuple(groups), ()
    best = max(judged, key=lambda g: (g.grant_rate, -order[g.group]))
    groups = [_with_ratios(g, best) for g in groups]
    disparities = tuple(
        _disparity(g, best, tallies, audit.min_ratio)
        for g in groups
        if g.judged and g.ratio is not None and g.ratio < audit.min_ratio
    )
    return tuple(groups), disparities


def _with_ratios(group: GroupServed, best: GroupServed) -> GroupServed:
    return dataclasses.replace(
        group,
        ratio=group.grant_rate / best.grant_rate if best.grant_rate else None,
        value_ratio=group.value_per_user / best.value_per_user if best.value_per_user else None,
    )


def _disparity(
    group: GroupServed, best: GroupServed, tallies: Mapping[str, _GroupTally], min_ratio: float
) -> Disparity:
    """Attribute the gap: the refusal whose share of the group's decisions most exceeds
    its share of the best group's. A gate that refuses both alike explains no gap."""
    ours, theirs = tallies[group.group].refusals, tallies[best.group].refusals

    def excess(code: str) -> float:
        return ours[code] / group.decisions - theirs[code] / best.decisions

    causes = sorted(ours, key=lambda code: (-excess(code), code))
    cause = causes[0] if causes and excess(causes[0]) > 0 else None
    assert group.ratio is not None  # only a group with a ratio is judged
    return Disparity(
        group.group,
        best.group,
        group.ratio,
        min_ratio,
        cause,
        cause_share=ours[cause] / group.decisions if cause else 0.0,
        best_share=theirs[cause] / best.decisions if cause else 0.0,
    )


def _notes(current: Program, candidate: Program, audit: Audit | None) -> tuple[str, ...]:
    notes = []
    if audit is None:
        notes.append("Neither program has an audit block: no group is compared or judged.")
    elif candidate.audit is None:
        notes.append(
            f"The candidate has no audit block: both runs are grouped by the current "
            f"program's ({audit.group_by}, min ratio {audit.min_ratio:g})."
        )
    elif current.audit is not None and current.audit != candidate.audit:
        notes.append(
            f"The programs' audit blocks differ: both runs are grouped by the candidate's "
            f"({audit.group_by}, min ratio {audit.min_ratio:g})."
        )
    if current.currency != candidate.currency:
        notes.append(
            f"Cost and value are in each program's currency ({current.currency}, "
            f"{candidate.currency}): their differences mean nothing."
        )
    return tuple(notes)


# ---------------------------------------------------------------- comparing and showing


def differences(whatif: WhatIf) -> dict[str, float]:
    """Every figure compared, candidate minus current, by name; a figure one run has and
    the other does not counts as 0 in the other. All zero for equal programs."""
    a, b = _figures(whatif.current), _figures(whatif.candidate)
    return {name: round(b.get(name, 0.0) - a.get(name, 0.0), 6) for name in sorted(a | b)}


def _figures(run: Served) -> dict[str, float]:
    figures: dict[str, float] = {
        "decisions": run.decisions,
        "grants": run.grants,
        "cost": run.cost,
        "value": run.value,
        "redeemed": run.redeemed,
        "redemption_rate": run.redemption_rate,
        "unseen": run.unseen,
        "left_out_users": run.left_out_users,
    }
    for limit in run.limits:
        figures[f"{limit.limit} refused"] = limit.refused
        figures[f"{limit.limit} first_ts"] = limit.first_ts / 1000  # seconds apart
    for code, count in run.left_out_by:
        figures[f"left out by {code}"] = count
    for group in run.groups:
        figures[f"group {group.group} grant_rate"] = group.grant_rate
        figures[f"group {group.group} value_per_user"] = group.value_per_user
        figures[f"group {group.group} ratio"] = group.ratio or 0.0
    return figures


def to_document(whatif: WhatIf) -> dict[str, Any]:
    """The comparison as JSON-ready data (``whatif --json``)."""

    def run(found: Served) -> dict[str, Any]:
        groups = [
            {**asdict(g), "grant_rate": g.grant_rate, "value_per_user": g.value_per_user}
            for g in found.groups
        ]
        return {
            **asdict(found),
            "redemption_rate": found.redemption_rate,
            "left_out_by": dict(found.left_out_by),
            "groups": groups,
        }

    return {
        "lines": whatif.lines,
        "failed": whatif.failed,
        "audit": None if whatif.audit is None else asdict(whatif.audit),
        "current": run(whatif.current),
        "candidate": run(whatif.candidate),
        "differences": differences(whatif),
        "notes": list(whatif.notes),
    }


def render(whatif: WhatIf) -> str:
    """The comparison as a person reads it: the two runs side by side, then the
    verdict."""
    a, b = whatif.current, whatif.candidate
    lines = [
        f"{whatif.lines:,} lines replayed under current {a.program} "
        f"(sha256 {a.source_sha256[:12]}) and candidate {b.program} "
        f"(sha256 {b.source_sha256[:12]}).",
        "",
        f"{'':<44} {'current':>14} {'candidate':>14} {'difference':>14}",
        _row("decisions on trigger events", a.decisions, b.decisions),
        _row("rewards granted", a.grants, b.grants),
        _row(f"cost granted ({b.currency})", a.cost, b.cost, money=True),
        _row(f"value granted ({b.currency})", a.value, b.value, money=True),
        _row("redeemed (answers in the input)", a.redeemed, b.redeemed),
        _row("redemption rate of grants users saw", a.redemption_rate, b.redemption_rate, 3),
        _row("grants users never saw (no answer)", a.unseen, b.unseen),
        _row("users left with nothing eligible", a.left_out_users, b.left_out_users),
        "",
        *_limits_table(a, b),
        "",
        *_left_out_table(a, b),
        "",
        *_groups_table(whatif),
        *(["", *whatif.notes] if whatif.notes else []),
        "",
        *_verdict(whatif),
    ]
    return "\n".join(lines)


def _row(
    name: str, current: float, candidate: float, decimals: int = 0, *, money: bool = False
) -> str:
    decimals = 2 if money else decimals
    return (
        f"{name:<44} {current:>14,.{decimals}f} {candidate:>14,.{decimals}f} "
        f"{candidate - current:>+14,.{decimals}f}"
    )


def _when(limit: LimitReached | None) -> str:
    if limit is None:
        return "never"
    moment = datetime.fromtimestamp(limit.first_ts / 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%SZ} ({limit.refused:,})"


def _limits_table(a: Served, b: Served) -> list[str]:
    ours, theirs = {x.limit: x for x in a.limits}, {x.limit: x for x in b.limits}
    names = sorted(ours | theirs)
    head = "Budgets and stock: first refusal (event time) and refusals in all"
    if not names:
        return [f"{head}: none refused a reward under either program."]
    rows = [f"{head}:", f"  {'':<28} {'current':>30} {'candidate':>30}"]
    rows += [f"  {n:<28} {_when(ours.get(n)):>30} {_when(theirs.get(n)):>30}" for n in names]
    return rows


def _left_out_table(a: Served, b: Served) -> list[str]:
    ours, theirs = dict(a.left_out_by), dict(b.left_out_by)
    codes = sorted(
        ours | theirs, key=lambda code: (-max(ours.get(code, 0), theirs.get(code, 0)), code)
    )
    head = "Users left with nothing eligible, by the gate that refused them (reward:gate)"
    if not codes:
        return [f"{head}: none."]
    rows = [f"{head}:"]
    for code in codes:
        rows.append(_row(f"  {code}", ours.get(code, 0), theirs.get(code, 0)))
    return rows


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _groups_table(whatif: WhatIf) -> list[str]:
    audit = whatif.audit
    if audit is None:
        return ["Audit groups: neither program has an audit block."]
    rows = [
        f"Audit groups by {audit.group_by} (grant rate on trigger events, value per user, "
        f"ratios to the best-served group; threshold {audit.min_ratio:g}):",
        f"  {'group':<12} {'users':>7} {'rate':>7} {'value/u':>8} {'ratio':>6} {'v.ratio':>7}"
        f"   | {'users':>7} {'rate':>7} {'value/u':>8} {'ratio':>6} {'v.ratio':>7}",
    ]
    ours = {g.group: g for g in whatif.current.groups}
    theirs = {g.group: g for g in whatif.candidate.groups}
    order = _group_order(audit)
    for name in sorted(ours | theirs, key=lambda n: order.get(n, len(order))):
        rows.append(
            f"  {name:<12} {_group_cells(ours.get(name))}   | {_group_cells(theirs.get(name))}"
        )
    rows.append(
        f"  (current on the left, candidate on the right; a group with fewer than "
        f"{MIN_GROUP_DECISIONS} decisions is marked * and not judged)"
    )
    return rows


def _group_cells(group: GroupServed | None) -> str:
    if group is None:
        return f"{'-':>7} {'-':>7} {'-':>8} {'-':>6} {'-':>7}"
    mark = "" if group.judged else "*"
    return (
        f"{group.users:>7,} {group.grant_rate:>7.3f} {group.value_per_user:>8.2f} "
        f"{_ratio(group.ratio):>6} {_ratio(group.value_ratio) + mark:>7}"
    )


def _verdict(whatif: WhatIf) -> list[str]:
    rows = [f"Already under the current program: {_says(d)}" for d in whatif.current.disparities]
    if not whatif.failed:
        zero = all(v == 0 for v in differences(whatif).values())
        same = " The two runs do not differ in any figure." if zero else ""
        return [*rows, f"PASS: no audit group of the candidate is under its threshold.{same}"]
    return [*rows, *(f"FAIL: {_says(d)}" for d in whatif.candidate.disparities)]


def _says(found: Disparity) -> str:
    head = (
        f"group {found.group} is granted at {found.ratio:.2f} of the rate of {found.best} "
        f"(under {found.min_ratio:g})"
    )
    if found.cause is None:
        return f"{head}; no gate refused it more often than {found.best}."
    return (
        f"{head}; responsible: {found.cause}, which refused {found.cause_share:.0%} of "
        f"{found.group}'s decisions and {found.best_share:.0%} of {found.best}'s."
    )
