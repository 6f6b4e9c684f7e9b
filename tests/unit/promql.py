"""What the alert rules and the dashboard query, against what the worker exports.

Shared by ``test_alert_rules.py`` and ``test_dashboard.py``:

- :func:`parse` reads a PromQL expression (also one with Grafana's ``$__rate_interval``)
  into the metric names it selects, the label names its selectors match on and the label
  names it groups or matches by. A small tokenizer, not a PromQL parser: promtool checks
  the syntax; this finds the names, so a misspelled metric fails a test instead of
  drawing an empty panel or an alert that can never fire.
- :func:`exported_series` lists the series names the worker's registry exposes (counters
  with ``_total``, histograms as ``_bucket``, ``_count`` and ``_sum``), each with its
  label names, built from :class:`app.metrics.Metrics` as ``test_metrics.py`` does.
- :func:`run_promtool` runs promtool and fails the test with its output; without
  promtool the test skips on a developer's machine and FAILS under ``CI=true``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.metrics import Metrics, RollingGauge
from tests.conftest import required_binary

# Labels Prometheus adds to every scraped series (the scrape job and the target).
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus makes itself for every target; `up` is 1 when the scrape worked.
SCRAPE_SERIES = {"up": TARGET_LABELS}

FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "info",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
# Keywords are case-insensitive in PromQL; functions are not.
AGGREGATIONS = frozenset(
    [
        "avg",
        "bottomk",
        "count",
        "count_values",
        "group",
        "limit_ratio",
        "limitk",
        "max",
        "min",
        "quantile",
        "stddev",
        "stdvar",
        "sum",
        "topk",
    ]
)
# Followed by a parenthesized list of label names (optional after group_left/right).
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OPERATOR_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
AT_MODIFIERS = frozenset({"start", "end"})  # `metric @ start()`

_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# A duration (5m, 1h30m) before a plain number, so `5m` is not `5` and an identifier.
_NUMBER = re.compile(
    r"(?:[0-9]+(?:ms|[smhdwy]))+(?![a-zA-Z0-9_])"
    r"|0[xX][0-9a-fA-F]+"
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
)
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[a-zA-Z_][a-zA-Z0-9_]*)")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


class PromQLError(ValueError):
    """The expression has something this reader does not accept (a typo, usually)."""


@dataclasses.dataclass(frozen=True)
class Query:
    """The names one PromQL expression uses."""

    selectors: tuple[tuple[str, frozenset[str]], ...]  # (metric, labels its matchers name)
    grouping: frozenset[str]  # labels in by, without, on, ignoring, group_left/right

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.selectors)


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # name, matchers, range, string, number, variable, punct
    text: str


def _skip_string(expr: str, start: int) -> int:
    """The index after the string literal that opens at ``start``."""
    quote, index = expr[start], start + 1
    while index < len(expr):
        if expr[index] == "\\" and quote != "`":
            index += 2
            continue
        if expr[index] == quote:
            return index + 1
        index += 1
    raise PromQLError(f"unterminated string at {start}: {expr[start : start + 30]!r}")


def _closing(expr: str, start: int, close: str) -> int:
    """The index after ``close`` for the bracket at ``start`` (strings inside skipped)."""
    index = start + 1
    while index < len(expr):
        if expr[index] in "\"'`":
            index = _skip_string(expr, index)
        elif expr[index] == close:
            return index + 1
        else:
            index += 1
    raise PromQLError(f"no {close!r} for {expr[start]!r} at {start}")


def _blank_strings(text: str) -> str:
    """``text`` with each string literal replaced by an empty one."""
    out, index = [], 0
    while index < len(text):
        if text[index] in "\"'`":
            end = _skip_string(text, index)
            out.append('""')
            index = end
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def _tokens(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(expr):
        char = expr[index]
        if char.isspace():
            index += 1
            continue
        if char == "#":  # a comment runs to the end of the line
            newline = expr.find("\n", index)
            index = len(expr) if newline < 0 else newline
            continue
        if char in "\"'`":
            end = _skip_string(expr, index)
            kind = "string"
        elif char == "{":
            end = _closing(expr, index, "}")
            kind = "matchers"
        elif char == "[":  # a range or subquery: durations and Grafana variables only
            end = _closing(expr, index, "]")
            kind = "range"
        elif char == "$":
            match = _GRAFANA_VARIABLE.match(expr, index)
            if match is None:
                raise PromQLError(f"a lone $ at {index}")
            end, kind = match.end(), "variable"
        elif (found := _NUMBER.match(expr, index)) and found.end() > index:
            end, kind = found.end(), "number"
            if _IDENTIFIER.match(expr, end):
                raise PromQLError(f"a number runs into a name: {expr[index : end + 10]!r}")
        elif found := _IDENTIFIER.match(expr, index):
            end, kind = found.end(), "name"
        else:
            end, kind = index + 1, "punct"
        tokens.append(_Token(kind, expr[index:end]))
        index = end
    return tokens


def _label_list(tokens: list[_Token], start: int) -> tuple[set[str], int]:
    """The label names of the ``( a, b )`` at ``start``, and the index after it."""
    labels: set[str] = set()
    index = start + 1
    while index < len(tokens) and tokens[index].text != ")":
        if tokens[index].kind == "name":
            labels.add(tokens[index].text)
        elif tokens[index].text != ",":
            raise PromQLError(f"not a label list: {tokens[index].text!r}")
        index += 1
    if index == len(tokens):
        raise PromQLError("a label list without ')'")
    return labels, index + 1


def parse(expr: str) -> Query:
    """The metrics ``expr`` selects, with the labels of their matchers, and the labels it
    groups or matches by. Raises :class:`PromQLError` on a function PromQL does not have,
    a ``__name__`` matcher (the name would hide from this reader) or a broken token."""
    tokens = _tokens(expr)
    selectors: list[tuple[str, frozenset[str]]] = []
    grouping: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        opens = following is not None and following.text == "("
        if token.kind == "matchers" and (index == 0 or tokens[index - 1].kind != "name"):
            raise PromQLError(f"a selector without a metric name: {token.text}")
        if token.kind != "name":
            index += 1
            continue
        word = token.text.lower()
        if word in LABEL_LISTS:
            if opens:
                labels, index = _label_list(tokens, index + 1)
                grouping |= labels
                continue
            if word not in {"group_left", "group_right"}:
                raise PromQLError(f"{token.text} without a label list")
        elif word in AGGREGATIONS or word in OPERATOR_WORDS:
            pass
        elif opens:
            after_at = index > 0 and tokens[index - 1].text == "@"
            if token.text not in FUNCTIONS and not (after_at and word in AT_MODIFIERS):
                raise PromQLError(f"not a PromQL function: {token.text}(")
        else:
            matched: frozenset[str] = frozenset()
            if following is not None and following.kind == "matchers":
                matched = frozenset(_MATCHER_LABEL.findall(_blank_strings(following.text)))
                if "__name__" in matched:
                    raise PromQLError(f"a __name__ matcher hides the metric: {following.text}")
            selectors.append((token.text, matched))
        index += 1
    return Query(tuple(selectors), frozenset(grouping))


def metric_names(expr: str) -> frozenset[str]:
    """The metric names ``expr`` selects."""
    return parse(expr).metrics


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the worker exposes, with its label names (``le`` on buckets),
    plus ``up``, which Prometheus records for each target. Target labels included."""
    series: dict[str, frozenset[str]] = {
        name: frozenset(labels) for name, labels in SCRAPE_SERIES.items()
    }
    metrics = Metrics(CollectorRegistry())
    families = set()
    for value in vars(metrics).values():
        metric = value.gauge if isinstance(value, RollingGauge) else value
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        families.add(metric._name)
        labels = frozenset(metric._labelnames) | TARGET_LABELS
        if isinstance(metric, Counter):
            series[f"{metric._name}_total"] = labels
        elif isinstance(metric, Histogram):
            series[f"{metric._name}_bucket"] = labels | {"le"}
            series[f"{metric._name}_count"] = labels
            series[f"{metric._name}_sum"] = labels
        else:
            series[metric._name] = labels
    # Every metric of the registry was found among Metrics' fields.
    assert families == {family.name for family in metrics.registry.collect()}
    return series


def unknown_names(query: Query, exported: dict[str, frozenset[str]]) -> list[str]:
    """What ``query`` names that the worker does not export: metrics, labels of a
    metric's matchers, and grouping labels no selected metric has."""
    problems = [f"metric {name}" for name in sorted(query.metrics - set(exported))]
    known_labels: set[str] = set()
    for name, matched in query.selectors:
        labels = exported.get(name, frozenset())
        known_labels |= labels
        problems += [f"label {label} of {name}" for label in sorted(matched - labels)]
    problems += [f"label {label} (by/on)" for label in sorted(query.grouping - known_labels)]
    return problems


def promtool() -> str:
    return required_binary("promtool")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> str:
    """promtool's output; the test fails with all of it when promtool exits non-zero."""
    command = [promtool(), *map(str, args)]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout
