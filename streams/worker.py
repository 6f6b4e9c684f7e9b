"""Build the worker's Faust app and run it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.assembly import build_engine
from app.decisioning.engine import Engine
from app.kafkaio import ensure_topics, latest_by_key, topic_requests
from app.metrics import Metrics
from app.models.checkpoint import checkpoint_key, restore_into
from app.pipeline import Pipeline
from app.settings import Settings
from streams.agents import register_agents, register_checkpoints
from topologies import build

log = logging.getLogger(__name__)


def build_worker_app(
    settings: Settings, registry: CollectorRegistry | None = None, engine: Engine | None = None
) -> faust.App:
    """The Faust app of one worker: topology, agents, checkpoints and the web pages."""
    registry = registry or CollectorRegistry()
    engine = engine or build_engine(settings)
    topology = build(settings)
    pipeline = Pipeline(engine, Metrics(registry), max_event_bytes=settings.max_event_bytes)
    register_agents(topology, pipeline)
    register_checkpoints(topology, engine, interval_s=settings.checkpoint_interval_s)
    _add_pages(topology.app, registry)
    return topology.app


def is_ready(app: faust.App) -> bool:
    """Ready once partitions are assigned and table state is recovered, not mid-rebalance."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]  # not on the interface
    return bool(recovery.completed.is_set()) and not app.rebalancing


def _add_pages(app: faust.App, registry: CollectorRegistry) -> None:
    @app.page("/metrics")
    async def metrics(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        body = generate_latest(registry)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        if is_ready(app):
            return web.json({"status": "ready"})
        return web.json({"status": "starting"}, status=503)


def run_worker(settings: Settings) -> None:
    """Check the program, create missing topics, restore the models, then run until stopped."""
    engine = build_engine(settings)  # a bad program fails here, before Kafka is touched
    app = build_worker_app(settings, engine=engine)
    created = asyncio.run(ensure_topics(settings.bootstrap_servers, topic_requests(settings)))
    log.info("topics.ready %s", ", ".join(f"{k}={v}" for k, v in created.items()))
    program = engine.program.id
    saved = asyncio.run(
        latest_by_key(
            settings.bootstrap_servers, settings.topic_model_checkpoints, checkpoint_key(program)
        )
    )
    restore_into(engine.models, saved, program_id=program, risk=engine.risk_models)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
