"""Latency anchors: plain Kafka programs measured beside the worker, in the same run.

A latency figure alone says little on a shared two-core machine; beside what a plain
consume-produce program does at the same offered rate, on the same broker, with the
same events and the same read-back (``read_committed``, matched by the ``event_id`` in
the output's value), it says what the worker's own design costs. The anchors:

- ``aiokafka_one_hop``: a consumer group and an idempotent producer, offsets committed
  after each batch's delivery (:mod:`harness.bench.anchor_aiokafka`);
- ``aiokafka_txn_one_hop``: the same with one transaction per fetched batch;
- ``quixstreams_eos_20ms``: a stateful quixstreams app (a counter per user) with
  exactly-once, a checkpoint every 20 ms and polls of at most 20 ms (a due checkpoint
  commits only between polls) (:mod:`harness.bench.anchor_quix`, run by the python of its
  own virtualenv, ``make bench-anchors-venv``);
- ``quixstreams_eos_default``: the same with quixstreams' defaults, 5 s checkpoints
  and 1 s polls (the full run only).

Each runs as its own process on topics of its own. This module holds what they are,
how they are started, and the report's side-by-side rows (pure functions); the runs
themselves are in :mod:`harness.bench.throughput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from app.settings import Settings
from harness.workerproc import stop_process

# The fixed offered rate the worker and every anchor are measured at, besides the
# worker's own 70% share.
FIXED_RATE = 200.0
ANCHORS_VENV = ".venv-anchors"
QUIX_SCRIPT = Path(__file__).with_name("anchor_quix.py")
# The checkout this harness runs from (the wheel does not ship it).
CHECKOUT = Path(__file__).resolve().parents[2]
# The measurement points of the side-by-side table, in its order.
POINTS = ("fixed", "headline")
PERCENTILES = (("p50", "p50_ms"), ("p99", "p99_ms"), ("p999", "p999_ms"))


class AnchorUnavailableError(RuntimeError):
    """An anchor that cannot be run here (its virtualenv is missing)."""


@dataclasses.dataclass(frozen=True)
class Anchor:
    name: str  # the report's key
    label: str
    kind: Literal["aiokafka", "quixstreams"]
    transactional: bool = False  # aiokafka: one transaction per fetched batch
    commit_interval_s: float | None = None  # quixstreams: None is its default (5 s)
    poll_timeout_s: float | None = None  # quixstreams: None is its default (1 s)
    quick: bool = True  # run in --quick too

    @property
    def input_topic(self) -> str:
        return f"bench-anchor-{self.name}-in"

    @property
    def output_topic(self) -> str:
        return f"bench-anchor-{self.name}-out"

    @property
    def group(self) -> str:
        return f"bench-anchor-{self.name}"


ANCHORS = (
    Anchor("aiokafka_one_hop", "aiokafka, one hop, no transactions", "aiokafka"),
    Anchor(
        "aiokafka_txn_one_hop",
        "aiokafka, one hop, a transaction per fetched batch",
        "aiokafka",
        transactional=True,
    ),
    Anchor(
        "quixstreams_eos_20ms",
        "quixstreams, per-user state, exactly-once, 20 ms commits and polls",
        "quixstreams",
        commit_interval_s=0.02,
        poll_timeout_s=0.02,
    ),
    Anchor(
        "quixstreams_eos_default",
        "quixstreams, per-user state, exactly-once, default 5 s commits and 1 s polls",
        "quixstreams",
        quick=False,
    ),
)


def anchors_for(quick: bool) -> tuple[Anchor, ...]:
    return tuple(a for a in ANCHORS if a.quick or not quick)


def anchors_python(*roots: Path) -> Path | None:
    """The python of the anchors' virtualenv under the first of ``roots`` that has one
    (by default the working directory, then the checkout this package is in)."""
    for root in roots or (Path.cwd(), CHECKOUT):
        python = root / ANCHORS_VENV / "bin" / "python"
        if python.exists():
            return python
    return None


def anchor_command(
    anchor: Anchor, settings: Settings, *, python: Path | None, state_dir: Path
) -> list[str]:
    """The command line of ``anchor``'s process, with the worker's client settings."""
    where = [
        f"--bootstrap={settings.bootstrap_servers}",
        f"--input={anchor.input_topic}",
        f"--output={anchor.output_topic}",
        f"--group={anchor.group}",
    ]
    if anchor.kind == "aiokafka":
        return [
            sys.executable,
            "-m",
            "harness.bench.anchor_aiokafka",
            *where,
            f"--max-records={settings.batch_max_records}",
            f"--fetch-max-wait-ms={settings.fetch_max_wait_ms}",
            f"--linger-ms={settings.linger_ms}",
            *(["--transactional"] if anchor.transactional else []),
        ]
    if python is None:
        raise AnchorUnavailableError(f"no {ANCHORS_VENV}/bin/python: run `make bench-anchors-venv`")
    # None: quixstreams' own default.
    tuned = [
        f"--{option}={value}"
        for option, value in (
            ("commit-interval", anchor.commit_interval_s),
            ("poll-timeout", anchor.poll_timeout_s),
        )
        if value is not None
    ]
    # -P: the script's folder (harness/bench, with a report.py and others) stays off sys.path.
    return [str(python), "-P", str(QUIX_SCRIPT), *where, f"--state-dir={state_dir}", *tuned]


def anchor_env(anchor: Anchor, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment of ``anchor``'s process. The aiokafka anchor runs as
    ``python -m harness.bench.anchor_aiokafka``: the checkout goes first on its
    ``PYTHONPATH``, so it starts wherever the bench runs from. The quixstreams anchor is
    a script of its own virtualenv that imports nothing of the project: None, the
    bench's own environment."""
    if anchor.kind != "aiokafka":
        return None
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(CHECKOUT), env.get("PYTHONPATH", "")) if part
    )
    return env


class AnchorProcess:
    """One anchor's process, with its output in a log file; stopped with SIGTERM."""

    def __init__(
        self, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.env = None if env is None else dict(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AnchorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        return stop_process(self.process, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# ---------------------------------------------------------------- the report


def ratio(worker: float | None, anchor: float | None) -> float | None:
    """The worker's figure as a multiple of the anchor's (n/a without both)."""
    if worker is None or anchor is None or anchor <= 0:
        return None
    return round(worker / anchor, 2)


def worker_ratios(worker: Mapping[str, Any], anchor: Mapping[str, Any]) -> dict[str, Any]:
    """Each of the worker's percentiles divided by the anchor's at the same offered rate."""
    return {name: ratio(worker.get(key), anchor.get(key)) for name, key in PERCENTILES}


def anchor_rows(
    worker: Mapping[str, Mapping[str, Any]], anchors: Sequence[Mapping[str, Any]], *, label: str
) -> list[dict[str, Any]]:
    """The side-by-side rows: at each point (``fixed``, ``headline``) the worker's run,
    then each anchor's with the worker's percentiles as multiples of its own."""
    rows: list[dict[str, Any]] = []
    for point in POINTS:
        run = worker.get(point)
        if not run:
            continue
        rows.append({**run, "point": point, "system": "worker", "label": label})
        for anchor in anchors:
            if anchor["point"] == point:
                rows.append({**anchor, "worker_ratio": worker_ratios(run, anchor)})
    return rows


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}x"


def _point_label(row: Mapping[str, Any]) -> str:
    if row["point"] == "fixed":
        return "fixed"
    share = row.get("share")
    return f"{share:.0%} of max" if share is not None else "share of max"


def anchors_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The side-by-side rows as a markdown table (no lines when no anchor ran)."""
    if all(row["system"] == "worker" for row in rows):
        return []
    lines = [
        "Latency beside anchors measured in the same run (the same events at the same "
        "offered rate, on the same broker, each output read back with read_committed). "
        "The last column is the worker's p50 / p99 / p99.9 divided by that row's:",
        "",
        "| offered | system | events/s offered | achieved | events | unanswered "
        "| p50 ms | p99 ms | p99.9 ms | worker ÷ this |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(_anchor_line(row))
    return lines


def _anchor_line(row: Mapping[str, Any]) -> str:
    point, label = _point_label(row), row["label"]
    if row.get("error"):
        why = " ".join(str(row["error"]).replace("|", "/").split())
        return f"| {point} | {label} | not run: {why} | | | | | | | |"
    achieved = row.get("achieved_rate")
    ratios = row.get("worker_ratio")
    versus = " / ".join(_times(ratios[name]) for name, _ in PERCENTILES) if ratios else ""
    return (
        f"| {point} | {label} | {row['offered_rate']:,.0f} "
        f"| {'n/a' if achieved is None else f'{achieved:,.0f}'} | {row['events']:,} "
        f"| {row['undecided']:,} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} "
        f"| {_ms(row['p999_ms'])} | {versus} |"
    )
