"""The agents of the reward topology."""

from __future__ import annotations

from typing import Any

from faust import StreamT

from app.contract.records import SourcePosition
from app.decisioning.engine import Engine
from app.models.checkpoint import checkpoint_key, encode
from app.pipeline import Output, Pipeline, Tables
from topologies import Topology


def register_agents(topology: Topology, pipeline: Pipeline) -> None:
    """Attach the three stages: ``intake`` (events), ``link`` (links), ``decide`` (linked)."""
    outputs = {
        "links": topology.links,
        "linked": topology.linked,
        "decisions": topology.decisions,
        "fraud-alerts": topology.fraud_alerts,
        "dead-letter": topology.dead_letter,
    }
    tables = Tables(users=topology.user_state, ledgers=topology.ledger, links=topology.link_state)

    async def publish(produced: list[Output]) -> None:
        for output in produced:
            # send() only queues the record; delivery is awaited by Faust before it
            # commits the offset, never per event on the hot path.
            await outputs[output.role].send(key=output.key, value=output.value)

    async def intake(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await publish(pipeline.intake(_position(event.message), event.message.value))

    async def link(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            await publish(pipeline.link(tables, message.key, message.value, _position(message)))

    async def decide(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            position = _position(message)
            await publish(pipeline.decide(tables, message.partition, message.value, position))

    topology.app.agent(topology.events, name="intake")(intake)
    topology.app.agent(topology.links, name="link")(link)
    topology.app.agent(topology.linked, name="decide")(decide)


def _position(message: Any) -> SourcePosition:
    return SourcePosition(message.topic, message.partition, message.offset, message.key)


def register_checkpoints(topology: Topology, engine: Engine, *, interval_s: float) -> None:
    """Every ``interval_s``, save what the models learned, if they learned anything new."""
    program = engine.program
    saved_at_updates: list[int] = []

    async def checkpoint() -> None:
        updates = engine.models.updates + sum(engine.risk_models.label_counts.values())
        if saved_at_updates and saved_at_updates[-1] == updates:
            return
        value = encode(program.id, program.source_sha256, engine.models, engine.risk_models)
        await topology.model_checkpoints.send(key=checkpoint_key(program.id), value=value)
        saved_at_updates[:] = [updates]

    topology.app.timer(interval=interval_s)(checkpoint)
