"""Fixtures for tests on the real broker: a worker process per test, and its outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from harness.workerproc import WorkerProcess


@pytest.fixture
def worker(kafka_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A real ``rewardstream worker`` on this test's topics, ready before the test starts."""
    process = WorkerProcess(kafka_settings, tmp_path / "worker.log").start()
    try:
        process.wait_ready(timeout_s=120)
        yield process
    finally:
        process.stop()


def topics_create(settings: Settings, *flags: str) -> tuple[int, str]:
    """`rewardstream topics create [flags]` with ``settings``: its exit code and all it
    printed."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "topics", "create", *flags],
        env={**os.environ, **settings.env()},
        capture_output=True,
        timeout=120,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode()
