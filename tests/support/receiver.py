"""A real webhook receiver on loopback, in a thread: scriptable answers, signature checks, waiting.

with Receiver() as hooks:                 # or Receiver(port=p) and .start() later: until then,
    url = hooks.url("/a")                 # connections to it are refused
    hooks.secret("/a", secret)            # verify what arrives at /a with this secret
    hooks.script("/a", 500, 500)          # the next two requests get 500, then the default
    hooks.wait_for(3, path="/a", ok=True) # three accepted deliveries, or AssertionError
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.support.server import free_port


@dataclass
class Received:
    """One request as the receiver saw it, with how it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    verified: bool | None = None
    verify_error: str | None = None
    json: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def type(self) -> str:
        return str((self.json or {}).get("type", ""))

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = (self.json or {}).get("data", {})
        return data


@dataclass
class _Route:
    secret: str | None = None
    script: list[int] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0


class Receiver:
    """A threaded HTTP server that records every webhook request."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self._routes: dict[str, _Route] = {}
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # setup

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _route(self, path: str) -> _Route:
        return self._routes.setdefault(path, _Route())

    def secret(self, path: str, secret: str) -> None:
        """Verify requests to `path` with `secret` (Standard Webhooks)."""
        with self._cond:
            self._route(path).secret = secret

    def script(self, path: str, *statuses: int) -> None:
        """Answer the next requests to `path` with these statuses, in order, then the default."""
        with self._cond:
            self._route(path).script.extend(statuses)

    def answer(self, path: str, status: int = 200, delay: float = 0.0) -> None:
        """The default answer of `path`: a status, after `delay` seconds (a slow receiver)."""
        with self._cond:
            route = self._route(path)
            route.status, route.delay = status, delay

    # life

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path
        with self._cond:
            route = self._route(path)
            status = route.script.pop(0) if route.script else route.status
            delay, secret = route.delay, route.secret
        if delay:
            time.sleep(delay)  # the behaviour under test: a receiver that is slow to answer
        record = Received(path=path, headers=headers, body=body, status=status, at=time.monotonic())
        try:
            record.json = json.loads(body)
        except ValueError:
            record.json = None
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                record.verified = True
            except WebhookVerificationError as exc:
                record.verified, record.verify_error = False, str(exc)
        answer = json.dumps({"received": status < 300}).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)
        handler.wfile.flush()
        with self._cond:
            self.received.append(record)
            self._cond.notify_all()

    # reading

    def requests(
        self, path: str | None = None, ok: bool | None = None, where: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        with self._cond:
            return [
                r
                for r in self.received
                if (path is None or r.path == path)
                and (ok is None or r.ok == ok)
                and (where is None or where(r))
            ]

    def wait_for(
        self,
        count: int,
        timeout: float = 20.0,
        path: str | None = None,
        ok: bool | None = None,
        where: Callable[[Received], bool] | None = None,
    ) -> list[Received]:
        """Block until at least `count` matching requests were answered; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.requests(path, ok, where)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"waited {timeout} s for {count} requests, got {len(found)}: "
                        f"{[(r.path, r.status, r.type) for r in found]}"
                    )
                self._cond.wait(left)
