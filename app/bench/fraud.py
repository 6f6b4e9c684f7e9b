"""What attackers take: the budget an engine grants to attack traffic, per scenario.

Replays labelled attack traffic (:mod:`app.simulation.attacks`) through the
same pipeline as the worker and counts, per scenario, the rewards and their cost
granted to attacker accounts, beside what normal users got. Run against the
engine as it is, it gives the undefended baseline that the fraud layer is
measured against.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.decisioning.engine import Engine
from app.replay import replay
from app.simulation.attacks import LabelledEvent, attacker_accounts


@dataclass
class Take:
    """Rewards granted to one group of users."""

    accounts: int = 0
    events: int = 0
    granted: int = 0
    cost: float = 0.0
    actions: dict[str, int] = field(default_factory=dict)


def attack_take(engine: Engine, events: list[LabelledEvent]) -> dict[str, Take]:
    """Per scenario (and ``normal``), what ``engine`` granted to those accounts."""
    owners = _scenario_by_account(events)
    takes: dict[str, Take] = defaultdict(Take)
    for scenario, users in attacker_accounts(events).items():
        takes[scenario].accounts = len(users)
    takes["normal"].accounts = len({e.document["user_id"] for e in events} - owners.keys())
    for labelled in events:
        takes[labelled.scenario or "normal"].events += 1
    lines = [orjson.dumps(e.document) for e in events]
    for value in replay(engine, lines, source_name="attacks", max_event_bytes=65_536):
        record: dict[str, Any] = orjson.loads(value)
        if record.get("kind") != "decision" or record["status"] != "granted":
            continue
        take = takes[owners.get(record["user_id"], "normal")]
        take.granted += 1
        take.cost += record["cost"]
        take.actions[record["action"]] = take.actions.get(record["action"], 0) + 1
    return dict(takes)


def _scenario_by_account(events: list[LabelledEvent]) -> dict[str, str]:
    """Attacker account -> its scenario. Replays of normal users' events do not make
    those users attackers: only accounts whose every event is labelled count."""
    labels: dict[str, set[str | None]] = defaultdict(set)
    for labelled in events:
        labels[labelled.document["user_id"]].add(labelled.scenario)
    return {
        user: next(iter(scenarios))  # type: ignore[misc]
        for user, scenarios in labels.items()
        if len(scenarios) == 1 and None not in scenarios
    }
