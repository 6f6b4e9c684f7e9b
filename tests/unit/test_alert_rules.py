"""The alert rules in deploy/prometheus/alerts.yml: valid for promtool, passing their own
unit tests (alerts_test.yml, where each alert fires and, in another case, must not),
written on metrics and labels the worker really exports, and loaded by the compose
stack's Prometheus. Without promtool (``make prometheus-bin``) the promtool tests skip
on a developer's machine and FAIL under ``CI=true``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from app.programs import load_program
from app.programs.loader import BUILTIN_DIR
from tests.unit.promql import (
    TARGET_LABELS,
    exported_series,
    parse,
    run_promtool,
    unknown_names,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
SEVERITIES = {"critical", "warning"}
BUDGET_ALERT = "RewardstreamBudgetBurnTooFast"


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _known_series() -> dict[str, frozenset[str]]:
    """What the worker exports, and what the recording rules make of it: each recorded
    series with the labels its expression groups by and those of the records it reads
    (in file order, so a rule may use the records above it)."""
    known = dict(exported_series())
    recorded: set[str] = set()
    for rule in _rules():
        if "record" in rule:
            query = parse(rule["expr"])
            assert unknown_names(query, known) == [], rule["record"]
            kept = [known[name] for name in query.metrics & recorded]
            known[rule["record"]] = frozenset(query.grouping).union(*kept)
            recorded.add(rule["record"])
    return known


def _series(notation: str) -> tuple[str, set[str]]:
    """A promtool input series, ``name{a="1", b="2"}``, as its name and label names."""
    match = re.fullmatch(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*", notation)
    assert match, f"not a series: {notation}"
    return match.group(1), set(re.findall(r"([a-zA-Z_]\w*)\s*=", match.group(2) or ""))


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_rule_file() -> None:
    output = run_promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_promtool_accepts_the_prometheus_config_and_the_rule_files_it_names() -> None:
    output = run_promtool("check", "config", CONFIG)
    assert "1 rule files found" in output


def test_the_rules_pass_their_unit_tests() -> None:
    run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


# ---------------------------------------------------------------- what the rules say


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    alerts = _alerts()
    assert len({alert["alert"] for alert in alerts}) == len(alerts), "alert names are unique"
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no `for:`, it would fire on one evaluation"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = alert.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        assert len(annotations.get("description", "").split()) >= 15, f"{name}: no runbook"


def test_alert_expressions_use_only_metrics_and_labels_the_worker_exports() -> None:
    exported = _known_series()
    for alert in _alerts():
        query = parse(alert["expr"])
        assert query.metrics, f"{alert['alert']} selects no metric"
        assert unknown_names(query, exported) == [], alert["alert"]


def test_every_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    cases: dict[str, list[bool]] = {}
    for test in _yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for alert in _alerts():
        name = alert["alert"]
        assert True in cases.get(name, []), f"{name} never fires in {RULE_TESTS.name}"
        assert False in cases.get(name, []), f"{name} is never checked quiet"


def test_the_rule_tests_feed_series_the_worker_exports() -> None:
    """Input series with a wrong name or label would test the rules on data that
    never comes; a rule and its test misspelled alike would still pass promtool."""
    exported = exported_series()
    for test in _yaml(RULE_TESTS)["tests"]:
        for item in test["input_series"]:
            name, labels = _series(item["series"])
            assert name in exported, f"{test['name']}: {name} is not exported"
            assert labels <= exported[name], (
                f"{test['name']}: {name} has no {labels - exported[name]}"
            )
            assert labels >= TARGET_LABELS, f"{test['name']}: {name} lacks job or instance"


def test_the_budget_alert_covers_every_budget_of_the_shipped_programs() -> None:
    """The alert has a clause (a horizon) per budget label value; a program with a new
    period window needs one too."""
    (alert,) = [a for a in _alerts() if a["alert"] == BUDGET_ALERT]
    covered = set(re.findall(r'budget="([^"]+)"', alert["expr"]))
    programs = sorted(BUILTIN_DIR.glob("*.yaml"))
    assert programs
    for path in programs:
        budgets = load_program(path).budgets
        names = {period.window.text for period in budgets.periods}
        names |= {"total"} if budgets.total is not None else set()
        assert names <= covered, f"{path.name}: no clause for {sorted(names - covered)}"


def test_the_worker_job_of_the_alerts_is_the_one_prometheus_scrapes() -> None:
    (job,) = [scrape["job_name"] for scrape in _yaml(CONFIG)["scrape_configs"]]
    for rule in _rules():
        for named in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert named == job, rule.get("alert", rule.get("record"))


# ---------------------------------------------------------------- deployment


def test_compose_mounts_the_rule_file_where_prometheus_reads_it() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")
    mounts = {}
    for entry in compose["services"]["prometheus"]["volumes"]:
        source, target = str(entry).split(":")[:2]
        mounts[PurePosixPath(target)] = (ROOT / source).resolve()
    config_path = PurePosixPath("/etc/prometheus/prometheus.yml")
    assert mounts[config_path] == CONFIG
    rule_files = _yaml(CONFIG)["rule_files"]
    assert rule_files == ["alerts.yml"]
    for rule_file in rule_files:
        # Prometheus resolves rule_files relative to the configuration file.
        assert mounts.get(config_path.parent / rule_file) == RULES
        assert (CONFIG.parent / rule_file).resolve() == RULES
