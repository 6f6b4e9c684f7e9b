"""Build the engine a process runs from its settings: the one place programs are chosen."""

from __future__ import annotations

from pathlib import Path

from app.decisioning.engine import Engine
from app.programs import Program, load_builtin, load_program
from app.settings import Settings


def load_program_setting(value: str) -> Program:
    """A shipped program by id (``retail-loyalty``), or a YAML file by path."""
    if value.endswith((".yaml", ".yml")) or "/" in value:
        return load_program(Path(value))
    return load_builtin(value)


def build_engine(settings: Settings, *, program: str | None = None) -> Engine:
    return Engine(
        load_program_setting(program or settings.program),
        seed=settings.seed,
        partitions=settings.partitions,
    )


def build_shadow_engine(settings: Settings) -> Engine | None:
    """The shadow program's engine (``settings.shadow_program``), or None without one.
    Same seed and partitions as the live engine; its own models and random draws."""
    if not settings.shadow_program:
        return None
    return build_engine(settings, program=settings.shadow_program)
