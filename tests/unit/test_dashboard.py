"""The Grafana dashboard deploy/grafana/dashboards/rewardstream.json: a valid dashboard
in the folder Grafana's provisioning loads, every panel on the provisioned Prometheus,
and every metric and label its queries name one the worker exports. Also the PromQL
reader (tests/unit/promql.py) that this test and test_alert_rules.py share.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.unit.promql import PromQLError, exported_series, parse, run_promtool, unknown_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rewardstream.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
GRID_COLUMNS = 24
# Grafana's own variables, and what promtool is given in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def _graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in _panels(dashboard) if panel["type"] != "row"]


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every query of every panel."""
    return [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _graphs(dashboard)
        for target in panel["targets"]
    ]


# ---------------------------------------------------------------- the dashboard


def test_the_dashboard_is_a_valid_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "rewardstream"
    assert dashboard["uid"] == "rewardstream"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36  # the datasource-reference era (Grafana 9+)
    assert "id" not in dashboard or dashboard["id"] is None, "Grafana assigns ids"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in _graphs(dashboard):
        assert panel.get("title"), panel["id"]
        assert panel.get("datasource"), panel["title"]
        assert panel.get("targets"), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: a target without expr"


def test_panels_sit_on_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                other = taken.setdefault((row, column), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    (source,) = _yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    expected = {"type": source["type"], "uid": source["uid"]}
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8"), "no import-time inputs"
    assert "__inputs" not in dashboard
    for panel in _graphs(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]


def test_the_dashboard_is_in_the_folder_grafana_loads() -> None:
    (provider,) = _yaml(PROVISIONING / "dashboards" / "rewardstream.yml")["providers"]
    compose = _yaml(ROOT / "docker-compose.yml")
    mounts = {}
    for entry in compose["services"]["grafana"]["volumes"]:
        source, target = str(entry).split(":")[:2]
        mounts[PurePosixPath(target)] = (ROOT / source).resolve()
    assert mounts[PurePosixPath(provider["options"]["path"])] == DASHBOARD.parent
    assert mounts[PurePosixPath("/etc/grafana/provisioning")] == PROVISIONING


def test_every_metric_and_label_in_the_dashboard_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    for where, expr in _expressions(dashboard):
        query = parse(expr)
        assert query.metrics, f"{where} selects no metric"
        assert unknown_names(query, exported) == [], f"{where}: {expr}"


def test_promtool_parses_every_dashboard_expression(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    """Each query as a recording rule (Grafana's variables replaced by durations)."""
    rules = []
    for panel in _graphs(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a variable the dashboard does not define"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool("check", "rules", path)
    assert f"SUCCESS: {len(rules)} rules found" in output


# ---------------------------------------------------------------- the PromQL reader


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        (
            'sum by (program, reward) (rate(rewardstream_decisions_total{status="granted"}'
            "[$__rate_interval]))",
            {"rewardstream_decisions_total"},
        ),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > bool 0.5", {"a_bucket"}),
        ("a / on (instance) group_left (reward) b offset 1h30m", {"a", "b"}),
        ("a * on(instance) group_left sum(b) by (instance)", {"a", "b"}),
        ("sum(rate(foo_total[5m])) without (le, job)", {"foo_total"}),
        ('predict_linear(min by (p) (g{budget="1d"})[1h:1m], 86400) < 0 or vector(0)', {"g"}),
        ('up{job="w"} == 0 unless absent(other) and c @ start()', {"up", "other", "c"}),
        ('count_values("le{[by (x)", x) # rate(in_a_comment[5m])\n + y', {"x", "y"}),
        ("1e-7 * x + 0x1F - Inf + NaN + .5 * 2", {"x"}),
        ("SUM BY (a) (x) OR Y", {"x", "Y"}),
        ("a_total offset -5m", {"a_total"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("topk(3, sum by (reason) (rate(d_total[1h:])))", {"d_total"}),
        ("level:rewardstream_events:rate5m", {"level:rewardstream_events:rate5m"}),
    ],
)
def test_the_reader_finds_the_metric_names(expr: str, metrics: set[str]) -> None:
    assert parse(expr).metrics == metrics


def test_the_reader_finds_the_labels_of_matchers_and_groupings() -> None:
    query = parse('sum by (program) (x{a="1", b!~"}"}) / ignoring(c) group_right y')
    assert query.selectors == (("x", frozenset({"a", "b"})), ("y", frozenset()))
    assert query.grouping == {"program", "c"}
    exported = {"x": frozenset({"a", "program"}), "y": frozenset()}
    assert unknown_names(query, exported) == ["label b of x", "label c (by/on)"]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rat(x[5m])", "not a PromQL function"),
        ('{__name__="x"}', "without a metric name"),
        ('x{__name__="y"}', "__name__"),
        ("sum by program (x)", "without a label list"),
        ("rate(x[5m]) * 5min", "runs into a name"),
        ('x{a="1}', "unterminated string"),
    ],
)
def test_the_reader_refuses_what_it_cannot_read(expr: str, problem: str) -> None:
    with pytest.raises(PromQLError, match=problem):
        parse(expr)
