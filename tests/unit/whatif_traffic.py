"""Programs and traffic for the what-if tests (tests/unit/test_whatif.py and the CLI's
integration test): three countries of shoppers, a program that serves them all, and
the same program with one eligibility rule that leaves France out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

COUNTRIES = ("DE", "FR", "NL")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EXCLUDING_RULE = "outside-france"


def program(
    *, excluding: bool = False, rule: str | None = None, total_budget: float = 10_000.0
) -> dict[str, Any]:
    """One cashback on every purchase, audited by country; with ``excluding``, an
    eligibility rule refuses it to French users (the flaw the check must name); ``rule``
    another rule of that name instead."""
    cashback: dict[str, Any] = {
        "id": "cashback",
        "kind": "cashback",
        "value": 2,
        "cost": 2,
        "channels": ["web"],
    }
    if excluding or rule:
        cashback["eligibility"] = {EXCLUDING_RULE: rule or "country != 'FR'"}
    return {
        "id": "fair-shop",
        "name": "Fairness test shop",
        "currency": "EUR",
        "triggers": ["purchase"],
        "profile_fields": ["country"],
        "rewards": [cashback],
        "budgets": {"total": total_budget},
        "learning": {"epsilon": 0.0},
        "fraud": {"enabled": False},
        "audit": {"group_by": "country", "groups": list(COUNTRIES)},
    }


def write_program(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def traffic(*, users_per_country: int = 20, purchases: int = 3) -> list[bytes]:
    """Each user signs up (with a country) and then buys ``purchases`` times, an hour
    apart; every second grant of the current program is redeemed (the answer names the
    decision the program makes for that user and event)."""
    from app.contract.records import decision_id_for

    lines: list[dict[str, Any]] = []
    ts = START_MS
    for n in range(users_per_country):
        for country in COUNTRIES:
            user = f"u-{country}-{n:03d}"
            ts += 1_000
            lines.append(_event(f"{user}-s", user, "signup", ts, attributes={"country": country}))
    for round_ in range(purchases):
        for n in range(users_per_country):
            for country in COUNTRIES:
                user = f"u-{country}-{n:03d}"
                ts += 60_000
                event_id = f"{user}-p{round_}"
                lines.append(_event(event_id, user, "purchase", ts, amount=30.0, currency="EUR"))
                if n % 2 == 0:
                    decision = decision_id_for("fair-shop", user, event_id)
                    lines.append(
                        _event(
                            f"{event_id}-r", user, "reward_redeemed", ts + 1, decision_id=decision
                        )
                    )
    return [orjson.dumps(line) for line in lines]


def _event(event_id: str, user: str, kind: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "type": kind,
        "ts": ts,
        "channel": "web",
        **fields,
    }
