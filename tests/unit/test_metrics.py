"""The worker's metrics: documented one for one, labelled only from small fixed sets, and
observed by the pipeline as docs/observability.md says."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.contract import SourcePosition
from app.decisioning import Engine
from app.features import UserState
from app.metrics import ROLLING_WINDOW_S, Children, Metrics, RollingGauge, metric_names
from app.models import log_loss
from app.pipeline import Pipeline, Tables
from app.programs import Audit, Program, load_program

DOC = Path(__file__).parents[2] / "docs" / "observability.md"
PROGRAM = load_program(Path(__file__).parents[1] / "fixtures" / "test-program.yaml")
T0 = 1_772_366_400_000
HOUR = 3_600_000
# Label names a metric may have: each takes its values from a small fixed set.
ALLOWED_LABELS = {
    "type",
    "reason",
    "program",
    "reward",
    "status",
    "mode",
    "hold",  # pending or risk
    "arm",  # an experiment's arms, named in the program file
    "table",
    "topic",
    "partition",
    "budget",
    "group",
    "step",  # sent or handled (link records)
}


class FakeClock:
    """A wall clock and a monotonic clock that move only when a test says so."""

    def __init__(self) -> None:
        self.ms = T0
        self.mono_s = 1_000.0

    def now_ms(self) -> int:
        return self.ms

    def monotonic_s(self) -> float:
        return self.mono_s


def metric_objects(metrics: Metrics) -> dict[str, Any]:
    """Every metric of ``metrics`` by its exposed name (counters with ``_total``)."""
    found: dict[str, Any] = {}
    for value in vars(metrics).values():
        metric = value.gauge if isinstance(value, RollingGauge) else value
        if isinstance(metric, Counter | Gauge | Histogram):
            suffix = "_total" if isinstance(metric, Counter) else ""
            found[metric._name + suffix] = metric
    return found


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics table of docs/observability.md: name -> (type, labels)."""
    rows = re.findall(r"^\| `(rewardstream_\w+)` \| (\w+) \|([^|]*)\|", DOC.read_text(), re.M)
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


# ------------------------------------------------------------------ the list


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    metrics = Metrics(CollectorRegistry())
    defined = set(metric_names(metrics.registry))
    listed = set(documented())
    assert defined - listed == set(), "in app/metrics.py, missing from docs/observability.md"
    assert listed - defined == set(), "in docs/observability.md, not in app/metrics.py"
    assert set(metric_objects(metrics)) == defined


def test_the_documented_type_and_labels_are_the_metrics_own() -> None:
    table = documented()
    for name, metric in metric_objects(Metrics(CollectorRegistry())).items():
        assert table[name] == (metric._type, tuple(metric._labelnames)), name


def test_labels_come_only_from_small_fixed_sets_and_names_follow_the_conventions() -> None:
    for name, metric in metric_objects(Metrics(CollectorRegistry())).items():
        assert set(metric._labelnames) <= ALLOWED_LABELS, name
        assert name.endswith("_total") == isinstance(metric, Counter), name
        assert not re.search(r"_(ms|milliseconds|percent)\b", name), name


def test_a_labelled_child_is_made_once() -> None:
    metrics = Metrics(CollectorRegistry())
    decisions = Children(metrics.decisions, "test-program")
    first = decisions("points", "granted")
    assert decisions("points", "granted") is first
    assert decisions("", "none") is not first
    first.inc()
    labels = {"program": "test-program", "reward": "points", "status": "granted"}
    assert metrics.registry.get_sample_value("rewardstream_decisions_total", labels) == 1


# ------------------------------------------------------------------ what the pipeline observes


class Stream:
    """Events through one pipeline, with metrics on a fake clock."""

    def __init__(self, program: Program = PROGRAM, *, partitions: int = 1) -> None:
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, clock=self.clock)
        engine = Engine(program, partitions=partitions)
        self.pipeline = Pipeline(engine, self.metrics, max_event_bytes=4096)
        self.tables = Tables(users={}, ledgers={})
        self.offset = 0
        self.source_ms: list[int] = []  # of the decisions handled, as the runtime collects them

    def send(
        self,
        user: str,
        type_: str,
        *,
        partition: int = 0,
        produced_ms: int | None = None,
        flush: bool = True,
        **fields: Any,
    ) -> dict[str, Any]:
        self.offset += 1
        event = {
            "event_id": f"e-{self.offset}",
            "user_id": user,
            "type": type_,
            "ts": T0 + self.offset * 1000,
            "channel": "web",
            **fields,
        }
        source = SourcePosition("events", partition, self.offset, user.encode(), produced_ms)
        outputs = self.pipeline.handle(self.tables, source, orjson.dumps(event), flush=flush)
        self.source_ms += [o.source_ms for o in outputs if o.source_ms is not None]
        decision: dict[str, Any] = orjson.loads(outputs[0].value)
        return decision

    def answer(self, decision: dict[str, Any], type_: str = "reward_redeemed") -> None:
        self.send(decision["user_id"], type_, decision_id=decision["decision_id"])

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_decisions_are_counted_by_program_reward_and_status() -> None:
    stream = Stream()
    granted = stream.send("u-1", "signup")
    assert (granted["status"], granted["action"]) == ("granted", "points")
    stream.send("u-1", "page_view")  # not a trigger: a decision without a reward
    total = "rewardstream_decisions_total"
    program = "test-program"
    assert stream.value(total, program=program, reward="points", status="granted") == 1
    assert stream.value(total, program=program, reward="", status="none") == 1
    assert stream.value("rewardstream_reward_cost_granted_total", program=program) == 1.0


def test_redemption_ratio_is_redemptions_over_grants_within_the_window() -> None:
    stream = Stream()
    first = stream.send("u-1", "signup")
    stream.send("u-2", "signup")
    stream.answer(first)
    ratio = "rewardstream_redemption_ratio"
    assert stream.value(ratio, program="test-program", reward="points") == 0.5
    stream.clock.mono_s += ROLLING_WINDOW_S + 60  # nothing left in the window
    assert math.isnan(stream.value(ratio, program="test-program", reward="points") or 0.0)


def test_exploration_ratio_is_the_share_of_explored_policy_decisions() -> None:
    program = dataclasses.replace(
        PROGRAM, learning=dataclasses.replace(PROGRAM.learning, epsilon=0.5)
    )
    stream = Stream(program)
    modes = []
    for n in range(40):
        decision = stream.send(f"u-{n}", "purchase", amount=30.0, currency="EUR")
        modes.append(decision["reasons"][0])
    explored = modes.count("policy.explore")
    assert 0 < explored < len(modes)  # both kinds of decision happened
    expected = explored / sum(1 for m in modes if m.startswith("policy."))
    assert stream.value("rewardstream_exploration_ratio", program="test-program") == expected


def test_log_loss_scores_the_prediction_the_model_made_before_learning() -> None:
    stream = Stream()
    first = stream.send("u-1", "signup")
    # No model has learned yet: the prediction is the program's prior, 0.5.
    stream.answer(first)
    loss = "rewardstream_model_log_loss"
    assert stream.value(loss, program="test-program") == pytest.approx(math.log(2))
    second = stream.send("u-2", "signup")
    offer = UserState.from_bytes(stream.tables.users[b"u-2"]).pending[0]
    engine = stream.pipeline.engine
    before = engine.models.predict_one(offer.kind, engine.offer_inputs(offer))
    assert before > 0.5  # it learned from the first redemption
    stream.answer(second, "reward_dismissed")
    expected = (math.log(2) + log_loss(before, redeemed=False)) / 2
    assert stream.value(loss, program="test-program") == pytest.approx(expected)
    assert stream.value("rewardstream_model_updates_total", program="test-program") == 2


def test_latency_runs_from_the_kafka_timestamp_to_the_commit_of_the_decision() -> None:
    stream = Stream()
    produced = stream.clock.ms - 250
    stream.send("u-1", "signup", produced_ms=produced)
    stream.send("u-2", "signup", produced_ms=produced + 100)
    stream.send("u-3", "signup")  # no timestamp known: not observed
    assert stream.source_ms == [produced, produced + 100]
    # Handled and flushed is not visible yet: nothing is observed before the commit.
    assert stream.value("rewardstream_event_to_decision_seconds_count") == 0
    stream.clock.ms += 50  # the transaction holding both decisions commits now
    stream.pipeline.committed(stream.source_ms, stream.clock.now_ms())
    assert stream.value("rewardstream_event_to_decision_seconds_count") == 2
    assert stream.value("rewardstream_event_to_decision_seconds_sum") == pytest.approx(0.3 + 0.2)
    assert stream.value("rewardstream_event_to_decision_seconds_bucket", le="0.2") == 1
    # A producer whose clock runs ahead of ours: no wait, never a negative one.
    stream.pipeline.committed([stream.clock.ms + 5_000], stream.clock.now_ms())
    assert stream.value("rewardstream_event_to_decision_seconds_bucket", le="0.005") == 1


def test_budget_remaining_is_the_partitions_share_minus_what_it_spent() -> None:
    stream = Stream(partitions=2)  # total 20 and 1d 12, so 10 and 6 per partition
    stream.send("u-1", "signup", partition=1)  # points, cost 1
    remaining = "rewardstream_budget_remaining"
    labels = {"program": "test-program", "partition": "1"}
    assert stream.value(remaining, **labels, budget="total") == 9.0
    assert stream.value(remaining, **labels, budget="1d") == 5.0
    assert stream.value(remaining, program="test-program", partition="0", budget="total") is None


def test_audit_counts_trigger_decisions_by_group_with_other_and_unknown() -> None:
    audited = dataclasses.replace(PROGRAM, audit=Audit(group_by="country", groups=("DE",)))
    stream = Stream(audited)
    stream.send("u-de", "signup", attributes={"country": "DE"})
    stream.send("u-fr", "signup", attributes={"country": "FR"})
    stream.send("u-none", "signup")
    stream.send("u-de", "page_view")  # not a trigger: not counted
    audit = "rewardstream_audit_decisions_total"
    for group in ("DE", "other", "unknown"):
        labels = {"program": "test-program", "group": group, "status": "granted"}
        assert stream.value(audit, **labels) == 1, group
    assert stream.value(audit, program="test-program", group="DE", status="none") is None
    # The program's threshold, for the disparity alert to compare the groups' ratios with.
    assert stream.value("rewardstream_audit_min_ratio", program="test-program") == 0.8


def test_a_program_without_an_audit_exports_no_audit_series() -> None:
    stream = Stream()
    stream.send("u-1", "signup", attributes={"country": "DE"})
    page = [s for f in stream.registry.collect() for s in f.samples]
    assert not [s for s in page if s.name.startswith("rewardstream_audit")]


def test_what_a_batch_counts_shows_when_it_is_flushed_summed_per_counter() -> None:
    stream = Stream()
    events = "rewardstream_events_total"
    for user in ("u-1", "u-2", "u-3"):
        stream.send(user, "signup", flush=False)
    assert stream.value(events, type="signup") == 0
    stream.pipeline.flush(stream.tables)
    assert stream.value(events, type="signup") == 3
    total = "rewardstream_decisions_total"
    granted = stream.value(total, program="test-program", reward="points", status="granted")
    assert granted == 3  # each decision once, whatever the batch summed


def test_a_held_batch_moves_its_counters_and_ratios_only_once_committed() -> None:
    stream = Stream()
    effects: list[Any] = []
    with stream.pipeline.holding(effects):
        first = stream.send("u-1", "signup", flush=False)
        stream.send("u-2", "signup", flush=False)
        stream.answer(first)
    stream.pipeline.flush(stream.tables)
    events = "rewardstream_events_total"
    assert stream.value(events, type="signup") == 0
    ratio = "rewardstream_redemption_ratio"
    assert not stream.value(ratio, program="test-program", reward=first["action"])
    for effect in effects:  # the runtime runs them once the transaction has committed
        effect()
    assert stream.value(events, type="signup") == 2
    assert stream.value(events, type="reward_redeemed") == 1
    redeemed = stream.value(ratio, program="test-program", reward=first["action"])
    assert redeemed == 0.5  # one grant of that reward, redeemed


def test_link_records_are_counted_when_sent_and_when_handled() -> None:
    stream = Stream()
    sent = ("rewardstream_link_records_total", {"step": "sent"})
    handled = ("rewardstream_link_records_total", {"step": "handled"})
    # One event with a device and an address: a copy to each, each passed through.
    stream.send("u-1", "signup", device_id="d-1", ip="10.0.0.1")
    assert stream.value(sent[0], **sent[1]) == 2
    assert stream.value(handled[0], **handled[1]) == 2
    # Without either, nothing goes to the link stage.
    stream.send("u-1", "page_view")
    assert stream.value(sent[0], **sent[1]) == 2
    # The worker's decide stage alone: sent, not yet handled (the view is behind)...
    pipeline, tables = stream.pipeline, stream.tables
    view = pipeline.link_view({})
    event = {"event_id": "e-x", "user_id": "u-2", "type": "page_view", "ts": T0 + 60_000}
    event |= {"channel": "web", "device_id": "d-2"}
    source = SourcePosition("events", 0, 99, b"u-2")
    outputs = pipeline.decide(tables, 0, source, orjson.dumps(event), view)
    pipeline.flush(tables)
    links = [o for o in outputs if o.role == "links"]
    assert len(links) == 1
    assert stream.value(sent[0], **sent[1]) == 3
    assert stream.value(handled[0], **handled[1]) == 2
    # ...until its link stage handles the copy; one it cannot read is handled too.
    pipeline.link(tables, links[0].key or b"", links[0].value, source)
    pipeline.link(tables, b"device:d-3", b"not json", source)
    pipeline.flush(tables)
    assert stream.value(handled[0], **handled[1]) == 4
    assert stream.value("rewardstream_link_failures_total") == 1
