"""Webhook target URLs: what is accepted, and which resolved addresses may be reached.

A target must be `http` or `https`, have a host, and carry no credentials. Unless private targets are
allowed, every address its host resolves to must be public: loopback, private, shared (CGNAT),
link-local, multicast, reserved, documentation and unspecified addresses are refused, IPv4 and IPv6
alike, including IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo). The check runs when a
subscription is created or changed and again on every connection the deliverer makes (see
`transport.py`), so a DNS answer that changes later cannot point deliveries at an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from chambers.core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2000


class TargetRefused(Exception):
    """The host resolves to an address webhooks may not reach, or does not resolve."""


def parse_target(url: str) -> SplitResult:
    """The URL's parts after the syntactic rules; raises InvalidRequest naming the broken rule."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"url: longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidRequest("url: must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"url: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest("url: the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidRequest("url: credentials in the URL are not allowed; authenticate with the signature")
    if not parts.hostname:
        raise InvalidRequest("url: a host is required")
    if port == 0:
        raise InvalidRequest("url: port 0 is not a valid port")
    if parts.fragment:
        raise InvalidRequest("url: a fragment (#...) is not allowed")
    return parts


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be a webhook target, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            why = refusal(embedded)
            return None if why is None else f"{why} (embedded in {address})"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_reserved:
        return f"{address} is a reserved address"
    if address.is_private:
        return f"{address} is a private address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"{host} does not resolve ({exc})") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise TargetRefused(f"{host} does not resolve")
    return found


async def allowed_addresses(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to; raises TargetRefused when any of them is not allowed."""
    addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise TargetRefused(f"{host} resolves to {why}" if _literal(host) is None else why)
    return addresses


async def validate_target(url: str, allow_private: bool) -> str:
    """Check `url` for a subscription (syntax, then where it points); returns it unchanged."""
    parts = parse_target(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    literal = _literal(host)
    if allow_private and literal is None:
        return url  # nothing to refuse: an unresolvable name fails at delivery and is retried
    try:
        await allowed_addresses(host, port, allow_private)
    except TargetRefused as exc:
        raise InvalidRequest(f"url: refused: {exc}") from None
    return url


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
