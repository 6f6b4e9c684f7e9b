"""Every Prometheus metric of the worker, defined once on an injected registry.

Names use base units and ``_total`` for counters; labels come from small fixed
sets (event type, rejection reason, decision status), never a user, device or IP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "rewardstream"


class Metrics:
    """The worker's metrics. One instance per process, built at start-up."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_in = Counter(
            f"{PREFIX}_events_total",
            "Valid events read, by event type.",
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
        self.link_failures = Counter(
            f"{PREFIX}_link_failures_total",
            "Link hops that failed, and events decided before all their link facts came.",
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
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time from a partition's transaction start to its commit (exactly_once).",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.intake_paused = Gauge(
            f"{PREFIX}_intake_paused",
            "1 while intake waits for this worker's later stages to catch up (backpressure).",
            registry=registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions_total",
            "Decisions published, by program and status.",
            ["program", "status"],
            registry=registry,
        )
        self.reward_cost = Counter(
            f"{PREFIX}_reward_cost_granted_total",
            "Cost to the business of granted rewards, in the program's currency unit.",
            ["program"],
            registry=registry,
        )
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
        self.processing_seconds = Histogram(
            f"{PREFIX}_event_processing_seconds",
            "Time from reading an event to handing its outputs to the producer.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=registry,
        )
