"""Model checkpoints: what the propensity models learned, as one JSON record per program.

A worker writes its models' state to the compacted ``model-checkpoints`` topic
every ``checkpoint_interval_s`` (when something was learned) and reads the
newest one back at start-up, so a restarted or rescheduled worker goes on from
what was learned instead of from the prior. Each worker learns from the
outcomes of its own partitions; all learn the same thing from different users,
so the newest checkpoint of any worker is a good start for every worker.

The record is plain JSON, never a pickle: reading it back must not be able to
run code, whoever could write to the topic.

It also names the input positions whose learning the models hold (``learned_through``,
``"<topic>/<partition>"`` to the next offset, as the runtime saw its commits
acknowledged): should Kafka abort a commit it had acknowledged, the worker that reads
this checkpoint handles those records again without learning them a second time
(streams.runtime, ``Runtime._note_reverted``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from app.fraud.scoring import RiskModels
from app.models.propensity import PropensityModels

log = logging.getLogger(__name__)
FORMAT = 2  # 2: models standardize their features; format-1 checkpoints are skipped


def checkpoint_key(program_id: str) -> bytes:
    return program_id.encode()


def encode(
    program_id: str,
    program_sha256: str,
    models: PropensityModels,
    risk: RiskModels | None = None,
    learned_through: Mapping[str, int] | None = None,
) -> bytes:
    """The checkpoint record: the propensity models, the fraud model trained by labels,
    and the input positions whose learning they hold."""
    return orjson.dumps(
        {
            "format": FORMAT,
            "program": program_id,
            "program_sha256": program_sha256,
            "state": models.snapshot(),
            "risk": None if risk is None else risk.snapshot(),
            "learned_through": dict(learned_through or {}),
        }
    )


def learned_through(raw: bytes | None, *, program_id: str) -> dict[str, int]:
    """The input positions whose learning a checkpoint holds (none for one without them,
    of another program, or unreadable: then nothing is taken for learned)."""
    try:
        record = orjson.loads(raw or b"")
        if not isinstance(record, dict) or record.get("program") != program_id:
            return {}
        positions = record.get("learned_through") or {}
        return {str(k): int(v) for k, v in positions.items()}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return {}


def restore_into(
    models: PropensityModels,
    raw: bytes | None,
    *,
    program_id: str,
    risk: RiskModels | None = None,
) -> bool:
    """Load a checkpoint into ``models`` (and ``risk``); False, nothing changed, if there is
    none usable."""
    if not raw:
        return False
    try:
        record: dict[str, Any] = orjson.loads(raw)
        if record.get("format") != FORMAT or record.get("program") != program_id:
            log.warning("checkpoint.skipped reason=format_or_program")
            return False
        models.restore(record["state"])
        if risk is not None and record.get("risk"):
            risk.restore(record["risk"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        log.warning("checkpoint.skipped reason=unreadable")
        models.models.clear()
        models.updates = 0
        return False
    log.info("checkpoint.restored updates=%s", models.updates)
    return True
