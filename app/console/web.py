"""The console's HTTP side: one page, its script and style, and the JSON endpoints the
page polls (docs/console.md lists them).

A small threaded server from the standard library, like the worker's own web port
(:mod:`streams.web`): every request is a dictionary lookup under the console's lock,
so threads are plenty. Three guards, in order: the Host header must name the
address bound to loopback (a page elsewhere cannot rebind a name to it and read the
console); the token, when one is set (always beyond loopback); and a POST must be
JSON with the console's own header, which a form or a simple cross-site request
cannot send.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import orjson

from app.console.labels import VERDICTS, LabelError
from app.console.service import Console, LabelRefusedError, is_loopback

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
# The header a POST must carry: a cross-site form cannot set it, and a cross-site script
# that sets it needs a CORS preflight this server never grants.
REQUEST_HEADER = "X-Console-Request"
MAX_BODY = 4096
QUEUE_KINDS = {"risk": ("risk",), "pending": ("pending",), "all": ("risk", "pending")}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ConsoleServer:
    """Serves the console on ``host:port`` from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        console: Console,
        *,
        token: str = "",
        status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        handler = _handler(console, token=token, status=status, loopback=is_loopback(host))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> ConsoleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(
    console: Console, *, token: str, status: Callable[[], dict[str, Any]], loopback: bool
) -> type[BaseHTTPRequestHandler]:
    class Pages(BaseHTTPRequestHandler):
        analyst = ""

        def do_GET(self) -> None:  # the name http.server calls
            if not self._allowed():
                return
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            if path in STATIC:
                name, content_type = STATIC[path]
                body = resources.files("app.console").joinpath("static", name).read_bytes()
                self._send(200, body, content_type)
            elif path == "/api/status":
                self._json(200, {**status(), "users": len(console.index)})
            elif path.startswith("/api/users/"):
                user_id = urllib.parse.unquote(path.removeprefix("/api/users/"))
                found = console.user(user_id)
                if found is None:
                    self._json(404, {"error": f"no decisions of {user_id!r} in the console"})
                else:
                    self._json(200, found)
            elif path == "/api/queue":
                kind = urllib.parse.parse_qs(url.query).get("kind", ["all"])[0]
                if kind not in QUEUE_KINDS:
                    self._json(400, {"error": f"kind is one of {sorted(QUEUE_KINDS)}"})
                else:
                    self._json(200, console.queue(QUEUE_KINDS[kind]))
            elif path == "/api/program":
                self._json(200, console.program())
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # the name http.server calls
            if not self._allowed():
                return
            path = urllib.parse.urlsplit(self.path).path
            held = path.removeprefix("/api/holds/").removesuffix("/label")
            if not (path.startswith("/api/holds/") and path.endswith("/label") and held):
                self._json(404, {"error": "not found"})
                return
            body = self._body()
            if body is None:
                return
            try:
                event_id = console.label(
                    str(body["user_id"]),
                    held,
                    VERDICTS.get(str(body["action"]), ""),
                    self.analyst or str(body.get("analyst") or "console"),
                )
            except (KeyError, LabelError) as error:
                self._json(400, {"error": f"a label needs user_id and action: {error}"})
            except LabelRefusedError as error:
                self._json(409, {"error": str(error)})
            except Exception as error:  # Kafka unreachable: the analyst may try again
                log.warning("console.label_failed hold=%s error=%s", held, error)
                self._json(503, {"error": f"the label was not sent: {error}"})
            else:
                self._json(202, {"event_id": event_id, "held_decision_id": held})

        def _body(self) -> dict[str, Any] | None:
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json" or self.headers.get(REQUEST_HEADER) != "1":
                self._json(403, {"error": f"send JSON with the {REQUEST_HEADER}: 1 header"})
                return None
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._json(400, {"error": f"a body of 1 to {MAX_BODY} bytes"})
                return None
            try:
                body = orjson.loads(self.rfile.read(length))
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                self._json(400, {"error": "the body is a JSON object"})
                return None
            return body

        def _allowed(self) -> bool:
            if loopback and _host_name(self.headers.get("Host", "")) not in LOOPBACK_NAMES:
                self._json(421, {"error": "this console answers on its loopback address only"})
                return False
            if not token:
                return True
            analyst = _authenticated(self.headers.get("Authorization", ""), token)
            if analyst is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="rewardstream console"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            self.analyst = analyst
            return True

        def _json(self, status_code: int, body: dict[str, Any]) -> None:
            self._send(status_code, orjson.dumps(body), "application/json")

        def _send(self, status_code: int, body: bytes, content_type: str) -> None:
            self.send_response(status_code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "default-src 'self'")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the page polls every few seconds; labels are logged where they are sent

    return Pages


def _host_name(host: str) -> str:
    """The name in a Host header, without its port (``[::1]:6070`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _authenticated(header: str, token: str) -> str | None:
    """Who is asking, if ``header`` carries the token: ``Bearer <token>`` (as "token") or
    HTTP basic auth with the token as password (as its user name); else None."""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        matches = hmac.compare_digest(credentials.strip().encode(), token.encode())
        return "token" if matches else None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    if not hmac.compare_digest(password.encode(), token.encode()):
        return None
    return user or "analyst"
