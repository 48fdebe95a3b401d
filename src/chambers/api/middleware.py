"""Pure ASGI middleware (no buffering, so SSE streams pass through untouched)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chambers.api.errors import envelope
from chambers.core.ids import new_id

access = logging.getLogger("chambers.access")


class RequestLog:
    """Gives each request an id (`X-Request-Id`) and logs one line when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                millis = (time.perf_counter() - started) * 1000
                access.info(
                    "%s %s %s %s %.1fms",
                    request_id,
                    scope["method"],
                    scope["path"],
                    status,
                    millis,
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "duration_ms": round(millis, 2),
                        }
                    },
                )
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimit:
    """Refuses bodies over `limit` bytes with 413, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(scope, receive, send)
                    return
        if not any(name == b"transfer-encoding" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        # A chunked body has no declared length: read it (up to the limit) before the app sees it.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = envelope(
            413,
            f"Request body exceeds the {self.limit}-byte limit",
            "PAYLOAD_TOO_LARGE",
            {"Connection": "close"},
        )
        await response(scope, receive, send)
