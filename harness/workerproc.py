"""Run the worker as a child process: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from harness import localkafka

# The gauge of records not handled yet, per input partition (app.metrics).
LAG_GAUGE = "rewardstream_consumer_lag_records"


class WorkerError(RuntimeError):
    """The worker exited or did not become ready."""


class WorkerProcess:
    """One ``rewardstream worker`` child with its own settings and log file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.env()}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until ``/ready`` answers 200; raise with the log's tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise WorkerError(f"the worker exited early:\n{self.log_tail()}")
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.25)
        raise WorkerError(f"the worker was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path on the worker's web port: (status, body), or (0, b"") if unreachable."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code), bytes(error.read())
        except (urllib.error.URLError, OSError):
            return 0, b""

    def lag(self) -> int | None:
        """Records of its inputs the worker has not handled yet, summed from its
        ``consumer_lag_records`` gauges (refreshed about once a second); None if it does
        not answer."""
        status, body = self.get("/metrics")
        if status != 200:
            return None
        return sum(
            int(sample.value)
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == LAG_GAUGE
        )

    def wait_caught_up(self, timeout_s: float = 120.0) -> None:
        """Block until the worker has handled everything on its inputs, in two readings a
        gauge refresh apart: the last decision of a backlog readable does not mean the
        worker is idle (another stage may still be working through it)."""
        deadline = time.monotonic() + timeout_s
        idle_readings = 0
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise WorkerError(f"the worker exited:\n{self.log_tail()}")
            idle_readings = idle_readings + 1 if self.lag() == 0 else 0
            if idle_readings >= 2:
                return
            time.sleep(1.1)
        raise WorkerError(f"the worker did not catch up within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop gracefully (SIGTERM), forcefully after ``timeout_s``; return the exit code."""
        return stop_process(self.process, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash the reliability tests inject."""
        if self.process is not None:
            kill_process(self.process)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM ``process``, SIGKILL it after ``timeout_s``; its exit code (None: never run)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_process(process)
    return process.returncode


def kill_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


@contextlib.contextmanager
def own_broker(settings: Settings, name: str) -> Iterator[Settings]:
    """A local broker of its own, started empty under ``data_dir/<name>/kafka``, and the
    settings pointed at it (its plain listener, a free web port); stopped on exit.

    What the demo, the soak and the benchmark each run on.
    """
    home = settings.data_dir / name
    shutil.rmtree(home, ignore_errors=True)  # every run starts from an empty broker
    broker = localkafka.start(
        home / "kafka",
        cache_dir=settings.cache_dir,
        version=settings.kafka_version,
        port=0,
        heap=settings.kafka_heap,
    )
    try:
        yield dataclasses.replace(
            settings,
            bootstrap_servers=broker.bootstrap_servers,
            security_protocol="PLAINTEXT",  # our broker's listener, whatever the env says
            data_dir=home,
            web_port=localkafka.free_port(),
        )
    finally:
        localkafka.stop(home / "kafka")
