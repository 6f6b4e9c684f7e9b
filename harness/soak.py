"""`rewardstream soak`: a broker, a worker and a long open-loop stream of churning users.

Users arrive in cohorts, one per simulated day; a cohort goes silent when the
next arrives, as real users do. Without a time to live, the worker's state would
grow with every cohort; with one, it stays bounded. The run samples the
worker's resident memory and table sizes, and passes when memory after warm-up
grows by at most ``max_growth`` and the user table stops growing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from app.clock import SystemClock
from app.kafkaio import ensure_topics, topic_requests
from app.settings import Settings
from harness.simulation import EventSimulator, SimulatorConfig
from harness.simulation.live import produce_at_rate
from harness.workerproc import WorkerProcess, own_broker

DAY_MS = 86_400_000
SOAK_SWEEP_PASS_S = 20


@dataclasses.dataclass(frozen=True)
class SoakPlan:
    minutes: float = 10.0
    rate: float = 250.0  # events per second
    warmup_minutes: float = 2.0
    days: int = 10  # simulated days the run spans: one cohort of users per day
    users_per_cohort: int = 20_000
    state_ttl_days: int = 1
    sample_every_s: float = 10.0
    max_growth: float = 0.10
    seed: int = 7


@dataclasses.dataclass
class Sample:
    at_s: float
    rss_bytes: int
    user_rows: int
    link_rows: int
    decisions: float


def run_soak(settings: Settings, plan: SoakPlan, *, out: Path | None) -> int:
    with own_broker(settings, "soak") as on_broker:
        # Simulated days pass in wall minutes here: the sweep passes over the rows in
        # seconds, not the hour a deployment's wall-clock days allow it.
        settings = dataclasses.replace(
            on_broker, state_ttl_days=plan.state_ttl_days, sweep_pass_s=SOAK_SWEEP_PASS_S
        )
        worker = WorkerProcess(settings, settings.data_dir / "worker.log")
        try:
            asyncio.run(ensure_topics(settings.bootstrap_servers, topic_requests(settings)))
            worker.start().wait_ready()
            samples = asyncio.run(_stream_and_sample(settings, plan, worker))
        finally:
            worker.stop()
    report = summarize(plan, samples)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if out is not None:
        out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0 if report["passed"] else 1


def churning_users(plan: SoakPlan, end_ms: int) -> Iterator[tuple[bytes | None, bytes]]:
    """Simulated events, re-addressed to a new cohort of users every simulated day, with
    event times spread evenly over ``plan.days`` that end at ``end_ms`` (the sweep never
    runs ahead of the wall clock, so neither may the stream)."""
    total = int(plan.minutes * 60 * plan.rate)
    span_ms = plan.days * DAY_MS
    start_ms = end_ms - span_ms
    simulator = EventSimulator(
        SimulatorConfig(users=plan.users_per_cohort, seed=plan.seed, start_ms=start_ms, skew=0.5)
    )
    sent = 0
    for value in simulator:
        document = orjson.loads(value)
        if not isinstance(document, dict) or str(document.get("type")).startswith("reward_"):
            continue  # answers need live decisions; this stream is about state, not learning
        ts = start_ms + sent * span_ms // total
        cohort = (ts - start_ms) // DAY_MS
        user = f"{document['user_id']}-c{cohort}"
        document |= {"user_id": user, "ts": ts, "event_id": f"{document['event_id']}-{sent}"}
        yield user.encode(), orjson.dumps(document)
        sent += 1


async def _stream_and_sample(
    settings: Settings, plan: SoakPlan, worker: WorkerProcess
) -> list[Sample]:
    total = int(plan.minutes * 60 * plan.rate)
    end_ms = SystemClock().now_ms()
    producing = asyncio.create_task(
        produce_at_rate(
            settings.bootstrap_servers,
            settings.topic_events,
            churning_users(plan, end_ms),
            rate=plan.rate,
            total=total,
            show_progress=False,
        )
    )
    samples: list[Sample] = []
    started = time.monotonic()
    while not producing.done():
        await asyncio.sleep(plan.sample_every_s)
        samples.append(_sample(worker, time.monotonic() - started))
        last = samples[-1]
        print(
            f"{last.at_s:6.0f} s  rss {last.rss_bytes / 2**20:7.1f} MiB  "
            f"users {last.user_rows:>8}  links {last.link_rows:>8}  "
            f"decisions {last.decisions:>10.0f}",
            flush=True,
        )
    await producing
    return samples


def _sample(worker: WorkerProcess, at_s: float) -> Sample:
    assert worker.process is not None
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    page = worker.get("/metrics")[1].decode()
    return Sample(
        at_s=at_s,
        rss_bytes=rss_kib * 1024,
        user_rows=int(_metric(page, 'rewardstream_table_rows{table="user-state"}')),
        link_rows=int(_metric(page, 'rewardstream_table_rows{table="link-state"}')),
        decisions=sum(
            float(v)
            for v in re.findall(r"^rewardstream_decisions_total\{[^}]*\} (\S+)$", page, re.M)
        ),
    )


def _metric(page: str, series: str) -> float:
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def summarize(plan: SoakPlan, samples: list[Sample]) -> dict[str, Any]:
    warm = [s for s in samples if s.at_s >= plan.warmup_minutes * 60]
    if len(warm) < 2:
        return {"passed": False, "reason": "the run was shorter than its warm-up"}
    first, last = warm[0], warm[-1]
    growth = (last.rss_bytes - first.rss_bytes) / first.rss_bytes
    peak_users = max(s.user_rows for s in samples)
    # Bounded: the last third of the run holds no more users than the middle third did.
    third = len(samples) // 3
    middle = max(s.user_rows for s in samples[third : 2 * third]) if third else peak_users
    late = max(s.user_rows for s in samples[2 * third :]) if third else peak_users
    bounded = late <= middle * 1.10
    elapsed = samples[-1].at_s
    return {
        "minutes": plan.minutes,
        "rate": plan.rate,
        "events": int(plan.minutes * 60 * plan.rate),
        "decisions_per_s": round(samples[-1].decisions / elapsed, 1) if elapsed else 0.0,
        "state_ttl_days": plan.state_ttl_days,
        "simulated_days": plan.days,
        "rss_after_warmup_mib": round(first.rss_bytes / 2**20, 1),
        "rss_at_end_mib": round(last.rss_bytes / 2**20, 1),
        "rss_growth": round(growth, 4),
        "peak_user_rows": peak_users,
        "user_rows_middle_third": middle,
        "user_rows_last_third": late,
        "memory_flat": growth <= plan.max_growth,
        "state_bounded": bounded,
        "passed": growth <= plan.max_growth and bounded,
        "samples": [dataclasses.asdict(s) for s in samples],
    }
