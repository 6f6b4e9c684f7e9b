"""Where benchmark figures go: a JSON report, a dated section in docs/benchmarks.md and,
for `rewardstream bench`, the sizing block of docs/scaling.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> str:
    """A one-line description of the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


# A pathspec: the whole tree but its docs/, from the top whatever the working directory.
EXCEPT_DOCS = ":(top,exclude)docs"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        # The figures a run writes (docs/) are not a change to what it measured: a
        # second bench in the same tree would otherwise label its commit "+changes".
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", EXCEPT_DOCS],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def append_section(path: Path, title: str, body: str) -> None:
    """Append a dated section (newest last) so the file keeps the history of figures."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = f"\n## {title} — {when}, commit {commit()}\n\nMachine: {machine()}.\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\nFigures written by the benchmark commands, newest last.\n")
    with path.open("a") as handle:
        handle.write(header + body.rstrip() + "\n")


# ---------------------------------------------------------------- the sizing table

# The block of docs/scaling.md that `rewardstream bench --docs` rewrites from its report.
SCALING_START = "<!-- bench:scaling:start -->"
SCALING_END = "<!-- bench:scaling:end -->"
# A worker is planned at the highest load the run measured it decide within this p99
# (ms, from an event sent to its decision read back): real time under load, as issue 14
# asks it at 70% of the drain rate.
PLANNED_P99_MS = 150.0
# Where no latency run kept that p99: the share of its measured drain rate a worker is
# planned at, the load the bench's headline latency is measured at
# (harness.bench.throughput.HEADLINE_SHARE). At 90% the latency runs are queues.
PLANNED_UTILISATION = 0.7
# Partition counts with many divisors (docs/scaling.md), smallest first.
PARTITION_COUNTS = (12, 24, 60, 120, 240, 360, 720)
# The peak rates the sizing table is worked out for, events/s.
SIZING_RATES = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
GB = 10**9
GIB = 2**30
DAY_S = 86_400


def workers_for(rate: float, per_worker: float) -> int:
    """Workers that decide ``rate`` events/s when each is planned at ``per_worker``."""
    if per_worker <= 0:
        raise ValueError("a planned rate per worker above 0 is needed")
    return max(1, math.ceil(rate / per_worker - 1e-9))


def planned_load(report: dict[str, Any]) -> tuple[float, str]:
    """Events/s to plan one worker at, and what in the run backs it.

    The highest offered rate among the run's latency runs (the fixed rate and each share
    of the drain rate) at which every event was decided and p99 stayed within
    :data:`PLANNED_P99_MS`: a worker planned there answers in real time at its peak. A
    run that kept it at no load plans at :data:`PLANNED_UTILISATION` of the drain rate,
    and says so.
    """
    guarantee = report["processing_guarantee"]
    runs = [run for run in (report.get("latency_fixed_rate"), *report.get("latency", ())) if run]
    within = [
        run
        for run in runs
        if run.get("p99_ms") is not None
        and run["p99_ms"] <= PLANNED_P99_MS
        and not run.get("undecided")
    ]
    if within:
        best = max(within, key=lambda run: float(run["offered_rate"]))
        share = best.get("share")
        load = f"{share:.0%} of the drain rate" if share else "the fixed rate"
        return float(best["offered_rate"]), (
            f"the highest load this run measured with p99 within {PLANNED_P99_MS:,.0f} ms "
            f"({load}: p50 {best['p50_ms']:,.0f} ms, p99 {best['p99_ms']:,.0f} ms from an "
            f"event sent to its decision read back, {guarantee})"
        )
    return report["engine_events_per_s"] * PLANNED_UTILISATION, (
        f"{PLANNED_UTILISATION:.0%} of the drain rate, as no latency run of this report kept "
        f"p99 within {PLANNED_P99_MS:,.0f} ms{_latency_at(report)}"
    )


def partitions_for(workers: int) -> int | None:
    """The smallest partition count of :data:`PARTITION_COUNTS` that lets ``workers``
    workers all decide (None: more than the largest)."""
    return next((count for count in PARTITION_COUNTS if count >= workers), None)


def _about(count: float) -> str:
    """A large count in words: 4.3 million, 870,000."""
    if count >= 10**6:
        return f"{count / 10**6:,.1f} million"
    return f"{round(count, -3 if count >= 10_000 else 0):,.0f}"


def scaling_markdown(report: dict[str, Any]) -> str:
    """The sizing block of docs/scaling.md from a `rewardstream bench` JSON report: what
    one worker measured, and the workers and partitions a peak event rate needs."""
    drain = report["engine_events_per_s"]
    per_worker, basis = planned_load(report)
    state, restart, history = report["state"], report["restart"], report.get("history")
    kind = "a quick run, smaller than the full benchmark" if report["quick"] else "a full run"
    when = report.get("finished_at") or "date not recorded in its report"
    rows = [
        "Worked out from the JSON report of a `rewardstream bench` run by `scaling_markdown` "
        "(`harness/bench/report.py`); `rewardstream bench --docs docs/benchmarks.md` (`make "
        f"bench`) rewrites it. This one: {kind}, commit {report['commit']}, {when}; "
        f"{report['machine']}; {report['partitions']} partitions, "
        f"{report['processing_guarantee']}, the broker on the same machine.",
        "",
        "| figure | value | per unit |",
        "|---|---:|---|",
        f"| decisions, one worker draining a backlog of {report['events']:,} events "
        f"| {drain:,.0f} events/s | about {_about(drain * DAY_S)} a day |",
    ]
    warm = report.get("engine_warm_events_per_s")
    if warm:
        rows.append(
            "| decisions, the same worker draining a second backlog over the state the "
            f"latency runs left | {warm:,.0f} events/s | about {_about(warm * DAY_S)} a day |"
        )
    rows += [
        f"| state stored per user, one sign-up each ({state['users']:,} users; row values "
        f"in the changelogs and snapshots) | {state['bytes_per_user']:,.0f} bytes "
        f"| 1 GB holds about {_about(GB / state['bytes_per_user'])} users |",
    ]
    if history:
        rows.append(
            f"| state stored per user after {history['days']:g} simulated days of traffic "
            f"({history['users']:,} simulated users, {history['events_per_user']:,.1f} "
            f"events each on average) | {history['bytes_per_user']:,.0f} bytes "
            f"| 1 GB holds about {_about(GB / history['bytes_per_user'])} users |"
        )
    else:
        rows.append(
            "| state stored per user after 30 simulated days of traffic | not in this report "
            "(a run from before the bench measured it) | |"
        )
    rows += [
        f"| resident memory per user, one sign-up each | {state['rss_bytes_per_user']:,.0f} "
        f"bytes | 1 GiB holds about {_about(GIB / state['rss_bytes_per_user'])} users |",
        f"| restart with {restart['users']:,} users' state from the changelogs, to deciding "
        f"| {restart['cold_first_decision_s']:,.1f} s | |",
        "",
        f"Workers and partitions for a peak rate, each worker planned at "
        f"{per_worker:,.0f} events/s: {basis}. A partition has one owner, so `P` must be at "
        "least the workers that decide, counted with one of them down:",
        "",
        "| peak events/s | workers deciding | with one down | partitions `P` |",
        "|---:|---:|---:|---:|",
    ]
    for rate in SIZING_RATES:
        workers = workers_for(rate, per_worker)
        partitions = partitions_for(workers + 1)
        shown = f"{partitions:,}" if partitions else f"more than {PARTITION_COUNTS[-1]:,}"
        rows.append(f"| {rate:,} | {workers:,} | {workers + 1:,} | {shown} |")
    return "\n".join(rows)


def _latency_at(report: dict[str, Any]) -> str:
    """What the run measured at the headline load, for the sizing sentence."""
    p50, p99 = report.get("p50_ms"), report.get("p99_ms")
    if p50 is None or p99 is None:
        return ""
    return (
        f", where this run measured p50 {p50:,.0f} ms and p99 {p99:,.0f} ms from an event "
        f"sent to its decision read back ({report['processing_guarantee']})"
    )


def replace_block(
    text: str, body: str, *, start: str = SCALING_START, end: str = SCALING_END
) -> str:
    """``text`` with what lies between its ``start`` and ``end`` markers replaced by
    ``body``; the markers stay."""
    first = text.find(start)
    last = text.find(end, first + len(start)) if first >= 0 else -1
    if first < 0 or last < 0 or text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"the text needs one {start} and, after it, one {end}")
    return f"{text[: first + len(start)]}\n{body.strip()}\n{text[last:]}"


def update_scaling_doc(path: Path, report: dict[str, Any]) -> bool:
    """Rewrite the sizing block of ``path`` (docs/scaling.md) from a bench report. False,
    and nothing written, when the file or its markers are missing."""
    try:
        text = path.read_text()
        updated = replace_block(text, scaling_markdown(report))
    except (OSError, ValueError):
        return False
    path.write_text(updated)
    return True
