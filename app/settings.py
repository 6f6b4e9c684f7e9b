"""The one settings object, built once at start-up.

This module is the only place that reads environment variables. Every setting
is a field of :class:`Settings`; its environment variable is the field name in
upper case behind the ``REWARDSTREAM_`` prefix (``partitions`` is
``REWARDSTREAM_PARTITIONS``). An unknown ``REWARDSTREAM_*`` variable or a value
of the wrong type fails at start-up with the variable's name, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GUARANTEES = ("exactly_once", "at_least_once")
PRODUCERS = ("task", "worker")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
ENV_PREFIX = "REWARDSTREAM_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Settings that name Kafka principals for `rewardstream topics create --acls`.
ACL_PRINCIPAL_FIELDS = (
    "acl_event_producers",
    "acl_label_producers",
    "acl_consent_producers",
    "acl_member_producers",
    "acl_erasure_producers",
    "acl_worker_principal",
)
_PRINCIPAL = re.compile(r"[A-Za-z][A-Za-z0-9_-]*:\S(.*\S)?")
_PRINCIPAL_SEPARATOR = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9_-]*:)")


class SettingsError(ValueError):
    """A setting is unknown or its value cannot be used."""


def _home_dir(xdg_variable: str, fallback: str, environ: Mapping[str, str]) -> Path:
    """The XDG base directory named by ``xdg_variable``, with our own folder in it."""
    home = Path(environ.get("HOME") or Path.home())
    return Path(environ.get(xdg_variable) or home / fallback) / "rewardstream"


def _default_dirs(environ: Mapping[str, str]) -> dict[str, Path]:
    return {
        "data_dir": _home_dir("XDG_STATE_HOME", ".local/state", environ),
        "cache_dir": _home_dir("XDG_CACHE_HOME", ".cache", environ),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the worker, the CLI and the local broker need to know."""

    # Kafka connection and the names of the topics this engine owns.
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "rewardstream"
    topic_events: str = "events"
    topic_decisions: str = "decisions"
    topic_fraud_alerts: str = "fraud-alerts"
    topic_dead_letter: str = "dead-letter"
    # Control events come only from topics of their own, which Kafka ACLs can keep to
    # those allowed to send them (docs/contract.md, "Who may send what").
    topic_fraud_labels: str = "fraud-labels"
    topic_consent: str = "consent"
    # member_imported events: a running program's members brought in (docs/contract.md).
    topic_members: str = "members"
    topic_model_checkpoints: str = "model-checkpoints"
    # A shadow program's decisions (shadow_program below): kept apart, never acted on.
    topic_shadow_decisions: str = "shadow-decisions"
    # erasure_requested events in (a control topic: only the privacy system may write it),
    # and one erasure receipt out per request (docs/privacy.md).
    topic_erasure_requests: str = "erasure-requests"
    topic_erasures: str = "erasures"
    partitions: int = 4
    replication_factor: int = 1
    # How every client of the engine connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL;
    # SASL with SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN; TLS trusting ssl_cafile (else the
    # system's CAs), with a client certificate when ssl_certfile and ssl_keyfile are set.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = dataclasses.field(default="", repr=False)  # never printed or logged
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    # Kafka ACLs that `rewardstream topics create --acls` grants (docs/contract.md, "Who may
    # send what"): the principals allowed to write each kind of input, comma-separated
    # (``User:shop,User:app``), and the worker's own principal (``User:<its SASL username>``),
    # which reads the inputs, writes the outputs and owns the topics, consumer group and
    # transactional ids named after app_id. Nobody else may write the inputs.
    acl_event_producers: str = ""
    acl_label_producers: str = ""
    acl_consent_producers: str = ""
    acl_member_producers: str = ""
    acl_erasure_producers: str = ""
    acl_worker_principal: str = ""

    # The reward program the worker decides for: a shipped program's id or a YAML file.
    program: str = "retail-loyalty"
    # A challenger that decides every event beside the live program, writes to
    # topic_shadow_decisions, grants nothing and spends no budget (app.shadow): a shipped
    # program's id or a YAML file, with an id other than the live program's; empty: none.
    shadow_program: str = ""
    # Seed of every random choice (exploration), so runs and replays are reproducible.
    seed: int = 7
    # How often a worker saves what its models learned (a restart continues from it).
    checkpoint_interval_s: int = 30

    # Delivery: "exactly_once" (each batch's outputs, state changes and input offsets
    # commit in one Kafka transaction; consumers read committed records only) or
    # "at_least_once" (no transactions; a crash may decide an event again, and the
    # contract's dedupe by decision_id does not undo that: docs/reliability.md).
    processing_guarantee: str = "exactly_once"
    # With exactly_once: one transactional producer per task ("task", one per partition,
    # fenced by its transactional id) or one per worker ("worker", every task in one
    # transaction a round, fenced through the consumer group's generation: about half
    # the tail latency under load, docs/decisions.md §35). A worker's id names its
    # producer: keep it stable across the worker's restarts (a StatefulSet's pod name) so
    # a restart fences its predecessor at once; empty: the host name and process id.
    transactional_producers: str = "worker"
    worker_id: str = ""
    # The worker's loop: at most this many records a turn (it takes about 20 ms of work a
    # turn, streams.runtime.HANDLE_SLICE_S); how long the broker may hold a fetch waiting
    # for data; how long the producer waits to fill a batch.
    # The broker answers a held fetch as soon as data (or a commit marker) arrives, so the
    # wait only bounds idle fetches: at 10 ms an idle worker spent 17% of a core on them.
    batch_max_records: int = 1_000
    fetch_max_wait_ms: int = 200
    linger_ms: int = 2
    # The largest record batch a task's producer sends to one partition. aiokafka sends a
    # partition's next batch only once the one before it is answered, so a commit's
    # records in 16 KiB batches (its default) cost a round trip each. Lowered at start to
    # what the smallest max.message.bytes of the worker's topics allows.
    produce_batch_bytes: int = 524_288
    # How long a decision may wait for its task's transaction to start. A task has one
    # transaction in flight at a time; what it handles meanwhile joins the next one
    # (whatever this is). Longer: fewer, larger transactions, less work for the broker per
    # event; 0: the lowest latency while the broker keeps up.
    commit_interval_ms: int = 0

    # Input limits: an event larger than this is dead-lettered, not parsed.
    max_event_bytes: int = 65_536
    # An event stamped further than this ahead of the worker's clock is dead-lettered
    # (reason ts_in_future): one event's time must not age a user's state past its time
    # to live, nor open or close a budget period early.
    max_event_ahead_s: int = 3_600
    # A user (or device, or network) with no event for this long is forgotten: its state
    # is treated as new at its next event and deleted from the tables in the background.
    state_ttl_days: int = 400
    # The background sweep that deletes forgotten rows passes over every row about once
    # in this long (a row goes within about this long after its time to live is over).
    sweep_pass_s: int = 3_600
    # /ready answers 503 once an input has waited this long behind a producer's open
    # transaction (read_committed readers cannot pass it; the broker aborts it only at
    # its timeout, up to 15 minutes).
    ready_blocked_s: int = 60
    # How often the worker writes its tables to local snapshots under data_dir, so that a
    # restart on the same volume reads only the changelogs' tail (0: never; always on stop).
    snapshot_interval_s: int = 300
    # Erasure: how long a forgotten user's data may stay anywhere the engine keeps it.
    # `topics create` sets every topic it owns so that Kafka removes deleted and expired
    # records within it (retention of plain topics, compaction and tombstone lifetime of
    # compacted ones), and snapshots older than a quarter of it are not trusted
    # (docs/privacy.md). Also how long the engine's topics keep anything at all.
    erasure_bound_s: int = 7 * 86_400
    # The key of the keyed hash that names a user in an erasure receipt (HMAC-SHA-256):
    # without it, the app id. Set a secret, so a receipt cannot be matched to a guessed id
    # by anyone who does not hold it.
    erasure_receipt_key: str = dataclasses.field(default="", repr=False)

    # Worker process: web port for /metrics and health, and where local state lives.
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: Path = dataclasses.field(
        default_factory=lambda: _default_dirs(os.environ)["data_dir"]
    )
    log_level: str = "info"

    # `rewardstream console`, the web page for the people who run rewards (docs/console.md):
    # where it listens; the token it asks for (required when bound to anything but
    # loopback: a bearer token, or the password of HTTP basic auth); how many decisions it
    # keeps per user.
    console_host: str = "127.0.0.1"
    console_port: int = 6070
    console_token: str = dataclasses.field(default="", repr=False)  # never printed or logged
    console_history: int = 50

    # The local Apache Kafka broker started by `rewardstream kafka up`.
    kafka_version: str = "4.3.1"
    cache_dir: Path = dataclasses.field(
        default_factory=lambda: _default_dirs(os.environ)["cache_dir"]
    )
    kafka_heap: str = "512m"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default: the process environment).

        ``overrides`` (for example from CLI flags) win over the environment.
        """
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = dict(_default_dirs(environ))
        for variable, raw in environ.items():
            if not variable.startswith(ENV_PREFIX):
                continue
            name = variable[len(ENV_PREFIX) :].lower()
            if name not in fields:
                raise SettingsError(f"unknown setting {variable}; known: {_known(fields)}")
            values[name] = _parse(variable, raw, fields[name].type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Reject values that would only fail later and further from their cause."""
        if self.partitions < 1:
            raise SettingsError("REWARDSTREAM_PARTITIONS must be at least 1")
        if self.replication_factor < 1:
            raise SettingsError("REWARDSTREAM_REPLICATION_FACTOR must be at least 1")
        if self.max_event_ahead_s < 1:
            raise SettingsError("REWARDSTREAM_MAX_EVENT_AHEAD_S must be at least 1")
        if self.max_event_bytes < 256:
            raise SettingsError("REWARDSTREAM_MAX_EVENT_BYTES must be at least 256")
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(
                f"REWARDSTREAM_LOG_LEVEL={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        if self.processing_guarantee not in GUARANTEES:
            raise SettingsError(
                f"REWARDSTREAM_PROCESSING_GUARANTEE={self.processing_guarantee!r} is not one of "
                f"{', '.join(GUARANTEES)}"
            )
        if self.transactional_producers not in PRODUCERS:
            raise SettingsError(
                f"REWARDSTREAM_TRANSACTIONAL_PRODUCERS={self.transactional_producers!r} is not "
                f"one of {', '.join(PRODUCERS)}"
            )
        self._check_security()
        self._check_acls()
        if self.state_ttl_days < 1:
            raise SettingsError("REWARDSTREAM_STATE_TTL_DAYS must be at least 1")
        if self.batch_max_records < 1:
            raise SettingsError("REWARDSTREAM_BATCH_MAX_RECORDS must be at least 1")
        if self.produce_batch_bytes < 16_384:
            raise SettingsError("REWARDSTREAM_PRODUCE_BATCH_BYTES must be at least 16384")
        if min(self.fetch_max_wait_ms, self.linger_ms, self.commit_interval_ms) < 0:
            raise SettingsError(
                "REWARDSTREAM_FETCH_MAX_WAIT_MS, _LINGER_MS and _COMMIT_INTERVAL_MS must be >= 0"
            )
        if self.sweep_pass_s < 1:
            raise SettingsError("REWARDSTREAM_SWEEP_PASS_S must be at least 1")
        if self.ready_blocked_s < 1:
            raise SettingsError("REWARDSTREAM_READY_BLOCKED_S must be at least 1")
        if self.snapshot_interval_s < 0:
            raise SettingsError("REWARDSTREAM_SNAPSHOT_INTERVAL_S must be >= 0")
        if self.erasure_bound_s < 60:
            raise SettingsError(
                "REWARDSTREAM_ERASURE_BOUND_S must be at least 60: Kafka's own cleaning "
                "passes take tens of seconds (docs/privacy.md)"
            )
        if self.checkpoint_interval_s < 1:
            raise SettingsError("REWARDSTREAM_CHECKPOINT_INTERVAL_S must be at least 1")
        if not 0 <= self.web_port < 65_536:
            raise SettingsError("REWARDSTREAM_WEB_PORT must be a TCP port")
        if not 0 <= self.console_port < 65_536:
            raise SettingsError("REWARDSTREAM_CONSOLE_PORT must be a TCP port")
        if self.console_history < 1:
            raise SettingsError("REWARDSTREAM_CONSOLE_HISTORY must be at least 1")
        topics = self.topic_names()
        if len(set(topics.values())) != len(topics):
            raise SettingsError(f"topic names must differ: {topics}")

    def _check_security(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"REWARDSTREAM_SECURITY_PROTOCOL={self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise SettingsError(
                    f"REWARDSTREAM_SASL_MECHANISM={self.sasl_mechanism!r} is not one of "
                    f"{', '.join(SASL_MECHANISMS)}"
                )
            if not self.sasl_username or not self.sasl_password:
                raise SettingsError(
                    f"REWARDSTREAM_SECURITY_PROTOCOL={self.security_protocol} needs "
                    "REWARDSTREAM_SASL_USERNAME and REWARDSTREAM_SASL_PASSWORD"
                )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise SettingsError(f"REWARDSTREAM_{name.upper()}={path!r} is not a file")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise SettingsError(
                "REWARDSTREAM_SSL_CERTFILE and REWARDSTREAM_SSL_KEYFILE go together"
            )

    def _check_acls(self) -> None:
        for name in ACL_PRINCIPAL_FIELDS:
            for principal in split_principals(getattr(self, name)):
                if not _PRINCIPAL.fullmatch(principal):
                    raise SettingsError(
                        f"REWARDSTREAM_{name.upper()}: {principal!r} is not a Kafka principal "
                        "(<type>:<name>, such as User:shop)"
                    )
        if len(split_principals(self.acl_worker_principal)) > 1:
            raise SettingsError("REWARDSTREAM_ACL_WORKER_PRINCIPAL names one principal")

    @property
    def max_event_ahead_ms(self) -> int:
        return self.max_event_ahead_s * 1000

    @property
    def erasure_bound_ms(self) -> int:
        return self.erasure_bound_s * 1000

    @property
    def state_ttl_ms(self) -> int:
        return self.state_ttl_days * 86_400_000

    def topic_names(self) -> dict[str, str]:
        """Stable role -> configured Kafka topic name."""
        return {
            "events": self.topic_events,
            "decisions": self.topic_decisions,
            "fraud-alerts": self.topic_fraud_alerts,
            "dead-letter": self.topic_dead_letter,
            "fraud-labels": self.topic_fraud_labels,
            "consent": self.topic_consent,
            "members": self.topic_members,
            "model-checkpoints": self.topic_model_checkpoints,
            "shadow-decisions": self.topic_shadow_decisions,
            "erasure-requests": self.topic_erasure_requests,
            "erasures": self.topic_erasures,
            # Internal, between the worker's own stages; named after the app like the
            # changelogs, so two deployments on one cluster never share them.
            "rekeyed": f"{self.app_id}-rekeyed",
            "links": f"{self.app_id}-links",
        }

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process."""
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


def split_principals(raw: str) -> tuple[str, ...]:
    """The Kafka principals in a comma-separated setting, in order, without repeats.

    A comma not followed by ``<type>:`` belongs to the principal before it: a TLS
    principal is a certificate's distinguished name (``User:CN=shop,O=Acme``).
    """
    found = (part.strip() for part in _PRINCIPAL_SEPARATOR.split(raw))
    return tuple(dict.fromkeys(part for part in found if part))


def _known(fields: Mapping[str, Any]) -> str:
    return ", ".join(ENV_PREFIX + name.upper() for name in sorted(fields))


def _parse(variable: str, raw: str, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    try:
        if kind == "int":
            return int(raw)
        if kind == "Path":
            return Path(raw).expanduser()
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not a valid {kind}") from None
    return raw
