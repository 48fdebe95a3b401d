"""The deliverer's HTTP client: checks every address it connects to, follows no redirect.

The address rules of `urls.py` are applied inside the connection itself (an httpcore network
backend that resolves the host, refuses the connection when any address is not allowed, and connects
to the address it checked). So there is no gap between "checked" and "connected" for a changing DNS
answer to slip through, while TLS still verifies the certificate against the URL's host name.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import httpx

from chambers.webhooks.signing import USER_AGENT
from chambers.webhooks.urls import TargetRefused, allowed_addresses

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, then connects to one of the checked addresses."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await allowed_addresses(host, port, self.allow_private)
        except TargetRefused as exc:
            raise httpcore.ConnectError(f"target refused: {exc}") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a connection pool that uses GuardedBackend."""

    def __init__(self, allow_private: bool, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(allow_private),
        )


def webhook_client(allow_private: bool, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """The one client every delivery attempt of this process goes through."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private, max_connections),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )
