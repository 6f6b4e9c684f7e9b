"""Run `rewardstream console` as a child process, for the browser tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from app.settings import Settings
from harness.workerproc import stop_process


class ConsoleProcessError(RuntimeError):
    """The console exited or never caught up with the engine's topics."""


class ConsoleProcess:
    """One ``rewardstream console`` child with its own settings and log file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.console_host}:{self.settings.console_port}/"

    def start(self) -> ConsoleProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "console"],
                env={**os.environ, **self.settings.env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url + "api/status", timeout=2) as response:
                found: dict[str, Any] = orjson.loads(response.read())
                return found
        except (urllib.error.URLError, OSError):
            return None

    def wait_caught_up(self, timeout_s: float = 90.0) -> None:
        """Block until the console has read its topics to where they ended at its start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ConsoleProcessError(f"the console exited:\n{self.log_tail()}")
            status = self.status()
            if status is not None and status["reader_error"]:
                raise ConsoleProcessError(f"the console's reader stopped: {status}")
            if status is not None and status["caught_up"]:
                return
            time.sleep(0.25)
        raise ConsoleProcessError(
            f"the console did not catch up within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> int | None:
        return stop_process(self.process, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
