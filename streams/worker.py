"""Build the worker and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import time

from prometheus_client import CollectorRegistry

from app.assembly import build_engine, build_shadow_engine
from app.decisioning.engine import Engine
from app.kafkaio import (
    client_options,
    ensure_topics,
    latest_by_key,
    message_limits,
    topic_requests,
)
from app.metrics import Metrics
from app.models.checkpoint import checkpoint_key, encode, learned_through, restore_into
from app.pipeline import Pipeline
from app.replay import kafka_partitioner
from app.settings import Settings
from streams.clients import KafkaClients, batch_bytes_within
from streams.runtime import Runtime
from streams.web import WebServer
from topologies import build

log = logging.getLogger(__name__)

# The cycle collector's youngest generation is collected after this many allocations of
# tracked objects (CPython's default is 700), and so the older ones ten and a hundred
# times less often. The engine's records are not tracked (app.contract.records), but a
# busy worker still holds some 170,000 tracked objects (modules, functions, queues, held
# learning steps): at 2,900 events/s, p50 / p99 went from 385-490 / 855-1,122 ms to
# 206-227 / 427-516 ms with this and the freeze below (python -m harness.bench.steady,
# 2 alternated rounds, docs/decisions.md §30).
GC_YOUNG = 10_000


class Checkpointer:
    """Saves what the models learned to the compacted checkpoint topic, when it changed."""

    def __init__(self, engine: Engine, runner: Runtime, topic: str) -> None:
        self.engine = engine
        self.runner = runner
        self.topic = topic
        self.saved_at: int | None = None

    def _updates(self) -> int:
        return self.engine.models.updates + sum(self.engine.risk_models.label_counts.values())

    async def save(self) -> bool:
        updates = self._updates()
        if updates == self.saved_at:
            return False
        program = self.engine.program
        value = encode(
            program.id,
            program.source_sha256,
            self.engine.models,
            self.engine.risk_models,
            self.runner.learned_through(),  # read with the models: nothing runs between
        )
        await self.runner.side_producer.send_and_wait(
            self.topic, value, key=checkpoint_key(program.id)
        )
        self.saved_at = updates
        log.info("checkpoint.saved updates=%d", updates)
        return True

    async def every(self, interval_s: float, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval_s)
            try:
                await self.save()
            except Exception as error:  # the next tick tries again
                log.warning("checkpoint.failed error=%s", type(error).__name__)


class RepeatFilter(logging.Filter):
    """Lets the same client message through once per ``every_s``, then says how many
    copies it held back: while a broker is down, every client retries many times a
    second, and a flood of identical lines would bury what matters."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        shown_at, held = self.last.get(key, (-self.every_s, 0))
        if now - shown_at < self.every_s:
            self.last[key] = (shown_at, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} ({held} similar held back)"
        self.last[key] = (now, 0)
        return True


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())


async def serve(
    settings: Settings,
    engine: Engine,
    registry: CollectorRegistry,
    shadow: Engine | None = None,
) -> None:
    """Create missing topics, restore the models (the live program's, and the shadow
    program's if there is one), then run the stages until a stop signal."""
    client = client_options(settings)
    created = await ensure_topics(
        settings.bootstrap_servers, topic_requests(settings), client=client
    )
    log.info("topics.ready %s", ", ".join(f"{k}={v}" for k, v in created.items()))
    limits = await message_limits(settings.bootstrap_servers, list(created), client=client)
    batch_bytes = batch_bytes_within(settings.produce_batch_bytes, limits)
    if batch_bytes < settings.produce_batch_bytes:
        smallest = min(limits, key=limits.__getitem__)
        log.warning(
            "producer.batch_lowered bytes=%d topic=%s max_message_bytes=%d",
            batch_bytes,
            smallest,
            limits[smallest],
        )
    learned: dict[str, int] = {}  # the inputs whose learning the live models hold
    for models_of in (engine, shadow) if shadow is not None else (engine,):
        program = models_of.program.id
        saved = await latest_by_key(
            settings.bootstrap_servers,
            settings.topic_model_checkpoints,
            checkpoint_key(program),
            client=client,
        )
        restored = restore_into(
            models_of.models, saved, program_id=program, risk=models_of.risk_models
        )
        if restored and models_of is engine:
            learned = learned_through(saved, program_id=program)

    metrics = Metrics(registry)
    pipeline = Pipeline(
        engine,
        metrics,
        max_event_bytes=settings.max_event_bytes,
        partitioner=kafka_partitioner(settings.partitions),
        state_ttl_ms=settings.state_ttl_ms,
        max_ahead_ms=settings.max_event_ahead_ms,
        shadow=shadow,
        receipt_key=settings.erasure_receipt_key or settings.app_id,
        erasure_bound_ms=settings.erasure_bound_ms,
    )
    if not settings.worker_id:
        # Unique among live workers; a stable one (REWARDSTREAM_WORKER_ID) lets a restart
        # fence its predecessor's producer at once (app.settings).
        settings = dataclasses.replace(settings, worker_id=f"{socket.gethostname()}-{os.getpid()}")
    topology, config, hooks = build(settings, pipeline)
    clients = KafkaClients(
        settings.bootstrap_servers,
        client,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        linger_ms=settings.linger_ms,
        batch_bytes=batch_bytes,
    )
    runner = Runtime(config, topology, clients, metrics, hooks=hooks)
    runner.resume_from(learned)
    web = WebServer(settings.web_host, settings.web_port, registry, runner.problems).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    checkpointers = [
        Checkpointer(learner, runner, settings.topic_model_checkpoints)
        for learner in ((engine, shadow) if shadow is not None else (engine,))
    ]
    await runner.start()
    settle_collector()
    log.info(
        "worker.started guarantee=%s shadow=%s",
        settings.processing_guarantee,
        shadow.program.id if shadow is not None else "none",
    )
    saving = [
        asyncio.create_task(checkpointer.every(settings.checkpoint_interval_s, stopping))
        for checkpointer in checkpointers
    ]
    try:
        await runner.run(stopping)
    finally:
        stopping.set()
        await asyncio.gather(*saving)
        # What was handled is committed first, and its learning taken, so the last
        # checkpoint holds all of it.
        with contextlib.suppress(Exception):
            await runner.commit_handled()
        for checkpointer in checkpointers:
            with contextlib.suppress(Exception):
                await checkpointer.save()
        await runner.stop()
        web.stop()
        log.info("worker.stopped batches=%d", runner.batches_committed)


def settle_collector() -> None:
    """Leave what start-up built (modules, functions, the restored tables' objects) out of
    every later collection, and collect less often (see :data:`GC_YOUNG`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def run_worker(settings: Settings) -> None:
    """Check the program (a bad one fails here, before Kafka is touched), then serve."""
    configure_logging(settings)
    engine = build_engine(settings)
    shadow = build_shadow_engine(settings)
    if shadow is not None and shadow.program.id == engine.program.id:
        raise SystemExit(
            f"REWARDSTREAM_SHADOW_PROGRAM: the shadow program has the live program's id "
            f"{engine.program.id!r}; give it an id of its own"
        )
    asyncio.run(serve(settings, engine, CollectorRegistry(), shadow))
