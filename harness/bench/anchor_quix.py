"""A stateful quixstreams app with exactly-once: a latency anchor for ``rewardstream bench``.

It runs in a virtualenv of its own (``make bench-anchors-venv``: quixstreams brings
confluent-kafka and librdkafka, which the product does not use), started by the bench
as ``<venv>/bin/python -P anchor_quix.py ...``; it imports nothing of rewardstream.

Per user (the message key) it keeps a counter in quixstreams' ``State`` (RocksDB with
a changelog topic), and for each event sends ``{"event_id": ..., "user_events": n}``
to the output topic, with ``processing_guarantee="exactly-once"``: the outputs, the
changelog writes and the input offsets of a checkpoint commit in one transaction,
every ``--commit-interval`` seconds (quixstreams' default when not given: 5 s).

quixstreams commits a due checkpoint only between polls, and a poll with nothing to
read waits ``consumer_poll_timeout`` (1 s by default): the last events before a pause
in the input wait that long for their commit. ``--poll-timeout`` shortens it, as one
would for low latency. quixstreams stops gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="quixstreams latency anchor")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument(
        "--commit-interval", type=float, help="seconds between checkpoints (quixstreams' default)"
    )
    parser.add_argument(
        "--poll-timeout", type=float, help="seconds a poll waits (quixstreams' default)"
    )
    return parser.parse_args(argv)


def count(value: dict[str, Any], state: Any) -> dict[str, Any]:
    """The user's events so far, kept in the state of the message's key."""
    seen = int(state.get("events", 0)) + 1
    state.set("events", seen)
    return {"event_id": value["event_id"], "user_events": seen}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from quixstreams import Application  # type: ignore[import-not-found, unused-ignore]

    options: dict[str, Any] = {}
    if args.commit_interval is not None:
        options["commit_interval"] = args.commit_interval
    if args.poll_timeout is not None:
        options["consumer_poll_timeout"] = args.poll_timeout
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=args.state_dir,
        loglevel="WARNING",
        **options,
    )
    source = app.topic(args.input, value_deserializer="json")
    sink = app.topic(args.output, value_serializer="json")
    frame = app.dataframe(source).apply(count, stateful=True)
    frame.to_topic(sink)
    print(f"anchor: quixstreams exactly-once, {options or 'defaults'}", flush=True)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
