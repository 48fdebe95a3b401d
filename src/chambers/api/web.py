"""The web UI: the static files of `chambers/web`, served at `/` and `/assets/...`.

The UI is plain files (no build step). It talks to the same public endpoints as any client
(`/api/...`, `/agent/v1/...`, `/events/v1/...`) with the sign-in cookie. Every file is read once,
when this module is imported, so a request can only ever get one of those files (no path from the
URL reaches the file system). Responses carry a strict Content-Security-Policy that allows only this
origin: no inline script or style, no other host for scripts, styles, images or connections.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response

from chambers.core.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Vendored libraries carry their version in the file name, so they never change under one URL.
IMMUTABLE = "public, max-age=31536000, immutable"
# The UI's own files change with the server: revalidate every time (cheap, thanks to the ETag).
REVALIDATE = "no-cache"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}

router = APIRouter(include_in_schema=False, tags=["web"])


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    cache_control: str


def load(root: Path = WEB_DIR) -> dict[str, Asset]:
    """Every file under `root`, by its path relative to it (`app.js`, `vendor/...`)."""
    found: dict[str, Asset] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        media_type = TYPES.get(path.suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        cache = IMMUTABLE if name.startswith("vendor/") else REVALIDATE
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[name] = Asset(body, media_type, etag, cache)
    return found


ASSETS = load()


def serve(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": asset.cache_control, "ETag": asset.etag}
    matches = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip() for tag in matches.split(",")) or matches.strip() == "*":
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    headers["Content-Length"] = str(len(asset.body))
    return Response(body, media_type=asset.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    """The single page of the UI (its views are hash routes: `#/chat`, `#/admin/agents`, ...)."""
    asset = ASSETS.get("index.html")
    if asset is None:
        raise NotFound("The web UI is not installed")
    return serve(request, asset)


@router.api_route("/assets/{name:path}", methods=["GET", "HEAD"])
async def assets(request: Request, name: str) -> Response:
    """A script, style sheet, icon or vendored library of the UI."""
    asset = ASSETS.get(name)
    if asset is None or name == "index.html":
        raise NotFound("No such asset")
    return serve(request, asset)
