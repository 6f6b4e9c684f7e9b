"""The ``rewardstream`` command. It parses arguments and calls the project; no business logic."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from app.clock import SystemClock
from app.programs import ProgramError
from app.settings import Settings, SettingsError

# What an installed package runs. The other commands (kafka, simulate, bench, bench-learning,
# bench-fraud, demo, soak) belong to the test harness, ``harness/`` beside this package in
# a checkout, which the wheel does not ship: each imports it through _harness(), inside
# the command; these never import it.
PRODUCT_COMMANDS = ("topics", "worker", "produce", "tail", "erase", "replay", "program", "console")

TAIL_ROLES = {
    "decisions": "topic_decisions",
    "alerts": "topic_fraud_alerts",
    "dead-letters": "topic_dead_letter",
    "erasures": "topic_erasures",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env(bootstrap_servers=args.bootstrap)
        result: int = args.run(settings, args)
        return result
    # RuntimeError covers the harness's errors too (the local broker's BrokerError).
    except (SettingsError, ProgramError, RuntimeError) as error:
        print(f"rewardstream: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class HarnessUnavailableError(RuntimeError):
    """A harness command run from an installed package, away from a checkout."""


def _harness(command: str) -> None:
    """Make the test harness importable for ``command``, or say where it runs.

    From the checkout's root it imports as it is; from elsewhere (an editable install's
    ``rewardstream`` on PATH) it is found beside this package and its checkout goes on
    sys.path. An installed wheel has no harness: the command stops with a message, not
    a traceback."""
    try:
        importlib.import_module("harness")
        return
    except ModuleNotFoundError as error:
        if error.name != "harness":
            raise  # the harness is there but something it imports is not
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "harness" / "__init__.py").is_file():
        sys.path.append(str(checkout))
        importlib.invalidate_caches()
        importlib.import_module("harness")
        return
    product = ", ".join(PRODUCT_COMMANDS[:-1]) + f" and {PRODUCT_COMMANDS[-1]}"
    raise HarnessUnavailableError(
        f"`rewardstream {command}` is part of the project's test harness and runs from a "
        "checkout of the repository (make demo, make bench); the installed package has "
        f"the {product} commands"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardstream",
        description="Real-time reward decisions and reward-fraud detection on Kafka.",
    )
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: REWARDSTREAM_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_kafka(commands)
    _add_topics(commands)
    _add_worker(commands)
    _add_produce(commands)
    _add_tail(commands)
    _add_erase(commands)
    _add_replay(commands)
    _add_program(commands)
    _add_console(commands)
    _add_evaluate(commands)
    _add_whatif(commands)
    _add_experiment(commands)
    _add_bench(commands)
    _add_bench_learning(commands)
    _add_bench_fraud(commands)
    _add_bench_erasure(commands)
    _add_bench_ope(commands)
    _add_bench_experiment(commands)
    _add_bench_console(commands)
    _add_simulate(commands)
    _add_demo(commands)
    _add_soak(commands)
    return parser


# ---------------------------------------------------------------- kafka


def _add_kafka(commands: Any) -> None:
    kafka = commands.add_parser("kafka", help="start, stop or check the local Apache Kafka broker")
    actions = kafka.add_subparsers(title="actions", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="fetch Kafka if needed, start it, wait until it answers")
    up.add_argument("--port", type=int, default=9092, help="listener port; 0 picks a free one")
    for action in (
        up,
        actions.add_parser("down", help="stop the broker"),
        actions.add_parser("status", help="is it running, and where"),
    ):
        action.add_argument(
            "--home", type=Path, help="broker directory (default: <data_dir>/kafka)"
        )
    fetch = actions.add_parser("fetch", help="only fetch the broker's jars into the cache")
    fetch.set_defaults(run=_kafka_fetch)
    up.set_defaults(run=_kafka_up)
    actions.choices["down"].set_defaults(run=_kafka_down)
    actions.choices["status"].set_defaults(run=_kafka_status)


def _broker_home(settings: Settings, args: argparse.Namespace) -> Path:
    return Path(args.home) if args.home else settings.data_dir / "kafka"


def _kafka_up(settings: Settings, args: argparse.Namespace) -> int:
    _harness("kafka")
    from harness import localkafka

    info = localkafka.start(
        _broker_home(settings, args),
        cache_dir=settings.cache_dir,
        version=settings.kafka_version,
        port=args.port,
        heap=settings.kafka_heap,
    )
    print(f"Kafka {info.version} is up: bootstrap {info.bootstrap_servers} (pid {info.pid})")
    if info.bootstrap_servers != settings.bootstrap_servers:
        print(f"export REWARDSTREAM_BOOTSTRAP_SERVERS={info.bootstrap_servers}")
    return 0


def _kafka_fetch(settings: Settings, args: argparse.Namespace) -> int:
    _harness("kafka")
    from harness import localkafka

    libs = localkafka.ensure_jars(settings.cache_dir, settings.kafka_version)
    print(f"Apache Kafka {settings.kafka_version}: {len(list(libs.glob('*.jar')))} jars cached.")
    return 0


def _kafka_down(settings: Settings, args: argparse.Namespace) -> int:
    _harness("kafka")
    from harness import localkafka

    stopped = localkafka.stop(_broker_home(settings, args))
    print("Kafka stopped." if stopped else "No broker was running from that home.")
    return 0


def _kafka_status(settings: Settings, args: argparse.Namespace) -> int:
    _harness("kafka")
    from harness import localkafka

    info = localkafka.status(_broker_home(settings, args))
    if info is None:
        print("Kafka is not running.")
        return 3
    answering = localkafka.answers(info.bootstrap_servers)
    state = "answering" if answering else "NOT answering"
    print(f"Kafka {info.version} runs as pid {info.pid} on {info.bootstrap_servers}, {state}.")
    return 0 if answering else 1


# ---------------------------------------------------------------- topics and worker


def _add_topics(commands: Any) -> None:
    topics = commands.add_parser("topics", help="manage the engine's topics")
    actions = topics.add_subparsers(title="actions", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create missing topics; check existing ones")
    create.add_argument(
        "--acls",
        action="store_true",
        help="then grant the Kafka ACLs of REWARDSTREAM_ACL_* (who may write each input, "
        "what the worker may do); needs a broker with an authorizer, run as its admin",
    )
    create.set_defaults(run=_topics_create)


def _topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.acls import acl_bindings, create_acls
    from app.kafkaio import client_options, ensure_topics, topic_requests

    # A missing or malformed ACL setting fails here, before anything changes.
    bindings = acl_bindings(settings) if args.acls else []
    wanted = topic_requests(settings)
    client = client_options(settings)
    result = asyncio.run(ensure_topics(settings.bootstrap_servers, wanted, client=client))
    for topic in wanted:
        print(f"{topic.name:<24} {topic.partitions} partitions  {result[topic.name]}")
    if args.acls:
        asyncio.run(create_acls(settings.bootstrap_servers, bindings, client=client))
        print("ACLs granted (a name ending in * stands for every name that begins so):")
        for binding in bindings:
            print(f"  ALLOW {binding.describe()}")
        for kind, producers, name in (
            ("EVENT", settings.acl_event_producers, settings.topic_events),
            ("LABEL", settings.acl_label_producers, settings.topic_fraud_labels),
            ("CONSENT", settings.acl_consent_producers, settings.topic_consent),
            ("MEMBER", settings.acl_member_producers, settings.topic_members),
            ("ERASURE", settings.acl_erasure_producers, settings.topic_erasure_requests),
        ):
            if not producers.strip():
                print(f"REWARDSTREAM_ACL_{kind}_PRODUCERS is empty: only super users write {name}.")
    return 0


def _add_worker(commands: Any) -> None:
    worker = commands.add_parser("worker", help="run a stream worker until stopped")
    worker.set_defaults(run=_worker)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.worker import run_worker  # the Kafka runtime loads only for the worker

    run_worker(settings)
    return 0


# ---------------------------------------------------------------- console


def _add_console(commands: Any) -> None:
    console = commands.add_parser(
        "console",
        help="serve the web console: users' decisions and why, the review queue, the program",
    )
    console.add_argument("--host", help="address to listen on (default: REWARDSTREAM_CONSOLE_HOST)")
    console.add_argument("--port", type=int, help="port (default: REWARDSTREAM_CONSOLE_PORT)")
    console.set_defaults(run=_console)


def _console(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from app.console.process import run_console

    overrides = {"console_host": args.host, "console_port": args.port}
    settings = dataclasses.replace(
        settings, **{name: value for name, value in overrides.items() if value is not None}
    )
    settings.check()
    return run_console(settings)


# ---------------------------------------------------------------- produce and tail


def _add_produce(commands: Any) -> None:
    produce = commands.add_parser(
        "produce", help="send JSON lines (one event per line) to the events topic, as-is"
    )
    produce.add_argument("file", nargs="?", default="-", help="JSONL file, or - for stdin")
    produce.set_defaults(run=_produce)


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    for line in stream:
        line = line.strip()
        if line:
            yield line


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from app.kafkaio import client_options, event_routes, produce

    def send(stream: BinaryIO) -> int:
        return asyncio.run(
            produce(
                settings.bootstrap_servers,
                settings.topic_events,
                _lines(stream),
                client=client_options(settings),
                routes=event_routes(settings),
            )
        )

    if args.file == "-":
        count = send(sys.stdin.buffer)
    else:
        with open(args.file, "rb") as handle:
            count = send(handle)
    print(f"Produced {count} events to {settings.topic_events}.", file=sys.stderr)
    return 0


def _add_erase(commands: Any) -> None:
    erase = commands.add_parser(
        "erase",
        help="forget a user on request (GDPR erasure): send an erasure_requested event and "
        "wait for its receipt",
    )
    erase.add_argument("--user", required=True, help="the user id to forget")
    erase.add_argument(
        "--request-id",
        help="the request's id, kept in the receipt (default: a new random one)",
    )
    erase.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the receipt (0: send and return)",
    )
    erase.set_defaults(run=_erase)


def _erase(settings: Settings, args: argparse.Namespace) -> int:
    import time
    import uuid

    from app.erasure import receipt_subject
    from app.kafkaio import client_options, produce, read

    request_id = args.request_id or f"erase-{uuid.uuid4()}"
    event = {
        "event_id": request_id,
        "user_id": args.user,
        "type": "erasure_requested",
        "ts": int(time.time() * 1000),
    }
    client = client_options(settings)
    topic = settings.topic_erasure_requests
    asyncio.run(produce(settings.bootstrap_servers, topic, [orjson.dumps(event)], client=client))
    print(f"Sent erasure request {request_id} to {topic}.", file=sys.stderr)
    if args.wait <= 0:
        return 0
    subject = receipt_subject(args.user, settings.erasure_receipt_key or settings.app_id)

    async def receipt() -> dict[str, Any] | None:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            async for received in read(
                settings.bootstrap_servers,
                [settings.topic_erasures],
                idle_timeout_s=min(2.0, max(deadline - time.monotonic(), 0.1)),
                client=client,
            ):
                if received.key == subject.encode():
                    document = received.document()
                    if document.get("request_id") == request_id:
                        return document
        return None

    found = asyncio.run(receipt())
    if found is None:
        print(
            f"No receipt within {args.wait:g} s: is a worker running? The request stays in "
            f"{topic} and is carried out when one reads it.",
            file=sys.stderr,
        )
        return 1
    sys.stdout.buffer.write(orjson.dumps(found) + b"\n")
    return 0


def _add_tail(commands: Any) -> None:
    tail = commands.add_parser("tail", help="print decisions, alerts or dead letters")
    tail.add_argument("what", choices=[*TAIL_ROLES, "all"], help="which output to read")
    tail.add_argument("--jsonl", action="store_true", help="raw JSON lines instead of text")
    tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for new records")
    tail.add_argument("--new", action="store_true", help="only records published from now on")
    tail.add_argument("--max", type=int, help="stop after this many records")
    tail.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="without --follow, stop after this many seconds without a record",
    )
    tail.set_defaults(run=_tail)


def _tail(settings: Settings, args: argparse.Namespace) -> int:
    from app.kafkaio import client_options, read
    from app.render import render

    roles = list(TAIL_ROLES.values()) if args.what == "all" else [TAIL_ROLES[args.what]]
    topics = [getattr(settings, role) for role in roles]

    async def run() -> None:
        async for received in read(
            settings.bootstrap_servers,
            topics,
            from_beginning=not args.new,
            idle_timeout_s=None if args.follow else args.idle,
            max_records=args.max,
            client=client_options(settings),
        ):
            if args.jsonl:
                sys.stdout.buffer.write(received.value + b"\n")
            else:
                print(render(orjson.loads(received.value)))
            sys.stdout.flush()

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------- evaluate


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="value candidate policies on a log of events, offline (IPS, SNIPS, DR)",
    )
    evaluate.add_argument("--program", help="the program that logged (default: setting)")
    evaluate.add_argument("--in", dest="input", required=True, help="the events, JSONL")
    evaluate.add_argument(
        "--candidate",
        action="append",
        default=[],
        help="uniform, NAME=NUMBER (epsilon, min_priority, epsilon_half_after, "
        "min_epsilon of the logged program), or a program file; repeatable",
    )
    evaluate.add_argument(
        "--decisions", help="the decision log of those events (JSONL), to check the replay"
    )
    evaluate.add_argument(
        "--shadow",
        help="a shadow program's decisions of those events (JSONL from the shadow-decisions "
        "topic or replay --shadow), valued on the live answers",
    )
    evaluate.add_argument("--seed", type=int, help="the logging seed (default: setting)")
    evaluate.add_argument("--partitions", type=int, help="the logging partition count")
    evaluate.set_defaults(run=_evaluate)


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from app.assembly import load_program_setting
    from app.evaluation.offline import LogMismatchError, evaluate_events, render

    program = load_program_setting(args.program or settings.program)
    lines = [line.rstrip(b"\r\n") for line in Path(args.input).read_bytes().splitlines()]
    decisions = None
    if args.decisions:
        decisions = [
            orjson.loads(line) for line in Path(args.decisions).read_bytes().splitlines() if line
        ]
    shadow = None
    if args.shadow:
        shadow = [
            orjson.loads(line) for line in Path(args.shadow).read_bytes().splitlines() if line
        ]
    try:
        evaluation, checked = evaluate_events(
            program,
            lines,
            args.candidate,
            seed=settings.seed if args.seed is None else args.seed,
            partitions=settings.partitions if args.partitions is None else args.partitions,
            max_event_bytes=settings.max_event_bytes,
            state_ttl_ms=settings.state_ttl_ms,
            decisions=decisions,
            shadow=shadow,
        )
    except LogMismatchError as error:
        print(f"The replay does not match the decision log: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"Cannot evaluate: {error}", file=sys.stderr)
        return 2
    print(render(evaluation))
    if decisions is not None:
        print(f"{checked:,} choices checked against the decision log, all equal.")
    return 0


# ---------------------------------------------------------------- whatif


def _add_whatif(commands: Any) -> None:
    whatif = commands.add_parser(
        "whatif",
        help="replay the same events under two programs and compare them, group by group",
    )
    whatif.add_argument(
        "--current", help="the program running now, id or YAML file (default: setting)"
    )
    whatif.add_argument(
        "--candidate", required=True, help="the program to compare, id or YAML file"
    )
    whatif.add_argument(
        "--in", dest="input", required=True, help="the events, JSONL (answers included)"
    )
    whatif.add_argument("--seed", type=int, help="exploration seed (default: setting)")
    whatif.add_argument("--partitions", type=int, help="split budgets as over N partitions")
    whatif.add_argument("--json", action="store_true", help="the comparison as one JSON document")
    whatif.set_defaults(run=_whatif)


def _whatif(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 1 when an audit group of the candidate is served under its threshold."""
    from app.assembly import load_program_setting
    from app.evaluation.whatif import ReplayOptions, compare, render, to_document

    current = load_program_setting(args.current or settings.program)
    candidate = load_program_setting(args.candidate)
    lines = [line.rstrip(b"\r\n") for line in Path(args.input).read_bytes().splitlines()]
    options = ReplayOptions(
        seed=settings.seed if args.seed is None else args.seed,
        partitions=settings.partitions if args.partitions is None else args.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )
    try:
        found = compare(current, candidate, lines, options)
    except ValueError as error:
        print(f"Cannot compare: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(to_document(found), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(found))
    return 1 if found.failed else 0


# ---------------------------------------------------------------- experiment


def _add_experiment(commands: Any) -> None:
    experiment = commands.add_parser("experiment", help="read an experiment's arms back")
    actions = experiment.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="per arm: users, decisions, grants, redemptions, cost, lift, sample ratio",
    )
    report.add_argument("--program", help="the program running the experiment (default: setting)")
    report.add_argument(
        "--decisions", required=True, help="the decisions, JSONL (rewardstream tail --jsonl)"
    )
    report.add_argument(
        "--events", help="the events with the answers (reward_redeemed naming a decision), JSONL"
    )
    report.set_defaults(run=_experiment_report)


def _experiment_report(settings: Settings, args: argparse.Namespace) -> int:
    from app.assembly import load_program_setting
    from app.evaluation.experiments import render, report

    program = load_program_setting(args.program or settings.program)
    if program.experiment is None:
        print(f"Program {program.id} runs no experiment (no experiment block).", file=sys.stderr)
        return 2

    def lines(path: str | None) -> list[dict[str, Any]]:
        if path is None:
            return []
        found = []
        for line in Path(path).read_bytes().splitlines():
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line, or a line that is not a record
            if isinstance(document, dict):
                found.append(document)
        return found

    try:
        found = report(program.experiment, lines(args.decisions), lines(args.events))
    except ValueError as error:
        print(f"Cannot report: {error}", file=sys.stderr)
        return 2
    print(render(found))
    return 1 if found.sample_ratio.mismatch else 0


# ---------------------------------------------------------------- program


def _add_program(commands: Any) -> None:
    program = commands.add_parser("program", help="check reward program files")
    actions = program.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="load programs as a worker would and print what each means; exit 1 if one fails",
    )
    check.add_argument(
        "programs",
        nargs="*",
        metavar="PROGRAM",
        help="shipped program ids or YAML files (default: REWARDSTREAM_PROGRAM, and "
        "REWARDSTREAM_SHADOW_PROGRAM if set)",
    )
    check.set_defaults(run=_program_check)


def _program_check(settings: Settings, args: argparse.Namespace) -> int:
    from app.assembly import load_program_setting
    from app.programs.summary import summarize

    names = args.programs or [settings.program, *filter(None, [settings.shadow_program])]
    failed = 0
    for name in names:
        try:
            program = load_program_setting(name)
        except (ProgramError, OSError) as error:
            print(f"rewardstream: {error}", file=sys.stderr)
            failed += 1
            continue
        print(summarize(program))
    return 1 if failed else 0


# ---------------------------------------------------------------- replay


def _add_replay(commands: Any) -> None:
    replay = commands.add_parser(
        "replay", help="run the engine over a JSONL file of events, no broker needed"
    )
    replay.add_argument("--program", help="shipped program id or YAML file (default: setting)")
    replay.add_argument("--in", dest="input", default="-", help="events, JSONL (- for stdin)")
    replay.add_argument("--out", default="-", help="records, JSONL (- for stdout)")
    replay.add_argument("--seed", type=int, help="exploration seed (default: setting)")
    replay.add_argument("--partitions", type=int, help="split budgets as over N partitions")
    replay.add_argument(
        "--shadow",
        help="a shadow program (shipped id or YAML file) deciding beside the live one; its "
        "decisions are written too, with kind shadow_decision (default: setting)",
    )
    replay.set_defaults(run=_replay)


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from app.assembly import build_engine, build_shadow_engine
    from app.replay import ReplayCounts, replay

    settings = dataclasses.replace(
        settings,
        seed=settings.seed if args.seed is None else args.seed,
        partitions=settings.partitions if args.partitions is None else args.partitions,
    )
    engine = build_engine(settings, program=args.program)
    if args.shadow is not None:
        settings = dataclasses.replace(settings, shadow_program=args.shadow)
    shadow = build_shadow_engine(settings)
    counts = ReplayCounts()
    started = time.perf_counter()
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    sink = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    try:
        lines = (line.rstrip(b"\r\n") for line in source)
        name = "stdin" if args.input == "-" else Path(args.input).name
        for record in replay(
            engine,
            lines,
            source_name=name,
            max_event_bytes=settings.max_event_bytes,
            counts=counts,
            state_ttl_ms=settings.state_ttl_ms,
            shadow=shadow,
        ):
            sink.write(record + b"\n")
    finally:
        for handle in (source, sink):
            if handle not in (sys.stdin.buffer, sys.stdout.buffer):
                handle.close()
    elapsed = time.perf_counter() - started
    print(
        f"Replayed {counts.lines} lines into {counts.records} records "
        f"({counts.duplicates} repeats ignored) in {elapsed:.2f} s, "
        f"{counts.lines / max(elapsed, 1e-9):,.0f} events/s.",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------- benchmarks


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="throughput, latency and state per user: the engine beside a raw Kafka loop, "
        "on a broker of its own",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a smaller run, about three minutes (6,000 events, 5 s per latency run, "
        "20,000 users for the state)",
    )
    bench.add_argument("--events", type=int, help="backlog size (default 50,000)")
    bench.add_argument("--partitions", type=int, help="partitions of every topic (default 4)")
    bench.add_argument(
        "--latency-seconds", type=float, help="open-loop traffic per offered rate (default 20)"
    )
    bench.add_argument(
        "--state-users", type=int, help="distinct users for the state figures (default 1,000,000)"
    )
    bench.add_argument(
        "--restart-users",
        type=int,
        help="users whose state a restarted worker restores (default 1,000,000)",
    )
    bench.add_argument("--seed", type=int, help="simulator seed (default 7)")
    bench.add_argument("--out", default="var/bench.json", help="JSON report path")
    bench.add_argument(
        "--docs",
        help="append the figures to this markdown file, and rewrite the sizing block of "
        "scaling.md beside it (between its bench:scaling markers)",
    )
    bench.set_defaults(run=_bench)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench")
    from harness.bench.throughput import (
        plan_for,
        run_throughput_benchmark,
        targets_summary,
        throughput_markdown,
    )

    try:
        plan = plan_for(
            args.quick,
            events=args.events,
            partitions=args.partitions,
            latency_seconds=args.latency_seconds,
            state_users=args.state_users,
            restart_users=args.restart_users,
            seed=args.seed,
        )
    except ValueError as error:
        raise SettingsError(str(error)) from None

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # The broker is created for the run: its clients' first requests meet leaders and a
    # group coordinator still being elected, log it, and retry. Not findings; a client
    # error that matters raises.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = run_throughput_benchmark(settings, plan, say=say)
    command = "rewardstream bench --quick" if plan.quick else "rewardstream bench"
    title = f"Throughput, latency and state (`{command}`)"
    _publish_report(args, report, throughput_markdown(report), title)
    if args.docs:
        from harness.bench.report import update_scaling_doc

        scaling = Path(args.docs).with_name("scaling.md")
        if not update_scaling_doc(scaling, report):
            say(f"{scaling}: no sizing block to rewrite (the file or its markers are missing)")
    print(targets_summary(report))
    return 0  # a measurement: a missed target is a finding, printed above, not a failure


def _add_bench_learning(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-learning", help="learning quality: engine vs random vs oracle in a closed loop"
    )
    bench.add_argument("--program", help="shipped program id or YAML file (default: setting)")
    bench.add_argument("--events", type=int, default=50_000)
    bench.add_argument("--users", type=int, default=2_000)
    bench.add_argument("--days", type=float, default=30.0, help="simulated time span")
    bench.add_argument("--seed", type=int, default=7)
    bench.add_argument(
        "--members",
        type=float,
        default=0.0,
        help="share of users who joined before the run (0: a launch, every user signs up)",
    )
    bench.add_argument(
        "--world",
        default="default",
        help="how users' hidden tastes follow from what they do: default (the world the "
        "engine was developed on), or mild, rotated, individual, shift (worlds to check a "
        "change on that it was not tuned on; shift turns every persona's tastes to the "
        "next one's halfway through the run; harness/simulation/closed_loop.py)",
    )
    bench.add_argument(
        "--blind-oracles",
        type=int,
        nargs="*",
        default=[1, 3, 5],
        metavar="K",
        help="also run the oracle blind to each user's tastes for their first K events, "
        "for each K (default: 1 3 5; none: no such rows): how fast a learner must know a "
        "user to capture a given share of the oracle's lift",
    )
    _report_options(bench, "var/bench/learning.json")
    bench.set_defaults(run=_bench_learning)


def _report_options(bench: Any, out: str) -> None:
    """Where a benchmark writes its JSON report, and the markdown file it appends to."""
    bench.add_argument("--out", default=out, help="JSON report path")
    bench.add_argument("--docs", help="append the figures to this markdown file")


def _publish_report(
    args: argparse.Namespace, report: dict[str, Any], table: str, title: str
) -> None:
    """A benchmark's JSON report to ``--out``, its table to stdout and, with ``--docs``,
    as a dated section of that markdown file (the caller has called _harness())."""
    from harness.bench.report import append_section

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table)
    if args.docs:
        append_section(Path(args.docs), title, table)


def _add_bench_erasure(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-erasure",
        help="erasure receipts under the demo's load: request to receipt, beside decisions",
    )
    bench.add_argument("--rate", type=float, default=200.0, help="events/s (the demo's)")
    bench.add_argument("--events", type=int, default=6_000)
    bench.add_argument("--every", type=int, default=40, help="one erasure per this many events")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument(
        "--state-users",
        type=int,
        default=0,
        help="users signed up and decided first, so erasures meet a state of this size",
    )
    _report_options(bench, "var/bench/erasure.json")
    bench.set_defaults(run=_bench_erasure)


def _bench_erasure(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-erasure")
    from harness.bench.erasure import ErasurePlan, erasure_markdown, run_erasure_benchmark

    if args.rate <= 0 or args.events < args.every or args.every < 1 or args.runs < 1:
        raise SettingsError("bench-erasure needs --rate > 0, --runs >= 1, 1 <= --every <= --events")
    if args.state_users < 0:
        raise SettingsError("--state-users must be 0 or more")
    plan = ErasurePlan(
        rate=args.rate,
        events=args.events,
        every=args.every,
        runs=args.runs,
        state_users=args.state_users,
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a new broker's first requests
    report = run_erasure_benchmark(
        settings, plan, say=lambda text: print(text, file=sys.stderr, flush=True)
    )
    title = "Erasure receipts under the demo's load (`rewardstream bench-erasure`)"
    _publish_report(args, report, erasure_markdown(report), title)
    return 0


def _add_bench_fraud(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-fraud",
        help="fraud detection: precision and recall per attack scenario, budget lost",
    )
    bench.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    bench.add_argument("--hours", type=float, default=36.0, help="simulated time per run")
    bench.add_argument("--normal-users", type=int, default=1_000)
    bench.add_argument("--normal-events", type=int, default=30_000)
    _report_options(bench, "var/bench/fraud.json")
    bench.set_defaults(run=_bench_fraud)


def _bench_fraud(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-fraud")
    from harness.bench.fraud import fraud_markdown, run_fraud_benchmark, targets_met

    report = run_fraud_benchmark(
        seeds=tuple(args.seeds),
        hours=args.hours,
        normal_users=args.normal_users,
        normal_events=args.normal_events,
    )
    _publish_report(
        args, report, fraud_markdown(report), "Fraud detection (`rewardstream bench-fraud`)"
    )
    return 0 if targets_met(report) else 1


def _add_bench_ope(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-ope",
        help="offline evaluation against the truth: bias and coverage over seeds",
    )
    bench.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 21)))
    bench.add_argument("--events", type=int, default=20_000, help="events per logging run")
    bench.add_argument("--users", type=int, default=1_000)
    bench.add_argument("--timed-events", type=int, default=50_000, help="the timed log's size")
    bench.add_argument("--program", help="shipped program id or YAML file (default: setting)")
    _report_options(bench, "var/bench/ope.json")
    bench.set_defaults(run=_bench_ope)


def _bench_ope(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-ope")
    from app.assembly import load_program_setting
    from harness.bench.ope import OpePlan, missed_targets, render_markdown, run_ope_benchmark

    plan = OpePlan(
        seeds=tuple(args.seeds),
        events=args.events,
        users=args.users,
        timed_events=args.timed_events,
    )
    program = load_program_setting(args.program or settings.program)
    report = run_ope_benchmark(settings, program, plan, say=print)
    title = "Offline evaluation against the truth (`rewardstream bench-ope`)"
    _publish_report(args, report, render_markdown(report), title)
    return 1 if missed_targets(report, len(plan.seeds)) else 0


def _add_bench_console(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-console",
        help="the console's user lookup with a million users in its index: p95, memory per user",
    )
    bench.add_argument("--users", type=int, default=1_000_000)
    bench.add_argument("--decisions", type=int, default=3, help="decisions per user")
    bench.add_argument("--lookups", type=int, default=20_000)
    bench.add_argument("--seed", type=int, default=7)
    _report_options(bench, "var/bench/console.json")
    bench.set_defaults(run=_bench_console)


def _bench_console(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-console")
    from harness.bench.console import ConsolePlan, missed_target, render_markdown, run_console_bench

    plan = ConsolePlan(
        users=args.users, decisions=args.decisions, lookups=args.lookups, seed=args.seed
    )
    report = run_console_bench(settings, plan, say=print)
    title = "Console user lookup (`rewardstream bench-console`)"
    _publish_report(args, report, render_markdown(report), title)
    return 1 if missed_target(report) else 0


def _add_bench_experiment(commands: Any) -> None:
    bench = commands.add_parser(
        "bench-experiment",
        help="an experiment on the closed loop: lift against the truth, sample ratio",
    )
    bench.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 21)))
    bench.add_argument("--events", type=int, default=20_000, help="events per run")
    bench.add_argument("--users", type=int, default=2_000)
    bench.add_argument("--days", type=float, default=10.0)
    bench.add_argument("--holdout", type=float, default=0.1, help="the holdout's share")
    bench.add_argument(
        "--loss-users",
        type=int,
        default=0,
        help="also run the sample-ratio test on closed loops of this many users, with a "
        "share of the program arm's users lost (0: not run; a 3%% loss at a 10%% holdout "
        "is flagged half the time from about 130,000 users)",
    )
    bench.add_argument("--loss-seeds", type=int, nargs="+", default=[1, 2, 3])
    bench.add_argument("--loss", type=float, default=0.03, help="the share of users lost")
    bench.add_argument("--program", help="shipped program id or YAML file (default: setting)")
    _report_options(bench, "var/bench/experiment.json")
    bench.set_defaults(run=_bench_experiment)


def _bench_experiment(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-experiment")
    from app.assembly import load_program_setting
    from harness.bench.experiment import render_markdown, run_experiment_benchmark, targets_met

    if not 0.0 < args.loss < 1.0:
        raise SettingsError(f"--loss must be within 0..1 (a share of users), not {args.loss}")
    found = run_experiment_benchmark(
        settings,
        load_program_setting(args.program or settings.program),
        seeds=tuple(args.seeds),
        events=args.events,
        users=args.users,
        days=args.days,
        holdout=args.holdout,
        say=print,
        loss_users=args.loss_users,
        loss_seeds=tuple(args.loss_seeds),
        loss=args.loss,
    )
    title = "An experiment on the closed loop (`rewardstream bench-experiment`)"
    _publish_report(args, found, render_markdown(found), title)
    return 0 if targets_met(found) else 1


def _bench_learning(settings: Settings, args: argparse.Namespace) -> int:
    _harness("bench-learning")
    from app.assembly import load_program_setting
    from harness.bench.learning import Loop, run_benchmark, targets, targets_markdown

    program = load_program_setting(args.program or settings.program)
    if not 0.0 <= args.members <= 1.0:
        raise SettingsError("--members must be within 0..1")
    from harness.simulation.closed_loop import WORLDS

    if args.world not in WORLDS:
        raise SettingsError(f"--world must be one of {', '.join(WORLDS)}, not {args.world!r}")
    if any(k < 1 for k in args.blind_oracles):
        raise SettingsError("--blind-oracles takes event counts of 1 or more")
    loop = Loop(
        events=args.events,
        users=args.users,
        seed=args.seed,
        days=args.days,
        members=args.members,
        world=args.world,
    )
    report = run_benchmark(program, loop, blind_oracles=tuple(dict.fromkeys(args.blind_oracles)))
    title = "Learning quality (`rewardstream bench-learning`)"
    _publish_report(args, report, targets_markdown(report), title)
    met = all(found for _, _, found in targets(report))
    clean = not any(p["limit_violations"] for p in report["policies"].values())
    return 0 if met and clean else 1


# ---------------------------------------------------------------- simulate and demo


def _add_simulate(commands: Any) -> None:
    simulate = commands.add_parser("simulate", help="realistic synthetic users and events")
    simulate.add_argument("--rate", type=float, default=200.0, help="events per second")
    size = simulate.add_mutually_exclusive_group()
    size.add_argument("--events", type=int, help="how many events (default: rate x duration)")
    size.add_argument("--duration", type=float, default=30.0, help="seconds of traffic")
    simulate.add_argument("--users", type=int, default=1_000)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument(
        "--invalid-ratio",
        type=float,
        default=0.0,
        help="share of deliberately malformed messages, 0..1",
    )
    simulate.add_argument("--out", help="write JSONL to this file (- for stdout) instead of Kafka")
    simulate.add_argument(
        "--closed-loop",
        action="store_true",
        help="users answer the decisions they get (redeem, dismiss, ignore) through Kafka",
    )
    simulate.add_argument(
        "--days", type=float, default=7.0, help="with --closed-loop: simulated days the run spans"
    )
    simulate.add_argument(
        "--in-process",
        action="store_true",
        help="with --closed-loop: run the engine here, no broker (as fast as it goes)",
    )
    simulate.add_argument(
        "--decisions-out",
        help="with --closed-loop --in-process --out: the decisions too, JSONL (a log to "
        "try rewardstream evaluate on)",
    )
    simulate.set_defaults(run=_simulate)


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    _harness("simulate")
    from app.assembly import load_program_setting
    from app.kafkaio import event_routes
    from harness.simulation import EventSimulator, SimulatorConfig
    from harness.simulation.live import stream_to_kafka, write_jsonl

    if not 0.0 <= args.invalid_ratio <= 1.0 or args.rate <= 0:
        raise SettingsError("--invalid-ratio must be within 0..1 and --rate above 0")
    total = args.events if args.events is not None else int(args.rate * args.duration)
    if args.closed_loop:
        return _simulate_closed_loop(settings, args, total)
    simulator = EventSimulator(
        SimulatorConfig(
            users=args.users,
            seed=args.seed,
            start_ms=SystemClock().now_ms(),
            events_per_second=args.rate,
            invalid_ratio=args.invalid_ratio,
            program=load_program_setting(settings.program).id,
        )
    )
    if args.out == "-":
        write_jsonl(sys.stdout.buffer, simulator, total=total)
    elif args.out:
        with open(args.out, "wb") as handle:
            write_jsonl(handle, simulator, total=total)
    else:
        sent = asyncio.run(
            stream_to_kafka(
                settings.bootstrap_servers,
                settings.topic_events,
                simulator,
                rate=args.rate,
                total=total,
                routes=event_routes(settings),
            )
        )
        print(f"Produced {sent} events to {settings.topic_events}.", file=sys.stderr)
    return 0


def _simulate_logged(settings: Settings, args: argparse.Namespace, total: int, program: Any) -> int:
    """The closed loop through the replay path, its events (answers included) written to
    ``--out`` and its decisions to ``--decisions-out``: what a running program leaves."""
    from harness.simulation.logged import logged_closed_loop

    run = logged_closed_loop(
        program,
        events=total,
        users=args.users,
        seed=settings.seed,
        simulator_seed=args.seed,
        days=args.days,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )
    Path(args.out).write_bytes(b"".join(line + b"\n" for line in run.lines))
    if args.decisions_out:
        Path(args.decisions_out).write_bytes(
            b"".join(orjson.dumps(d) + b"\n" for d in run.decisions)
        )
    granted = sum(d["status"] == "granted" for d in run.decisions)
    print(
        f"Wrote {len(run.lines):,} events ({args.out}) and {len(run.decisions):,} decisions, "
        f"{granted:,} granted (engine seed {settings.seed}, {settings.partitions} partitions: "
        "give rewardstream evaluate the same)."
    )
    return 0


def _simulate_closed_loop(settings: Settings, args: argparse.Namespace, total: int) -> int:
    from app.assembly import load_program_setting
    from app.kafkaio import event_routes
    from harness.simulation.closed_loop import ClosedLoopSimulator
    from harness.simulation.live import closed_loop_on_kafka

    program = load_program_setting(settings.program)
    if args.in_process and args.out:
        return _simulate_logged(settings, args, total, program)
    if args.in_process:
        from harness.bench.learning import Loop, run_policy

        loop = Loop(events=total, users=args.users, seed=args.seed, days=args.days)
        stats, problems = run_policy("engine", program, loop)
        _print_loop_summary(stats)
        if problems:
            print("Limits broken: " + "; ".join(problems), file=sys.stderr)
        return 1 if problems else 0
    simulator = ClosedLoopSimulator(
        users=args.users,
        seed=args.seed,
        # The simulated days end now: the worker dead-letters events stamped far ahead.
        start_ms=SystemClock().now_ms() - int(args.days * 86_400_000),
        days=args.days,
    )
    stats = asyncio.run(
        closed_loop_on_kafka(
            settings.bootstrap_servers,
            (settings.topic_events, settings.topic_decisions),
            simulator,
            {r.id: r.kind for r in program.rewards},
            rate=args.rate,
            total=total,
            routes=event_routes(settings),
        )
    )
    _print_loop_summary(stats)
    return 0


def _print_loop_summary(stats: Any) -> None:
    curve = " ".join(f"{r:.2f}" for r in stats.rate_by_fifth())
    print(
        f"Produced {stats.events} events; {stats.decisions} decisions seen, {stats.granted} "
        f"rewards granted, {stats.redeemed} redeemed (rate {stats.redemption_rate:.3f}; "
        f"by fifth of the run: {curve or 'n/a'}).",
        file=sys.stderr,
    )


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="start Kafka and a worker, stream simulated traffic, summarize, stop"
    )
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.add_argument(
        "--no-console",
        action="store_true",
        help="stop after the summary (default: serve the console until Enter)",
    )
    demo.set_defaults(run=_demo)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    _harness("demo")
    from harness.demo import DemoPlan, run_demo

    plan = DemoPlan(duration_s=args.duration, rate=args.rate, console=not args.no_console)
    return run_demo(settings, plan)


def _add_soak(commands: Any) -> None:
    soak = commands.add_parser(
        "soak",
        help="start Kafka and a worker, stream churning users for minutes, check memory is flat",
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="length of the stream")
    soak.add_argument("--rate", type=float, default=250.0, help="events per second")
    soak.add_argument("--ttl-days", type=int, default=1, help="the worker's state time to live")
    soak.add_argument("--out", type=Path, help="write the JSON report here too")
    soak.set_defaults(run=_soak)


def _soak(settings: Settings, args: argparse.Namespace) -> int:
    _harness("soak")
    from harness.soak import SoakPlan, run_soak

    plan = SoakPlan(
        minutes=args.minutes,
        rate=args.rate,
        warmup_minutes=min(2.0, args.minutes / 5),
        state_ttl_days=args.ttl_days,
    )
    return run_soak(settings, plan, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
