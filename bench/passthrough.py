"""The floor: a gateway that only relays, on the server's own stack (uvicorn, uvloop, httptools, aiohttp).

    python -m bench.passthrough --upstream URL [--port 0]   # prints "READY <url>"

`POST /v1/chat/completions` opens the same request to the upstream and writes each chunk it reads to the
client as it comes: no store, no bus, no parsing, no JSON, no middleware. Measured beside Chambers, it
says how much of a streamed delta's cost is the libraries' and the kernel's (one read from the upstream,
one write to the client) and how much is Chambers' own work. Benchmark support only: not part of the
product.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send


class Passthrough:
    """A raw ASGI app relaying `POST /v1/chat/completions` to `upstream`, chunk by chunk."""

    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/v1/chat/completions"
        self._http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {"content-type": "application/json", "authorization": "Bearer bench-key"}
        async with self._http.post(self.url, data=body, headers=headers) as upstream:
            start: dict[str, Any] = {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [(b"content-type", upstream.headers.get("content-type", "").encode())],
            }
            await send(start)
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"READY http://{host}:{port}", flush=True)


def main() -> None:
    """CLI: relay to `--upstream` until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(
        Passthrough(args.upstream),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    _Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
