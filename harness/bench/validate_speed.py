"""Time event validation: ``python -m harness.bench.validate_speed [--events N] [--runs R]``.

Times :func:`app.contract.validate.parse_event` over N realistic valid events (the
simulator's mix, as the tests build them: integer ``ts``, ``ip``, ``device_id``,
``channel``, per-type fields and attributes) and, for comparison, the JSON Schema path
alone (orjson + fastjsonschema, what ``parse_event`` ran for every event before the
msgspec fast path; it now shares the fast path's cached IP check, so it runs a little
faster than it did then). A second set gives every event an RFC 3339 string ``ts``.
Prints microseconds per event, the median of R runs. Not a test: numbers depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from app.contract import validate
from app.contract.records import Event
from harness.bench.timing import median_us_each
from harness.simulation.events import EventSimulator, SimulatorConfig


def realistic_events(n: int, *, string_ts: bool = False) -> list[bytes]:
    simulator = EventSimulator(SimulatorConfig(users=2_000, seed=11))
    values = [simulator.next_message() for _ in range(n)]
    if not string_ts:
        return values
    documents: list[dict[str, Any]] = [orjson.loads(value) for value in values]
    for document in documents:
        moment = datetime.fromtimestamp(document["ts"] / 1000, UTC)
        document["ts"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [orjson.dumps(document) for document in documents]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    max_bytes = 65_536

    def current(value: bytes) -> object:
        return validate.parse_event(value, max_bytes=max_bytes)

    def schema_path(value: bytes) -> object:
        return validate.parse_event_schema(value, max_bytes=max_bytes)

    for label, string_ts in (("integer ts", False), ("RFC 3339 ts", True)):
        values = realistic_events(args.events, string_ts=string_ts)
        if not all(isinstance(current(v), Event) for v in values):
            raise SystemExit("the simulator's events should all be valid")
        for name, parse in (("parse_event", current), ("schema path", schema_path)):
            us = median_us_each(parse, values, args.runs, warm=1000)
            print(f"{label:12} {name:12} {us:7.2f} us/event (median of {args.runs} runs)")


if __name__ == "__main__":
    main()
