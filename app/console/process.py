"""Start and stop a whole console: reader, index and web server (the command and the demo)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.console.reader import ConsoleReader
from app.console.service import Console, check_exposure
from app.console.web import ConsoleServer
from app.settings import Settings


@dataclass(frozen=True)
class RunningConsole:
    console: Console
    reader: ConsoleReader
    server: ConsoleServer
    url: str

    def status(self) -> dict[str, Any]:
        return {
            "caught_up": self.reader.caught_up,
            "records_read": self.reader.records,
            "waiting_for_topics": self.reader.waiting_for,
            "reader_error": self.reader.error,
        }


@contextlib.contextmanager
def open_console(settings: Settings) -> Iterator[RunningConsole]:
    """A console on ``console_host:console_port`` (port 0: a free one), reading the engine's
    topics, until the block ends."""
    check_exposure(settings)
    console = Console(settings)
    reader = ConsoleReader(
        settings, console.topics.all(), console.take, labels_topic=settings.topic_fraud_labels
    )
    console.send = reader.send_label
    holder: dict[str, RunningConsole] = {}
    server = ConsoleServer(
        settings.console_host,
        settings.console_port,
        console,
        token=settings.console_token,
        status=lambda: holder["running"].status(),
    )
    host = settings.console_host
    shown = f"[{host}]" if ":" in host else host
    running = RunningConsole(console, reader, server, f"http://{shown}:{server.port}/")
    holder["running"] = running
    reader.start()
    server.start()
    try:
        yield running
    finally:
        server.stop()
        reader.stop()


def run_console(settings: Settings) -> int:
    """`rewardstream console`: serve until SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with open_console(settings) as running:
        print(f"rewardstream console on {running.url} (Ctrl-C stops it)", flush=True)
        stop.wait()
    return 0
