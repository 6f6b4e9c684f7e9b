"""The harness's worker child: ``wait_caught_up`` returns only once the worker's lag
gauges read 0 twice in a row, and says why when the worker exits or never catches up.

The "worker" is a real child process and a real HTTP server on loopback that serves the
lag gauge as the worker's /metrics does, with the readings a test scripts.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.settings import Settings
from harness.workerproc import LAG_GAUGE, WorkerError, WorkerProcess


class Metrics:
    """A /metrics endpoint whose lag reads each of ``readings`` in turn, then the last."""

    def __init__(self, readings: list[int]) -> None:
        self.readings = readings
        self.served = 0
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lag = metrics.readings[min(metrics.served, len(metrics.readings) - 1)]
                metrics.served += 1
                # Two input partitions: the lag is their sum.
                body = (
                    f"# TYPE {LAG_GAUGE} gauge\n"
                    f'{LAG_GAUGE}{{topic="events",partition="0"}} {lag}\n'
                    f'{LAG_GAUGE}{{topic="events",partition="1"}} 0\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _worker(metrics: Metrics, process: subprocess.Popen[bytes], tmp_path: Path) -> WorkerProcess:
    settings = dataclasses.replace(Settings(), web_host="127.0.0.1", web_port=metrics.port)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.process = process
    return worker


def test_caught_up_only_after_two_readings_of_no_lag_in_a_row(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    # A 0 between two backlogs is not caught up: another stage may still be at work.
    metrics = Metrics([0, 4, 0, 0, 9])
    try:
        _worker(metrics, child, tmp_path).wait_caught_up(timeout_s=30)
    finally:
        metrics.stop()
    assert metrics.served == 4


def test_a_worker_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    metrics = Metrics([3])
    exited = subprocess.Popen(["true"])
    exited.wait()
    (tmp_path / "worker.log").write_text("worker.failed: the broker went away\n")
    try:
        with pytest.raises(WorkerError, match=r"the worker exited:\n.*the broker went away"):
            _worker(metrics, exited, tmp_path).wait_caught_up(timeout_s=30)
    finally:
        metrics.stop()
    assert metrics.served == 0


def test_a_worker_that_never_catches_up_times_out(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    metrics = Metrics([7])
    try:
        with pytest.raises(WorkerError, match="did not catch up within 2 s"):
            _worker(metrics, child, tmp_path).wait_caught_up(timeout_s=2)
    finally:
        metrics.stop()
    assert metrics.served >= 2
