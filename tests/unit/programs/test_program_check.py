"""``rewardstream program check``: a program read back as a worker would load it, or the
reason it would not start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app import cli
from app.programs import load_builtin, load_program
from app.programs.summary import summarize


def test_the_summary_says_what_each_reward_and_limit_resolves_to(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "id": "shop",
                "name": "Shop",
                "currency": "EUR",
                "triggers": ["signup", "purchase"],
                "rewards": [
                    # No triggers of its own: the program's apply, and the summary says so.
                    {
                        "id": "points",
                        "kind": "points",
                        "value": 5,
                        "cost": 0.5,
                        "channels": ["web"],
                        "stock": 40,
                        "lever": 1.5,
                    },
                    {
                        "id": "cashback",
                        "kind": "cashback",
                        "value": "min(0.05 * amount, 20)",
                        "cost": "min(0.05 * amount, 20)",
                        "channels": ["web", "email"],
                        "triggers": ["purchase"],
                        "eligibility": {"min-basket": "amount >= 20"},
                    },
                ],
                "budgets": {"total": 1000, "periods": [{"window": "1d", "limit": 100}]},
                "contact": {"max_per_day": 3, "per_channel": {"email": {"max_per_week": 2}}},
                "learning": {"exploration": "softmax", "temperature": 0.2},
                "experiment": {
                    "id": "spring",
                    "arms": [
                        {"name": "program", "share": 0.9},
                        {"name": "holdout", "share": 0.1, "serves": "nothing"},
                    ],
                },
            },
            sort_keys=False,
        )
    )
    program = load_program(path)
    lines = summarize(program).splitlines()
    assert lines[0] == f"shop (Shop), sha256 {program.source_sha256[:8]}"
    assert (
        "    points: points; value 5; cost 0.5; on signup, purchase; via web; stock 40; lever 1.5"
        in lines
    )
    assert (
        "    cashback: cashback; value min(0.05 * amount, 20); cost min(0.05 * amount, 20); "
        "on purchase; via web, email; if min-basket" in lines
    )
    assert "  budgets: total 1000, 100 per 1d" in lines
    assert "  contact: 3 a day, email 2 a week" in lines
    assert lines[-1] == "  experiment spring: program 90% (program), holdout 10% (nothing)"
    assert any(line.startswith("  learning: softmax (temperature 0.2)") for line in lines)


def test_check_prints_each_program_and_fails_naming_the_one_that_would_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    shipped = Path(cli.__file__).parent / "programs" / "shipped" / "retail-loyalty.yaml"
    bad.write_text(shipped.read_text().replace("amount >= 20", "amount >= '20'"))

    assert cli.main(["program", "check", "bank-rewards", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(summarize(load_builtin("bank-rewards")))
    assert "retail-loyalty" not in out
    assert f"{bad}, line " in err
    assert "'amount' is a number, never the string '20'" in err

    assert cli.main(["program", "check", "retail-loyalty", "bank-rewards"]) == 0
