"""`rewardstream whatif`: the same traffic replayed under two programs, compared group by
group (app.evaluation.whatif)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from app import cli
from app.assembly import load_program_setting
from app.evaluation.whatif import (
    MIN_GROUP_DECISIONS,
    LimitReached,
    ReplayOptions,
    WhatIf,
    answer_as_seen,
    compare,
    differences,
    refusal_causes,
    render,
)
from app.programs import Audit, Program, load_program
from app.settings import Settings
from harness.simulation.logged import logged_closed_loop
from tests.unit.whatif_traffic import EXCLUDING_RULE, program, traffic, write_program

OPTIONS = ReplayOptions(seed=7, partitions=1, max_event_bytes=65_536)
EXCLUDED_BY = f"cashback:rule.{EXCLUDING_RULE}:failed"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_program(tmp_path_factory.mktemp("whatif") / "current.yaml", program())


@pytest.fixture(scope="module")
def excluding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whatif") / "candidate.yaml"
    return write_program(path, program(excluding=True))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whatif") / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in traffic()))
    return path


def _compare(current: Path | Program, candidate: Path | Program, **options: Any) -> WhatIf:
    old, new = (p if isinstance(p, Program) else load_program(p) for p in (current, candidate))
    return compare(old, new, traffic(), dataclasses.replace(OPTIONS, **options))


# ---------------------------------------------------------------- the verdict


def test_a_program_that_leaves_a_country_out_is_flagged_with_the_rule_that_does_it(
    shop: Path, excluding: Path
) -> None:
    found = _compare(shop, excluding)
    assert found.failed
    (gap,) = found.candidate.disparities
    assert (gap.group, gap.ratio, gap.cause) == ("FR", 0.0, EXCLUDED_BY)
    assert (gap.cause_share, gap.best_share) == (1.0, 0.0)
    assert found.current.disparities == ()  # the current program serves everyone alike
    # The French shoppers are left with nothing, and the rule is named for them too.
    assert found.candidate.left_out_users == 20
    assert dict(found.candidate.left_out_by) == {EXCLUDED_BY: 20}
    by_group = {g.group: g for g in found.candidate.groups}
    assert (by_group["FR"].grant_rate, by_group["DE"].grant_rate) == (0.0, 1.0)
    assert "FAIL: group FR is granted at 0.00 of the rate of DE (under 0.8); " in render(found)
    assert f"responsible: {EXCLUDED_BY}" in render(found)


def test_identical_programs_differ_by_nothing(shop: Path) -> None:
    found = _compare(shop, shop)
    assert not found.failed
    assert found.current == found.candidate
    assert set(differences(found).values()) == {0.0}
    assert "The two runs do not differ in any figure." in render(found)


def test_identical_programs_differ_by_nothing_on_a_closed_loop_with_exploration() -> None:
    """The retail program explores (random draws) and learns from answers: equal programs
    still make equal draws and read equal answers."""
    retail = load_program_setting("retail-loyalty")
    audited = dataclasses.replace(retail, audit=Audit("country", ("DE", "FR", "NL")))
    settings = Settings()
    run = logged_closed_loop(
        audited,
        events=1_500,
        users=150,
        seed=7,
        days=2,
        partitions=2,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=None,
    )
    found = compare(audited, audited, run.lines, dataclasses.replace(OPTIONS, partitions=2))
    assert found.current.redeemed > 0
    assert found.current.unseen == 0
    assert set(differences(found).values()) == {0.0}


def test_a_figure_that_changes_shows_in_the_differences(shop: Path, excluding: Path) -> None:
    changed = differences(_compare(shop, excluding))
    assert changed["grants"] == -20 * 3
    assert changed["group FR grant_rate"] == -1.0
    assert changed[f"left out by {EXCLUDED_BY}"] == 20


def test_a_small_group_is_shown_but_not_judged(shop: Path, excluding: Path) -> None:
    lines = traffic(users_per_country=3)  # 9 decisions per group, under the minimum
    programs = load_program(shop), load_program(excluding)
    found = compare(*programs, lines, OPTIONS)
    assert all(g.decisions < MIN_GROUP_DECISIONS for g in found.candidate.groups)
    assert not any(g.judged for g in found.candidate.groups)
    assert not found.failed


def test_the_threshold_is_the_programs(tmp_path: Path, shop: Path) -> None:
    """French users get the cashback on their first purchase only: a third of the others'
    rate fails the four-fifths rule and passes a threshold under it."""
    partial = program(rule="country != 'FR' or purchases < 2")
    found = _compare(shop, write_program(tmp_path / "partial.yaml", partial))
    (gap,) = found.candidate.disparities
    assert (gap.group, gap.min_ratio, gap.cause) == ("FR", 0.8, EXCLUDED_BY)
    assert gap.ratio == pytest.approx(1 / 3)
    partial["audit"]["min_ratio"] = 0.3
    assert not _compare(shop, write_program(tmp_path / "lenient.yaml", partial)).failed


# ---------------------------------------------------------------- what each run says


def test_when_a_budget_runs_out_is_the_event_time_of_its_first_refusal(
    tmp_path: Path, shop: Path
) -> None:
    lines = traffic()
    purchases = [orjson.loads(x) for x in lines if b'"purchase"' in x]
    capped = write_program(tmp_path / "capped.yaml", program(total_budget=50))
    found = _compare(shop, capped)
    # 25 cashbacks of 2 fit in 50: the 26th purchase is the first refused.
    refused = len(purchases) - 25
    assert found.candidate.limits == (LimitReached("budget total", purchases[25]["ts"], refused),)
    assert found.current.limits == ()
    assert "2026-01-01T00:" in render(found)


def test_answers_count_as_redemptions_only_for_rewards_users_saw(
    shop: Path, excluding: Path
) -> None:
    found = _compare(shop, excluding)
    # Every second user redeems each cashback: 30 of 60 users, 3 purchases each.
    assert (found.current.redeemed, found.current.grants) == (90, 180)
    # The French users never got the candidate's cashback: their answers are withheld.
    assert (found.candidate.redeemed, found.candidate.grants) == (60, 120)
    assert found.candidate.unseen == 0
    assert found.candidate.redemption_rate == 0.5


def test_an_answer_reaches_another_program_only_where_it_granted_the_same_reward() -> None:
    answer = orjson.dumps(
        {
            "event_id": "a1",
            "user_id": "u",
            "type": "reward_redeemed",
            "ts": 5,
            "decision_id": "d-cur",
        }
    )
    seen = {"d-cur": ("u", "e1", "cashback")}

    def decided(**record: object) -> dict[tuple[str, str], dict[str, object]]:
        return {
            ("u", "e1"): {"decision_id": "d-cur", "status": "granted", "action": "cashback"}
            | record
        }

    assert answer_as_seen(answer, seen, decided()) is answer
    translated = answer_as_seen(answer, seen, decided(decision_id="d-other"))
    assert translated is not None
    assert orjson.loads(translated)["decision_id"] == "d-other"
    assert answer_as_seen(answer, seen, decided(action="points")) is None
    assert answer_as_seen(answer, seen, decided(status="none", action=None)) is None
    assert answer_as_seen(answer, seen, {}) is None
    # Not an answer to a current grant: passed as it is, as is any other line.
    assert answer_as_seen(answer, {}, decided()) is answer
    purchase = b'{"event_id":"e2","user_id":"u","type":"purchase","ts":6}'
    assert answer_as_seen(purchase, seen, decided()) is purchase


def test_why_a_decision_granted_nothing() -> None:
    record = {
        "status": "held",
        "hold": "pending",
        "reasons": ["policy.exploit", "skip.points:rule.adult:failed", "skip.card:stock:exhausted"],
    }
    assert refusal_causes(record) == {
        "points:rule.adult:failed",
        "card:stock:exhausted",
        "held:pending",
    }
    below = {"status": "none", "reasons": ["policy.below_minimum"]}
    assert refusal_causes(below) == {"policy.below_minimum"}


# ---------------------------------------------------------------- the command


def test_the_command_exits_1_naming_the_rule(
    shop: Path, excluding: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["whatif", "--current", str(shop), "--candidate", str(excluding), "--in", str(events)]
    assert cli.main([*args, "--seed", "7", "--partitions", "1"]) == 1
    out = capsys.readouterr().out
    assert f"responsible: {EXCLUDED_BY}" in out


def test_the_command_passes_identical_programs_with_json(
    shop: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["whatif", "--current", str(shop), "--candidate", str(shop), "--in", str(events)]
    assert cli.main([*args, "--json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["failed"] is False
    assert set(document["differences"].values()) == {0}
    assert document["audit"] == {
        "group_by": "country",
        "groups": ["DE", "FR", "NL"],
        "min_ratio": 0.8,
    }
    assert [g["group"] for g in document["candidate"]["groups"]] == ["DE", "FR", "NL"]


def test_the_command_refuses_a_file_without_events(
    shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"not json\n")
    args = ["whatif", "--current", str(shop), "--candidate", str(shop), "--in", str(empty)]
    assert cli.main(args) == 2
    assert "Cannot compare: none of the 1 lines is an event" in capsys.readouterr().err
