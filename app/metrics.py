"""Every Prometheus metric of the worker, defined once on an injected registry.

Names use base units (seconds, records, ratios from 0 to 1; money in the
program's currency) and ``_total`` for counters. Labels come only from small
fixed sets (program, reward, status, reason, event type, mode, table, topic,
partition, budget, audit group), never a user, event, device or IP.
``docs/observability.md`` lists every metric; a unit test keeps the two in step.

The worker decides more than a thousand events a second per core, so the hot
path never calls ``labels()`` per event (it takes a lock and builds a key):
:class:`Children` creates each labelled child once, and :class:`ProgramMetrics`
holds one program's children.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.clock import Clock, SystemClock
from app.rolling import RollingRatio

PREFIX = "rewardstream"
# The rolling window of the ratio gauges (redemption, exploration, log loss), in wall-clock
# time: long enough to hold a few hundred decisions on a quiet worker, short enough that a
# change of behaviour shows within minutes. Slices of a minute.
ROLLING_WINDOW_S = 900
ROLLING_SLICES = 15
# Event-to-decision latency: tens of milliseconds when the worker keeps up; a backlog
# or a stall costs seconds to minutes, and the buckets must still tell them apart.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
# The label value of a decision without a reward (no reward id is empty).
NO_REWARD = ""


class Children:
    """The children of one labelled metric, each created at its first use and kept.

    ``fixed`` are the leading label values every child shares (the program id).
    Label values come from small fixed sets, so the cache stays small.
    """

    __slots__ = ("fixed", "made", "metric")

    def __init__(self, metric: Any, *fixed: str) -> None:
        self.metric = metric
        self.fixed = fixed
        self.made: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.made.get(labels)
        if child is None:
            child = self.made[labels] = self.metric.labels(*self.fixed, *labels)
        return child


class Tally:
    """Counter increments and rolling-ratio additions of one batch, summed per child and
    applied at once (:meth:`apply`).

    A decision moves five or six metrics, and each move of a prometheus_client child
    takes a lock (about a microsecond, a few percent of an event); a batch moves each
    child once. The sums are exact: counters and ratio windows only ever add.
    """

    __slots__ = ("counts", "ratios")

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.ratios: dict[tuple[RollingGauge, tuple[str, ...]], tuple[float, float]] = {}

    def __bool__(self) -> bool:
        return bool(self.counts or self.ratios)

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """Add ``amount`` to ``counter`` (a counter or one of its labelled children)."""
        counts = self.counts
        counts[counter] = counts.get(counter, 0.0) + amount

    def ratio(
        self, gauge: RollingGauge, labels: tuple[str, ...], numerator: float, denominator: float
    ) -> None:
        """Add to ``gauge``'s window at ``labels`` (see :meth:`RollingGauge.add`)."""
        known = self.ratios.get((gauge, labels))
        if known is not None:
            numerator, denominator = known[0] + numerator, known[1] + denominator
        self.ratios[(gauge, labels)] = (numerator, denominator)

    def apply(self) -> None:
        """Move every metric by what was added, and start over."""
        for counter, amount in self.counts.items():
            counter.inc(amount)
        for (gauge, labels), (numerator, denominator) in self.ratios.items():
            gauge.add(labels, numerator, denominator)
        self.counts = {}
        self.ratios = {}


class RollingGauge:
    """A gauge whose value per label set is a :class:`RollingRatio`, computed when
    Prometheus scrapes (so it falls back as the window moves on, even with no traffic).

    The event loop adds and the web server's thread reads: a lock keeps them apart.
    """

    def __init__(self, gauge: Gauge, clock: Clock) -> None:
        self.gauge = gauge
        self.clock = clock
        self.window: RollingRatio[tuple[str, ...]] = RollingRatio(
            window_s=ROLLING_WINDOW_S, slices=ROLLING_SLICES
        )
        self.lock = threading.Lock()

    def add(self, labels: tuple[str, ...], numerator: float, denominator: float) -> None:
        at_s = self.clock.monotonic_s()
        with self.lock:
            known = labels in self.window.keys
            self.window.add(at_s, labels, numerator, denominator)
        if not known:
            self.gauge.labels(*labels).set_function(self._reader(labels))

    def value(self, labels: tuple[str, ...]) -> float:
        with self.lock:
            return self.window.ratio(self.clock.monotonic_s(), labels)

    def _reader(self, labels: tuple[str, ...]) -> Any:
        return lambda: self.value(labels)


class Metrics:
    """The worker's metrics. One instance per process, built at start-up.

    ``clock`` times what the metrics need of the wall clock (latency, rolling windows);
    domain code never reads it.
    """

    def __init__(self, registry: CollectorRegistry, *, clock: Clock | None = None) -> None:
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        # --- what comes in
        self.events_in = Counter(
            f"{PREFIX}_events_total",
            "Valid events decided, by event type.",
            ["type"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters_total",
            "Inputs sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicate_events_total",
            "Events whose event_id the user's state had already seen; ignored by design.",
            registry=registry,
        )
        self.rekeyed = Counter(
            f"{PREFIX}_rekeyed_events_total",
            "Events whose Kafka key was not their user_id (the engine re-keys them by user).",
            registry=registry,
        )
        self.erasures = Counter(
            f"{PREFIX}_erasures_total",
            "Erasure requests carried out: the user's rows deleted, erase orders sent to "
            "every internal partition and one receipt published (docs/privacy.md).",
            registry=registry,
        )
        self.erased_rows = Counter(
            f"{PREFIX}_erased_rows_total",
            "Rows of other keys that named an erased user, rewritten without the user by an "
            "erase order: device and network rows (link-state), other users' notes "
            "(user-state).",
            ["table"],
            registry=registry,
        )
        self.related_notes = Counter(
            f"{PREFIX}_related_notes_total",
            "Accounts marked for review at their next event because another user's fraud "
            "alert named them as related (signal account.related).",
            registry=registry,
        )
        self.link_records = Counter(
            f"{PREFIX}_link_records_total",
            "Decided events' copies for the link stage, by step: sent to a device's or "
            "network's state (by the decide stage), and handled there (by the link stage of "
            "the worker that owns that device or network). Summed over the workers, sent "
            "minus handled is what the link view has yet to show.",
            ["step"],
            registry=registry,
        )
        self.link_failures = Counter(
            f"{PREFIX}_link_failures_total",
            "Internal records that could not be applied (a link hop, a related-account note, "
            "an erase order); each is logged with its topic, partition and offset, and its "
            "event was decided.",
            registry=registry,
        )
        # --- decisions and what they cost
        self.decisions = Counter(
            f"{PREFIX}_decisions_total",
            "Decisions published, by program, reward (empty when none) and status.",
            ["program", "reward", "status"],
            registry=registry,
        )
        self.holds = Counter(
            f"{PREFIX}_holds_total",
            "Held decisions, by program and why the reward is held: pending (a new "
            "account's pending period, no suspicion) or risk (the user's risk reached the "
            "hold threshold). Count fraud holds from hold=risk, not from status=held.",
            ["program", "hold"],
            registry=registry,
        )
        self.reward_cost = Counter(
            f"{PREFIX}_reward_cost_granted_total",
            "Cost to the business of granted rewards, in the program's currency unit.",
            ["program"],
            registry=registry,
        )
        self.budget_remaining = Gauge(
            f"{PREFIX}_budget_remaining",
            "What is left of a program-wide budget (total, or a rolling period such as 1d) "
            "in one partition's share, in the program's currency, as of the partition's "
            "latest decision on this worker.",
            ["program", "partition", "budget"],
            registry=registry,
        )
        # --- experiments (a program's ``experiment`` block)
        self.arm_decisions = Counter(
            f"{PREFIX}_experiment_decisions_total",
            "Decisions on trigger events, by program, experiment arm and status.",
            ["program", "arm", "status"],
            registry=registry,
        )
        self.arm_users = Counter(
            f"{PREFIX}_experiment_users_total",
            "Users entering an experiment arm: their first event (or their first after "
            "their state was forgotten). The sample-ratio check compares these with "
            "rewardstream_experiment_arm_share.",
            ["program", "arm"],
            registry=registry,
        )
        self.shadow_decisions = Counter(
            f"{PREFIX}_shadow_decisions_total",
            "Decisions of a shadow program (written to shadow-decisions, never acted on), by "
            "status; status failed counts events the shadow could not decide.",
            ["program", "status"],
            registry=registry,
        )
        self.arm_share = Gauge(
            f"{PREFIX}_experiment_arm_share",
            "The share of users an experiment arm is meant to get (the program's split).",
            ["program", "arm"],
            registry=registry,
        )
        self.srm_critical = Gauge(
            f"{PREFIX}_experiment_srm_critical",
            "The chi-square statistic above which the arms' user counts are a sample-ratio "
            "mismatch at p < 0.001 (for the program's number of arms).",
            ["program"],
            registry=registry,
        )
        self.arm_budget_remaining = Gauge(
            f"{PREFIX}_experiment_budget_remaining",
            "As rewardstream_budget_remaining, for one experiment arm's share (arms never "
            "spend from one budget).",
            ["program", "arm", "partition", "budget"],
            registry=registry,
        )
        self.audit_decisions = Counter(
            f"{PREFIX}_audit_decisions_total",
            "Decisions on trigger events by the program's audit group (audit.group_by) and "
            "status, for fairness reviews; only observed, never used to decide.",
            ["program", "group", "status"],
            registry=registry,
        )
        self.audit_min_ratio = Gauge(
            f"{PREFIX}_audit_min_ratio",
            "The program's audit.min_ratio: the lowest ratio of an audit group's grant rate "
            "to the best-served group's it accepts (the disparity alert's threshold).",
            ["program"],
            registry=registry,
        )
        self.event_to_decision = Histogram(
            f"{PREFIX}_event_to_decision_seconds",
            "Time from an event's Kafka record timestamp to the commit of the transaction "
            "that holds its decision (when a read_committed reader can first see it).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # --- policy and learning
        self.policy_choices = Counter(
            f"{PREFIX}_policy_choices_total",
            "Decisions on trigger events by how the policy chose: exploit, explore, default, "
            "below_minimum, nothing_eligible.",
            ["program", "mode"],
            registry=registry,
        )
        self.model_updates = Counter(
            f"{PREFIX}_model_updates_total",
            "Learning steps of the propensity models (one per answered or expired offer).",
            ["program"],
            registry=registry,
        )
        self.offers_timed_out = Counter(
            f"{PREFIX}_offers_timed_out_total",
            "Waiting offers closed as not redeemed because their partition's event time "
            "passed the end of their response window while their user sent nothing.",
            ["program"],
            registry=registry,
        )
        self.redemption_ratio = RollingGauge(
            Gauge(
                f"{PREFIX}_redemption_ratio",
                f"Redemptions over grants of each reward in the last {ROLLING_WINDOW_S} s "
                "(NaN without grants in the window).",
                ["program", "reward"],
                registry=registry,
            ),
            self.clock,
        )
        self.exploration_ratio = RollingGauge(
            Gauge(
                f"{PREFIX}_exploration_ratio",
                f"Share of trigger decisions the policy explored in the last {ROLLING_WINDOW_S} s.",
                ["program"],
                registry=registry,
            ),
            self.clock,
        )
        self.model_log_loss = RollingGauge(
            Gauge(
                f"{PREFIX}_model_log_loss",
                "Mean log loss of the propensity model's prediction for each answered offer, "
                f"made just before learning from the answer, in the last {ROLLING_WINDOW_S} s.",
                ["program"],
                registry=registry,
            ),
            self.clock,
        )
        # --- fraud
        self.fraud_alerts = Counter(
            f"{PREFIX}_fraud_alerts_total",
            "Fraud alerts published, by program and strongest reason code.",
            ["program", "reason"],
            registry=registry,
        )
        self.risk_score = Histogram(
            f"{PREFIX}_risk_score",
            "Fraud risk of the events that could earn a reward (0-1).",
            ["program"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
            registry=registry,
        )
        # --- the worker's loop and state
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag_records",
            "Records of a partition this worker owns not handled yet: the partition's last "
            "stable offset (or high watermark) minus the next offset to handle.",
            ["topic", "partition"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time from a task's transaction start to its commit (exactly_once), or from its "
            "first send to its offsets' commit (at_least_once).",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.commit_failures = Counter(
            f"{PREFIX}_commit_failures_total",
            "Transactions (or at_least_once flushes) that failed; the task drops what it "
            "handled since its last commit and is restored and rewound.",
            registry=registry,
        )
        self.input_blocked_seconds = Gauge(
            f"{PREFIX}_input_blocked_seconds",
            "How long an input partition this worker owns has waited behind an open "
            "transaction (records beyond its last stable offset, all before it handled); "
            "0 when it is not waiting.",
            ["topic", "partition"],
            registry=registry,
        )
        self.effect_failures = Counter(
            f"{PREFIX}_effect_failures_total",
            "What a committed batch asked to run after its commit (learning, counting) and "
            "failed; logged with its traceback.",
            registry=registry,
        )
        self.transactions_reverted = Counter(
            f"{PREFIX}_transactions_reverted_total",
            "Input partitions whose committed offset was found below one Kafka had "
            "acknowledged to this worker: a transaction acknowledged, then aborted (a lone "
            "broker shutting down mid-commit skips its markers). The records in between are "
            "handled again for their outputs, without their effects.",
            registry=registry,
        )
        self.recovery_failures = Counter(
            f"{PREFIX}_recovery_failures_total",
            "Attempts to restore and rewind a failed task that failed themselves (retried).",
            registry=registry,
        )
        self.intake_paused = Gauge(
            f"{PREFIX}_intake_paused",
            "1 while the decide stage waits for this worker's link stage to catch up "
            "(backpressure: the link view would fall behind).",
            registry=registry,
        )
        self.state_expired = Counter(
            f"{PREFIX}_state_expired_total",
            "Users, devices and networks forgotten after their time to live, by table.",
            ["table"],
            registry=registry,
        )
        self.state_swept = Counter(
            f"{PREFIX}_state_swept_total",
            "Rows deleted from the tables by the background sweep, by table.",
            ["table"],
            registry=registry,
        )
        self.table_rows = Gauge(
            f"{PREFIX}_table_rows",
            "Rows this worker holds in memory, by table (users, devices and networks, queues).",
            ["table"],
            registry=registry,
        )

    def for_program(self, program_id: str) -> ProgramMetrics:
        return ProgramMetrics(self, program_id)


class ProgramMetrics:
    """One program's metrics, with their labelled children made once."""

    def __init__(self, metrics: Metrics, program_id: str) -> None:
        self.program = program_id
        self.events_in = Children(metrics.events_in)
        self.dead_letters = Children(metrics.dead_letters)
        self.decisions = Children(metrics.decisions, program_id)
        self.holds = Children(metrics.holds, program_id)
        self.policy_choices = Children(metrics.policy_choices, program_id)
        self.fraud_alerts = Children(metrics.fraud_alerts, program_id)
        self.audit_decisions = Children(metrics.audit_decisions, program_id)
        self.budget_remaining = Children(metrics.budget_remaining, program_id)
        self.arm_decisions = Children(metrics.arm_decisions, program_id)
        self.arm_users = Children(metrics.arm_users, program_id)
        self.arm_budget_remaining = Children(metrics.arm_budget_remaining, program_id)
        self.reward_cost = metrics.reward_cost.labels(program_id)
        self.model_updates = metrics.model_updates.labels(program_id)
        self.offers_timed_out = metrics.offers_timed_out.labels(program_id)
        self.risk_score = metrics.risk_score.labels(program_id)


def metric_names(registry: CollectorRegistry) -> list[str]:
    """The names the registry's metrics are exposed under (counters with ``_total``)."""
    names = []
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.append(family.name + suffix)
    return sorted(names)
