"""Live requests for a log whose spool is on another host go to the API beside that spool.

The watcher records that API's URL (watch.api_url) in the manifest of a running log. A central API
without the spool forwards /log, /tail, /index and the log's metadata there, so readers see the newest
bytes instead of the last checkpoint; when that API cannot be reached, it serves the checkpoints itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from shipper.errors import LogshipError
from shipper.retry import QuietLog

from .keys import PROXY_SESSION, SOURCE

log = logging.getLogger("logship.api.proxy")
LIVE_PATH = re.compile(r"/api/v1/tasks/([^/]+)/hosts/([^/]+)(/log|/tail|/index)?")
PROXIED = "X-Logship-Proxied"  # set on forwarded requests, so two APIs never forward in a loop
FORWARD_REQUEST = ("Range", "If-Range", "Accept", "Last-Event-ID", "Authorization")
FORWARD_RESPONSE = ("Content-Type", "Content-Length", "Content-Range", "ETag", "Accept-Ranges", "Cache-Control",
                    "X-Log-Size", "X-More-Data")
CONNECT_TIMEOUT = 2.0
_quiet = QuietLog(log)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        app[PROXY_SESSION] = session
        yield


@web.middleware
async def proxy_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    m = LIVE_PATH.fullmatch(request.path)
    if m is None or PROXIED in request.headers or request.method not in ("GET", "HEAD"):
        return await handler(request)
    try:
        view = await request.app[SOURCE].view(m.group(1), m.group(2))
    except LogshipError:
        return await handler(request)  # bad ids, a missing log: the handler says so, after checking its params
    url = (view.doc or {}).get("api_url")
    if view.spool_dir is not None or view.finished or not url:
        return await handler(request)
    try:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _proxy_ws(request, url)
        return await _proxy_http(request, url)
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        _quiet.log(logging.WARNING, url, "API at %s unreachable (%s): serving %s from checkpoints", url, exc,
                   request.path)
        return await handler(request)


async def _proxy_http(request: web.Request, base: str) -> web.StreamResponse:
    headers = {h: request.headers[h] for h in FORWARD_REQUEST if h in request.headers}
    headers[PROXIED] = "1"
    session = request.app[PROXY_SESSION]
    async with session.request(request.method, base + request.path_qs, headers=headers) as up:
        resp = web.StreamResponse(status=up.status, headers={h: up.headers[h] for h in FORWARD_RESPONSE
                                                              if h in up.headers})
        if "Content-Length" in up.headers:
            resp.content_length = int(up.headers["Content-Length"])
        await resp.prepare(request)
        async for piece in up.content.iter_chunked(1 << 20):
            await resp.write(piece)
        await resp.write_eof()
        return resp


async def _proxy_ws(request: web.Request, base: str) -> web.StreamResponse:
    headers = {h: request.headers[h] for h in ("Authorization",) if h in request.headers}
    headers[PROXIED] = "1"
    session = request.app[PROXY_SESSION]
    async with session.ws_connect(base.replace("http", "ws", 1) + request.path_qs, headers=headers) as up:
        ws = web.WebSocketResponse(heartbeat=15)
        await ws.prepare(request)

        async def downstream() -> None:
            async for msg in up:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            await ws.close(code=up.close_code or aiohttp.WSCloseCode.OK)

        async def upstream() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await up.send_str(msg.data)
            await up.close()

        tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        return ws
