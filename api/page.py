"""The web page (`GET /`) and its static files (`GET /web/{name}`): plain HTML, JS and CSS from api/web/.

No build step: the files are read once at import and served from memory with an ETag. They hold no
data, so they are reachable without a token (PUBLIC_PATHS); the page sends its token with each API
call (a header, or `?token=` on WebSocket URLs and download links).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

from aiohttp import web

routes = web.RouteTableDef()
DIR = Path(__file__).with_name("web")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
         ".png": "image/png"}
# The page talks only to this API: no inline script, no other origin.
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class File(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def _load() -> dict[str, File]:
    files = {}
    for p in sorted(DIR.iterdir()):
        if p.is_file() and p.suffix in TYPES:
            body = p.read_bytes()
            files[p.name] = File(body, TYPES[p.suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


FILES = _load()
PUBLIC_PATHS = ("/", *(f"/web/{name}" for name in FILES))  # no token needed: the page and its assets


def _send(request: web.Request, f: File) -> web.Response:
    headers = {"ETag": f.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}
    if f.content_type == "text/html":
        headers["Content-Security-Policy"] = CSP
    if request.headers.get("If-None-Match") == f.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=f.body, content_type=f.content_type, charset="utf-8" if f.content_type.startswith(
        "text/") else None, headers=headers)


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    return _send(request, FILES["index.html"])


@routes.get("/web/{name}")
async def asset(request: web.Request) -> web.Response:
    f = FILES.get(request.match_info["name"])
    if f is None:
        raise web.HTTPNotFound()
    return _send(request, f)
