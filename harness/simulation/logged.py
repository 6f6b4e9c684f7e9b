"""A closed loop run through the replay path, kept as the log a live program would leave.

The learning benchmark drives the engine directly; offline evaluation needs what a
team has instead: the events that reached the engine, answers included, in the order
they came (`rewardstream evaluate --in`), and the decisions it published. Here the
simulated users' events go one by one through :func:`app.replay.replay` (the
worker's own stages, no broker); each granted reward is answered by its user through
the simulator, and the answer joins the stream when it is due. Replaying the returned
lines with the same program, seed and partition count makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from app.contract.records import Decision
from app.decisioning.engine import Engine
from app.decisioning.policy import Policy
from app.programs import Program
from app.replay import replay
from harness.simulation.closed_loop import ClosedLoopSimulator
from harness.simulation.events import START_MS


@dataclass(frozen=True)
class LoggedRun:
    """What the run left: the events as fed (JSON lines) and the decisions published."""

    lines: list[bytes]
    decisions: list[dict[str, object]]


def logged_closed_loop(
    program: Program,
    *,
    events: int,
    users: int,
    seed: int,
    days: float,
    partitions: int,
    max_event_bytes: int,
    state_ttl_ms: int | None,
    simulator_seed: int | None = None,
    policy: Policy | None = None,
    simulator: ClosedLoopSimulator | None = None,
    every_answer: bool = False,
) -> LoggedRun:
    """Run ``program`` (with ``policy`` instead of its own, if given) over ``events`` of a
    closed loop of ``users`` simulated users; ``seed`` is the engine's exploration seed,
    ``simulator_seed`` the users' (default: the same). ``every_answer``: after the last
    event, the answers still due come too (otherwise the grants of the run's last days
    look unanswered)."""
    if simulator is None:
        simulator = ClosedLoopSimulator(
            users=users,
            seed=seed if simulator_seed is None else simulator_seed,
            start_ms=START_MS,
            days=days,
        )
    kinds = {r.id: r.kind for r in program.rewards}
    engine = Engine(program, seed=seed, partitions=partitions, policy=policy)
    lines: list[bytes] = []

    def fed() -> Iterator[bytes]:
        for event in simulator.events(events):
            line = orjson.dumps(event.to_document())
            lines.append(line)
            yield line
        while every_answer and simulator.answers:
            line = orjson.dumps(simulator.next_answer().to_document())
            lines.append(line)
            yield line

    decisions: list[dict[str, object]] = []
    for output in replay(
        engine,
        fed(),
        source_name="closed-loop",
        max_event_bytes=max_event_bytes,
        state_ttl_ms=state_ttl_ms,
    ):
        document = orjson.loads(output)
        if document.get("kind") != "decision":
            continue
        decisions.append(document)
        if document["status"] == "granted" and document["action"] is not None:
            # The answer is scheduled before the next event is pulled from fed().
            simulator.answer(_decision(document), kinds[str(document["action"])])
    return LoggedRun(lines, decisions)


def _decision(document: dict[str, object]) -> Decision:
    fields = {name: document[name] for name in Decision.__struct_fields__ if name in document}
    fields["reasons"] = tuple(fields.get("reasons", ()))  # type: ignore[arg-type]
    return Decision(**fields)  # type: ignore[arg-type]
