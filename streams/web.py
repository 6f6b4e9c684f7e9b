"""The worker's web port: ``/metrics`` for Prometheus, ``/health`` and ``/ready`` for probes.

A small threaded server from the standard library: the pages only read a
Prometheus registry (thread-safe) and a readiness function, so they answer even
while the event loop is busy with a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

PAGES = ("/metrics", "/health", "/ready")


class WebServer:
    """Serves the three pages on ``host:port`` from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        problems: Callable[[], Sequence[str]],
    ) -> None:
        """``problems`` says why the worker is not ready (empty: it is); /ready answers 503
        with them in the body, so a probe's log and an operator see the cause."""
        handler = _handler(registry, problems)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> WebServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(
    registry: CollectorRegistry, problems: Callable[[], Sequence[str]]
) -> type[BaseHTTPRequestHandler]:
    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/ready":
                found = list(problems())
                if found:
                    self._json(503, {"status": "not ready", "problems": found})
                else:
                    self._json(200, {"status": "ready"})
            else:
                self._json(404, {"status": "not found", "pages": list(PAGES)})

        def _json(self, status: int, body: dict[str, object]) -> None:
            self._send(status, orjson.dumps(body), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the worker's own log

    return Pages
