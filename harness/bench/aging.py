"""How the engine's cost per event grows with the state it holds, by hand:
``python -m harness.bench.aging [--chunk 20000] [--chunks 7] [--users 2000] [--seed 7]
[--days D | --event-rate R]``.

Replays the bench's traffic (with ``--event-rate``, its events spaced so many a second
of event time, as ``harness.bench.steady --event-rate`` offers them; with ``--days``, the
same users' traffic spread over so many simulated days as the bench's state with a
history is built: pending periods end, rewards are granted and answered) in-process
(the worker's two stages, as offline replay runs them) in consecutive chunks over the
same tables, and prints one markdown row per chunk:
CPU microseconds an event, the share of decisions that grant, and, at the chunk's end,
the users' and the links' mean stored row size. ``rewardstream bench`` takes the 70%
load from a drain that starts with empty tables; this shows what the same events cost
once the tables are full (docs/decisions.md, entry 31). Not a test, and not the
benchmark of record: CPU time depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

from app.contract.records import SourcePosition
from app.pipeline import Tables
from app.replay import BATCH_LINES
from app.settings import Settings
from harness.bench.throughput import Traffic, history_events, in_process_pipeline


@dataclass(frozen=True)
class Chunk:
    """One chunk of events replayed over the state the chunks before it left."""

    first: int  # the number of the chunk's first event in the run
    events: int
    cpu_us_per_event: float
    decisions: int
    granted: int
    user_rows: int
    user_row_bytes: float  # mean stored size at the chunk's end
    link_rows: int
    link_row_bytes: float


def chunks(settings: Settings, lines: Sequence[bytes], size: int) -> Iterator[Chunk]:
    """Replay ``lines`` in chunks of ``size``, one :class:`Chunk` each."""
    pipeline = in_process_pipeline(settings)
    tables = Tables(users={}, ledgers={}, partitions=pipeline.engine.partitions)
    for first in range(0, len(lines), size):
        decisions = granted = 0
        started = time.process_time()
        for number in range(first, min(first + size, len(lines))):
            position = SourcePosition("aging", 0, number)
            for output in pipeline.handle(
                tables, position, lines[number], flush=number % BATCH_LINES == 0
            ):
                if output.role == "decisions":
                    decisions += 1
                    granted += orjson.loads(output.value)["status"] == "granted"
        elapsed = time.process_time() - started
        pipeline.flush(tables)  # so that the sizes below are of every row written so far
        events = min(size, len(lines) - first)
        users = [len(row) for row in tables.users.values() if row]
        links = [len(row) for row in tables.links.values() if row]
        yield Chunk(
            first,
            events,
            1e6 * elapsed / events,
            decisions,
            granted,
            len(users),
            statistics.mean(users) if users else 0.0,
            len(links),
            statistics.mean(links) if links else 0.0,
        )


def markdown(rows: Sequence[Chunk]) -> list[str]:
    lines = [
        "| events | CPU us an event | granted / decisions | user rows | user row bytes "
        "| link rows | link row bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        share = c.granted / c.decisions if c.decisions else 0.0
        lines.append(
            f"| {c.first:,}-{c.first + c.events:,} | {c.cpu_us_per_event:.1f} | {share:.3f} "
            f"| {c.user_rows:,} | {c.user_row_bytes:.0f} | {c.link_rows:,} "
            f"| {c.link_row_bytes:.0f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=20_000, help="events a chunk")
    parser.add_argument("--chunks", type=int, default=7)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    spacing = parser.add_mutually_exclusive_group()
    spacing.add_argument("--days", type=float, help="spread the events over so many days")
    spacing.add_argument("--event-rate", type=float, help="events a second of event time")
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.chunks < 1 or args.users < 1:
        parser.error("--chunk, --chunks and --users take 1 or more")
    total = args.chunk * args.chunks
    if args.days is None:
        if args.event_rate is not None and args.event_rate <= 0:
            parser.error("--event-rate takes a rate > 0")
        traffic = Traffic(args.users, args.seed, events_per_second=args.event_rate)
        lines = [m.value for m in traffic.take(total)]
        span = "the bench's traffic"
        if args.event_rate is not None:
            span += f", {args.event_rate:g} events a second of event time"
    else:
        if total % args.users or args.days <= 0:
            parser.error("--days takes a span > 0, and --chunk * --chunks a multiple of --users")
        per_user = total // args.users
        history = history_events(args.users, args.seed, days=args.days, events_per_user=per_user)
        lines = list(history)
        span = f"over {args.days:g} simulated days"
    print(f"{len(lines):,} events of {args.users:,} simulated users (seed {args.seed}), {span}")
    rows: list[Chunk] = []
    for chunk in chunks(Settings.from_env(), lines, args.chunk):
        rows.append(chunk)
        print(markdown(rows)[-1], flush=True)
    print("\n".join(markdown(rows)))


if __name__ == "__main__":
    main()
