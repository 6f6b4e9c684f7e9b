"""`rewardstream demo`: a broker, a worker and simulated traffic, then a readable summary.

Everything the demo starts, it stops, even when interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import statistics
from collections import Counter
from collections.abc import Set as AbstractSet
from typing import Any

import orjson

from app.assembly import load_program_setting
from app.clock import SystemClock
from app.console.process import open_console
from app.kafkaio import ensure_topics, event_routes, produce, read, topic_requests
from app.render import render
from app.settings import Settings
from harness.challenger import write_challenger
from harness.simulation import EventSimulator, SimulatorConfig
from harness.simulation.attacks import AttackConfig, attacker_accounts, generate
from harness.simulation.closed_loop import ClosedLoopSimulator, LoopStats
from harness.simulation.live import closed_loop_on_kafka
from harness.workerproc import WorkerProcess, own_broker


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    duration_s: float = 20.0
    rate: float = 200.0
    users: int = 500
    days: float = 14.0  # simulated time the run spans, so users answer and the engine learns
    invalid_ratio: float = 0.02
    seed: int = 7
    # End with `rewardstream console` on the demo's topics until Enter (off for CI).
    console: bool = True


def run_demo(settings: Settings, plan: DemoPlan) -> int:
    """Run the demo end to end; return the process exit code."""
    say(
        f"Starting Apache Kafka {settings.kafka_version} "
        "(the first run fetches it from Maven Central)..."
    )
    with own_broker(settings, "demo") as settings:
        # A challenger decides beside the live program and grants nothing (app/shadow.py).
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        challenger = write_challenger(settings.program, settings.data_dir)
        settings = dataclasses.replace(settings, shadow_program=str(challenger))
        worker = WorkerProcess(settings, settings.data_dir / "worker.log")
        try:
            say(
                f"Kafka is up on {settings.bootstrap_servers}. "
                "Creating topics and starting the worker..."
            )
            asyncio.run(ensure_topics(settings.bootstrap_servers, topic_requests(settings)))
            worker.start().wait_ready()
            code, example_user = asyncio.run(_traffic_and_summary(settings, plan))
            if plan.console:
                console_until_enter(settings, example_user)
            return code
        finally:
            say("Stopping the worker and the broker...")
            worker.stop()


def console_until_enter(settings: Settings, example_user: str | None) -> None:
    """Serve the console on the demo's topics until Enter (or the end of standard input)."""
    if not _port_free(settings.console_host, settings.console_port):
        settings = dataclasses.replace(settings, console_port=0)  # any free one will do
    with open_console(settings) as running:
        say(f"\nThe console is up on {running.url}")
        if example_user is not None:
            say(f"  a user with a fraud alert: {running.url}#/users/{example_user}")
        say(f"  the review queue: {running.url}#/queue    the program: {running.url}#/program")
        say("Press Enter to stop the console, the worker and the broker.")
        with contextlib.suppress(EOFError):
            input()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def _traffic_and_summary(settings: Settings, plan: DemoPlan) -> tuple[int, str | None]:
    """The demo's traffic and its summary: the exit code, and a user worth looking up."""
    program = load_program_setting(settings.program)
    total = int(plan.duration_s * plan.rate)
    users = ClosedLoopSimulator(
        users=plan.users,
        seed=plan.seed,
        # The simulated days end now: the worker dead-letters events stamped far ahead.
        start_ms=SystemClock().now_ms() - int(plan.days * 86_400_000),
        days=plan.days,
    )
    broken = EventSimulator(
        SimulatorConfig(users=50, seed=plan.seed, invalid_ratio=1.0, program=program.id)
    )
    say(
        f"Streaming {total} events of {plan.users} simulated users, {plan.days:g} simulated days "
        f"in {plan.duration_s:.0f} s; users answer the rewards they get, and "
        f"{plan.invalid_ratio:.0%} more messages are malformed on purpose..."
    )
    start_ms = users.start_ms
    attacks = [
        event
        for event in generate(
            AttackConfig(
                seed=plan.seed,
                start_ms=start_ms,
                duration_ms=int(plan.days * 86_400_000),
                normal_users=1,
                normal_events=0,
                scenarios=DEMO_ATTACKS,
                intensity=0.5,
            )
        )
        if event.scenario is not None
    ]
    attackers = set().union(*attacker_accounts(attacks).values())
    say(
        f"Then {len(attacks)} attack events from {len(attackers)} accounts over the same days "
        "(a device farm, forged redemptions, a bot's burst of tiny purchases)..."
    )
    loop = await closed_loop_on_kafka(
        settings.bootstrap_servers,
        (settings.topic_events, settings.topic_decisions),
        users,
        {r.id: r.kind for r in program.rewards},
        rate=plan.rate,
        total=total,
        malformed=iter(broken),
        malformed_ratio=plan.invalid_ratio,
        routes=event_routes(settings),
    )
    # After the users' traffic, so that the latency figures describe the users' events.
    await produce(
        settings.bootstrap_servers,
        settings.topic_events,
        [orjson.dumps(event.document) for event in attacks],
        routes=event_routes(settings),
    )
    outputs = [
        settings.topic_decisions,
        settings.topic_fraud_alerts,
        settings.topic_dead_letter,
        settings.topic_shadow_decisions,
    ]
    records = [
        (received.document(), received.timestamp_ms)
        async for received in read(settings.bootstrap_servers, outputs, idle_timeout_s=5.0)
    ]
    produced_at = await _produce_times(settings)
    produced = loop.events + len(attacks)
    print_summary(
        records, produced=produced, produced_at=produced_at, loop=loop, attackers=attackers
    )
    decided = sum(1 for r, _ in records if r.get("kind") in ("decision", "dead_letter"))
    alerted = sorted(str(r["user_id"]) for r, _ in records if r.get("kind") == "fraud_alert")
    return (0 if decided == produced else 1), (alerted[0] if alerted else None)


async def _produce_times(settings: Settings) -> dict[str, int]:
    """event_id -> when the event was written to Kafka (its record timestamp)."""
    times: dict[str, int] = {}
    async for received in read(
        settings.bootstrap_servers, [settings.topic_events], idle_timeout_s=3.0
    ):
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            times[str(orjson.loads(received.value)["event_id"])] = received.timestamp_ms
    return times


def print_summary(
    records: list[tuple[dict[str, Any], int]],
    *,
    produced: int,
    produced_at: dict[str, int],
    loop: LoopStats,
    attackers: AbstractSet[str] = frozenset(),
) -> None:
    decisions = [r for r, _ in records if r.get("kind") == "decision"]
    alerts = [r for r, _ in records if r.get("kind") == "fraud_alert"]
    dead = [r for r, _ in records if r.get("kind") == "dead_letter"]
    latencies = [
        at - produced_at[r["event_id"]]
        for r, at in records
        if r.get("kind") == "decision" and r["event_id"] in produced_at
    ]
    say("")
    say(
        f"Messages produced: {produced}   decisions: {len(decisions)}   "
        f"fraud alerts: {len(alerts)}   dead letters: {len(dead)}"
    )
    statuses = Counter(d["status"] for d in decisions)
    say("Decisions by status: " + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    granted = [d for d in decisions if d["status"] == "granted"]
    actions = Counter(d["action"] for d in granted)
    cost = sum(d["cost"] for d in granted)
    say(
        "Rewards granted: "
        + (", ".join(f"{k} {v}" for k, v in actions.most_common()) or "none")
        + f"   total cost {cost:,.2f}"
    )
    curve = " ".join(f"{r:.2f}" for r in loop.rate_by_fifth()) or "n/a"
    say(
        f"Users redeemed {loop.redeemed} of {loop.granted} rewards (rate "
        f"{loop.redemption_rate:.2f}; by fifth of the run, as the engine learns: {curve})"
    )
    if latencies:
        p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
        say(f"Event produced to decision published: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    reasons = Counter(d["reason"] for d in dead)
    say(
        "Dead letters by reason: "
        + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none")
    )
    if attackers:
        named = {u for a in alerts for u in (a["user_id"], *a["related_users"])} & attackers
        taken = sum(d["cost"] for d in granted if d["user_id"] in attackers)
        say(
            f"Attackers: {len(named)} of {len(attackers)} accounts named in fraud alerts; "
            f"rewards granted to them: {taken:,.2f}"
        )
        strongest = max(alerts, key=lambda a: (a["score"], a["alert_id"]), default=None)
        if strongest is not None:
            say("  " + render(strongest))
    shadow = [r for r, _ in records if r.get("kind") == "shadow_decision"]
    if shadow:
        say_shadow(shadow, decisions)
    say("\nA few decisions (one per reward, then a refusal):")
    for record in _one_per_action(granted)[:4] + _refusals(decisions)[:1]:
        say("  " + render(record))
    if dead:
        say("A few dead letters:")
        seen: set[str] = set()
        for record in dead:
            if record["reason"] not in seen:
                seen.add(record["reason"])
                say("  " + render(record))


def say_shadow(shadow: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> None:
    """What the challenger would have done, beside what the live program did."""
    live = {d["event_id"]: d for d in decisions}
    granted = [d for d in shadow if d["status"] == "granted"]
    both = [d for d in shadow if d["event_id"] in live]
    agree = sum(1 for d in both if d["action"] == live[d["event_id"]]["action"])
    actions = Counter(d["action"] for d in granted)
    say(
        f"Shadow program {shadow[0]['program']} (softmax exploration; it grants nothing): "
        f"{len(shadow)} decisions on shadow-decisions, the same reward (or none) as the "
        f"live program on {agree / max(len(both), 1):.0%} of events; it would have granted "
        + (", ".join(f"{k} {v}" for k, v in actions.most_common()) or "nothing")
        + f", cost {sum(d['cost'] for d in granted):,.2f}"
    )


DEMO_ATTACKS = ("account_farm", "forged_redemption", "bot_burst")


def _one_per_action(granted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for record in granted:
        first.setdefault(record["action"], record)
    return list(first.values())


def _refusals(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No-reward decisions on trigger events: the ones with something to explain."""
    explained = ("policy.nothing_eligible", "policy.below_minimum")
    return [d for d in decisions if d["status"] == "none" and d["reasons"][0] in explained]


def _percentile(values: list[int], q: int) -> float:
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def say(text: str) -> None:
    print(text, flush=True)
