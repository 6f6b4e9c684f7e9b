"""Consent on every decision: each records the consent it was made under, and one made
without personalization carries no model score."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.assembly import load_program_setting
from app.decisioning.engine import Engine
from app.replay import replay
from app.settings import Settings
from harness.simulation.logged import logged_closed_loop

SEED = 7
# Reason codes that only a model's score produces.
SCORED = ("policy.exploit", "policy.explore", "policy.below_minimum")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


def _withdrawals(lines: list[bytes], every: int) -> tuple[list[bytes], set[str]]:
    """``lines`` with every ``every``-th user withdrawing personalization halfway through,
    and those users."""
    documents = [orjson.loads(line) for line in lines]
    users = sorted({d["user_id"] for d in documents})[::every]
    middle = documents[len(documents) // 2]["ts"]
    withdrawals = [
        orjson.dumps(
            {
                "event_id": f"withdraw-{user}",
                "user_id": user,
                "type": "consent_updated",
                "ts": middle,
                "attributes": {"personalization": False},
            }
        )
        for user in users
    ]
    half = len(lines) // 2
    return [*lines[:half], *withdrawals, *lines[half:]], set(users)


def test_every_decision_records_its_consent_and_none_without_it_carries_a_score(
    settings: Settings,
) -> None:
    program = load_program_setting(settings.program)
    run = logged_closed_loop(
        program,
        events=3_000,
        users=300,
        seed=SEED,
        days=3,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )
    lines, withdrawn = _withdrawals(run.lines, every=3)
    engine = Engine(program, seed=SEED, partitions=settings.partitions)
    decisions = [
        document
        for record in replay(
            engine, lines, source_name="events", max_event_bytes=settings.max_event_bytes
        )
        if (document := orjson.loads(record))["kind"] == "decision"
    ]
    assert all(d["consent"] is not None for d in decisions)
    after: list[dict[str, Any]] = []
    for decision in decisions:
        if decision["event_id"] == f"withdraw-{decision['user_id']}":
            assert decision["consent"] == {"personalization": False, "marketing": True}
        if decision["user_id"] in withdrawn and decision["consent"]["personalization"] is False:
            after.append(decision)
    defaults = [d for d in after if d["reasons"][0] == "policy.default"]
    assert defaults, "no decision after a withdrawal chose anything: the test says nothing"
    for decision in after:
        assert decision["reasons"][0] not in SCORED, decision
        assert not any(str(code).startswith("feature.") for code in decision["reasons"])
        assert "propensity" not in str(decision["explanation"])
        if decision["status"] == "granted" and decision["reasons"][0] == "policy.default":
            assert decision["action"] == program.non_personalized_default
            assert decision["propensity"] == 1.0
    # Users who kept their consent are still decided by the model.
    kept = [d for d in decisions if d["user_id"] not in withdrawn]
    assert any(d["reasons"][0] == "policy.exploit" for d in kept)
    assert all(d["consent"]["personalization"] is True for d in kept)
