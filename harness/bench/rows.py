"""Time and size the stored form of user rows: ``python -m harness.bench.rows [--runs R]``.

Builds user rows the way the engine leaves them (``retail-loyalty``): after one
sign-up each of 2,000 users, and after 20,000 of the simulator's events over 2,000
users. For each set, and for each stored version of :mod:`app.rows` (2, written now;
1, still read), prints the average stored size and the microseconds to store and to
read back a row, the median of R runs. Not a test: times depend on the machine and on
what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import msgspec
import orjson

from app.contract import Event
from app.contract.validate import parse_event
from app.decisioning import Engine
from app.decisioning.ledger import Ledger
from app.features import UserState
from app.programs import load_builtin
from app.rows import expand, shrink, shrink_v1
from harness.bench.timing import median_us_each
from harness.simulation.events import START_MS, EventSimulator, SimulatorConfig

USERS = 2_000


def rows_after(messages: Sequence[bytes]) -> list[bytes]:
    """Each user's row (its JSON) once the engine has decided ``messages``."""
    engine = Engine(load_builtin("retail-loyalty"))
    states: dict[str, UserState] = {}
    ledger = Ledger()
    for message in messages:
        event = parse_event(message, max_bytes=65_536)
        if not isinstance(event, Event):
            continue
        outcome = engine.process(states.get(event.user_id, UserState()), ledger, event)
        states[event.user_id], ledger = outcome.user, outcome.ledger
    return [msgspec.json.encode(state) for state in states.values()]


def sign_ups() -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event_id": f"e-{n}",
                "user_id": f"user-{n:07d}",
                "type": "signup",
                "ts": START_MS + n,
                "channel": "web",
                "device_id": f"dev-{n:012x}",
                "ip": f"10.1.{n % 250}.{n % 200}",
                "attributes": {"country": "DE", "age": 20 + n % 50},
            }
        )
        for n in range(USERS)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    simulator = EventSimulator(SimulatorConfig(users=USERS, seed=7))
    sets = {
        "one sign-up each": rows_after(sign_ups()),
        "after 20,000 simulated events": rows_after(
            [simulator.next_message() for _ in range(20_000)]
        ),
    }
    print(f"user rows of {USERS:,} users, median of {args.runs} runs")
    print("| rows | JSON bytes | version | stored bytes | store µs | read µs |")
    print("|---|---:|---|---:|---:|---:|")
    for name, documents in sets.items():
        json_bytes = statistics.mean(len(d) for d in documents)
        for version, store in (("2 (zstd)", shrink), ("1 (deflate)", shrink_v1)):
            stored = [store(d) for d in documents]
            assert all(expand(s) == d for s, d in zip(stored, documents, strict=True))
            size = statistics.mean(len(s) for s in stored)
            write = median_us_each(store, documents, args.runs, warm=200)
            read = median_us_each(expand, stored, args.runs, warm=200)
            print(
                f"| {name} | {json_bytes:,.0f} | {version} | {size:,.0f} | "
                f"{write:.1f} | {read:.1f} |"
            )


if __name__ == "__main__":
    main()
