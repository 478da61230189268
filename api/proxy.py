"""Live requests for a log whose spool is on another host go to the API beside that spool.

The watcher records that API's URL (watch.api_url) in the manifest of a running log. A central API
without the spool forwards /log, /tail, /index and the log's metadata there, so readers see the newest
bytes instead of the last checkpoint; otherwise it serves the checkpoints itself.

A manifest is untrusted (docs/operations.md, "A central API"): the URL is used only if api.proxy_allow
allows it (api/proxy_check.py); the request carries the API's own token (api.proxy_token), never the
user's (no Authorization, no ?token=, no cookies) and no hop-by-hop headers; the answer is held to the
manifest before it is served. An answer that breaks a rule before its body starts is dropped and the
checkpoints are served; one that breaks it later ends as a failed transfer (the connection is cut, a
WebSocket closes with 1014), so a client never takes it for a whole answer. Each case is logged with
the URL and counted in /metrics; the node is then left alone for that log for BAD_NODE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from shipper.errors import LogshipError

from . import encoding
from .encoding import IDENTITY
from .keys import CONFIG, METRICS, PROXY, PROXY_SESSION, SOURCE, VIEW
from .proxy_check import (
    AllowList,
    BadAnswer,
    NotAllowed,
    SSECheck,
    TailCheck,
    check_index,
    check_json_head,
    check_log_head,
    check_meta,
    shown,
)
from .source import LogView

log = logging.getLogger("logship.api.proxy")
LIVE_PATH = re.compile(r"/api/v1/tasks/([^/]+)/hosts/([^/]+)(/log|/tail|/index)?")
PROXIED = "X-Logship-Proxied"  # set on forwarded requests, so two APIs never forward in a loop
# What is forwarded, by name; nothing else (no Authorization, Cookie, Connection, Upgrade, TE, ...).
FORWARD_REQUEST = ("Range", "If-Range", "Last-Event-ID")
FORWARD_QUERY = {"/log": ("stream", "follow", "start"), "/tail": ("from", "lines"),
                 "/index": ("start", "end", "last", "stream"), "": ()}  # never token=
FORWARD_RESPONSE = ("Content-Range", "ETag", "X-Log-Size", "X-More-Data")
NOT_IN_304 = ("Content-Type", "Content-Range", "Content-Encoding")
CONNECT_TIMEOUT = 2.0
PIECE = 1 << 20
MAX_HEADER_FIELD = 4096  # bytes of one header line of a node's answer (aiohttp's default is 8190)
MAX_HEADERS = 32  # header lines of a node's answer
MAX_JSON = 32 << 20  # an /index answer (20,000 records) or a manifest of a very long log
MAX_MESSAGE = 2 << 20  # a tail message: 256 KiB of data, JSON-escaped (up to 6 bytes a byte)
BAD_NODE_SECONDS = 30.0  # after a bad answer a log is served from checkpoints this long
LOG_EVERY = 30.0
PING_S = 15.0
REFUSALS = (400, 404, 406, 416)  # the node says the request is wrong: this API's handler says it too


class _Fallback(Exception):
    """Nothing was sent yet: serve the request from the checkpoints instead."""


@dataclass
class _Target:
    base: str  # scheme://host:port, allowed
    route: str  # "/log", "/tail", "/index" or "" (the metadata)
    view: LogView
    run_id: str
    held: int  # bytes the manifest holds: the node has at least these


class ProxyState:
    """api.proxy_allow, and which node answered badly for which log until when (per app)."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self.bad: dict[tuple[str, str, str], float] = {}
        self.logged: dict[str, float] = {}

    def is_bad(self, base: str, task: str, host: str) -> bool:
        return self.bad.get((base, task, host), 0.0) > time.monotonic()

    def mark(self, base: str, task: str, host: str) -> None:
        now = time.monotonic()
        if len(self.bad) > 1000:
            self.bad = {k: t for k, t in self.bad.items() if t > now}
        self.bad[(base, task, host)] = now + BAD_NODE_SECONDS

    def log(self, url: str, msg: str, *args: object) -> None:
        """One line naming the URL, at most every LOG_EVERY seconds per URL."""
        now = time.monotonic()
        if now - self.logged.get(url, -LOG_EVERY) >= LOG_EVERY:
            if len(self.logged) > 1000:
                self.logged.clear()
            self.logged[url] = now
            log.warning(msg, *args)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    app[PROXY] = ProxyState(AllowList.parse(app[CONFIG].api.proxy_allow))
    # No cookie jar (a node's cookie would go to the next node), no proxy from the environment, small heads.
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                     trust_env=False, max_field_size=MAX_HEADER_FIELD, max_headers=MAX_HEADERS,
                                     skip_auto_headers=("User-Agent",)) as session:
        app[PROXY_SESSION] = session
        yield


@web.middleware
async def proxy_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    m = LIVE_PATH.fullmatch(request.path)
    # a stream's bytes (/log?stream=) have no ETag to hold them to: from checkpoints; an /index scan back for a
    # stream (`last`, `stream`) is forwarded and checked as any /index answer
    if m is None or PROXIED in request.headers or request.method not in ("GET", "HEAD") \
            or (m.group(3) == "/log" and "stream" in request.query):
        return await handler(request)
    try:
        view = await request.app[SOURCE].view(m.group(1), m.group(2))
    except LogshipError:
        return await handler(request)  # bad ids, a missing log: the handler says so, after checking its params
    request[VIEW] = view  # the route serves from it, unless a forward is tried first (below: then a fresh one)
    url = view.doc.api_url if view.doc is not None else None
    if view.spool_dir is not None or view.finished or view.doc is None or not url:
        return await handler(request)
    metrics = request.app[METRICS]
    state = request.app[PROXY]
    try:
        base = state.allow.base_url(url)
    except NotAllowed as exc:
        metrics.proxy_refused += 1
        state.log(shown(url), "%s/%s: api_url %s not used (%s; api.proxy_allow): serving checkpoints",
                   view.task, view.host, shown(url), exc)
        return await handler(request)
    if state.is_bad(base, view.task, view.host):
        return await handler(request)
    del request[VIEW]  # a forward that falls back may have taken seconds: the route takes a view of its own
    target = _Target(base, m.group(3) or "", view, view.doc.run_id, view.size)
    try:
        metrics.proxy_forwarded += 1
        if target.route == "/tail" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await _proxy_ws(request, target)
        if target.route in ("/log", "/tail"):
            return await _proxy_stream(request, target)
        return await _proxy_json(request, target)
    except _Fallback:
        return await handler(request)


def _unreachable(request: web.Request, t: _Target, exc: BaseException) -> None:
    request.app[METRICS].proxy_unreachable += 1
    request.app[PROXY].log(t.base, "%s/%s: the API at %s is unreachable (%s): serving checkpoints", t.view.task,
                           t.view.host, t.base, exc or type(exc).__name__)


def _bad(request: web.Request, t: _Target, exc: BaseException, served: str = "serving checkpoints") -> None:
    request.app[METRICS].proxy_rejected += 1
    request.app[PROXY].mark(t.base, t.view.task, t.view.host)
    request.app[PROXY].log(t.base, "%s/%s: the API at %s answered %s: %s (%s for %gs)", t.view.task, t.view.host,
                           t.base, request.path, exc, served, BAD_NODE_SECONDS)


def _request(request: web.Request, t: _Target) -> tuple[str, dict[str, str]]:
    """The URL and headers of the forwarded request: the path rebuilt from checked ids, known parameters."""
    hop = {h.strip().lower() for h in request.headers.get("Connection", "").split(",")}
    headers = {h: request.headers[h] for h in FORWARD_REQUEST if h in request.headers and h.lower() not in hop}
    if t.route == "/tail" and "Accept" in request.headers:
        headers["Accept"] = request.headers["Accept"]
    # identity: the checks hold the node to the log's own bytes; a whole /log is encoded here (_proxy_stream)
    headers.update({PROXIED: "1", "Accept-Encoding": "identity"})
    token = request.app[CONFIG].api.proxy_token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    query = {k: request.query[k] for k in FORWARD_QUERY[t.route] if k in request.query}
    path = f"/api/v1/tasks/{t.view.task}/hosts/{t.view.host}{t.route}"
    return str(URL(t.base + path).with_query(query)), headers


def _whole(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) <= 19 else None


async def _open(request: web.Request, t: _Target, method: str) -> aiohttp.ClientResponse:
    """The node's answer, its head read; _Fallback if it cannot be had or declines."""
    url, headers = _request(request, t)
    try:
        up = await request.app[PROXY_SESSION].request(method, url, headers=headers, allow_redirects=False)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        _unreachable(request, t, exc)
        raise _Fallback from None
    if up.status in REFUSALS:  # a bad parameter, a log it lost, a range past its end: the handler answers
        up.close()
        raise _Fallback
    return up


async def _proxy_stream(request: web.Request, t: _Target) -> web.StreamResponse:
    """/log (and the tail as SSE): the head checked before anything is sent, the body as it comes.

    The node is asked for identity, so the checks (the byte cap of the head, a Content-Length) hold on the
    log's own bytes; a whole /log is then encoded here as api/logs.py encodes a local one (api/encoding.py:
    the same negotiation, a weak ETag per coding, Range and ?start= in identity, flushed per piece when
    followed)."""
    up = await _open(request, t, request.method)
    sse: SSECheck | None = None
    coding = IDENTITY
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    try:
        if t.route == "/tail":
            if up.status != 200 or not up.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise BadAnswer(f"HTTP {up.status} {up.headers.get('Content-Type', '')[:40]!r}, not an SSE stream")
            start = _whole(request.headers.get("Last-Event-ID", "").strip() or request.query.get("from"))
            sse = SSECheck(TailCheck(start, t.held), MAX_MESSAGE)
            cap: int | None = None
            headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        else:
            cap = check_log_head(up.status, up.headers, run_id=t.run_id, held=t.held,
                                 range_header=request.headers.get("Range"), start=_whole(request.query.get("start")),
                                 follow=follow)
            headers = {h: up.headers[h] for h in FORWARD_RESPONSE if h in up.headers}
            headers.update({"Content-Type": "text/plain; charset=utf-8", "Accept-Ranges": "bytes",
                            "Cache-Control": "no-cache", "Vary": "Accept-Encoding"})
            if "Range" not in request.headers and "start" not in request.query:  # whole: any coding
                coding = encoding.choose(request.headers.get("Accept-Encoding"))
                headers["ETag"] = encoding.etag(headers["ETag"], coding)  # the node's, checked: "<run>-<size>"
                headers.update(encoding.headers(coding))
            if "start" not in request.query and encoding.none_match(request.headers.get("If-None-Match"),
                                                                    headers["ETag"]):
                up.close()  # the client has this representation (RFC 9110 13.1.2, before Range, as api/logs.py)
                return web.Response(status=304, headers={k: v for k, v in headers.items() if k not in NOT_IN_304})
    except BadAnswer as exc:
        up.close()
        _bad(request, t, exc)
        raise _Fallback from None
    headers["X-Content-Type-Options"] = "nosniff"
    resp = web.StreamResponse(status=up.status, headers=headers)
    length = _whole(up.headers.get("Content-Length"))
    if length is not None and t.route == "/log" and coding == IDENTITY:
        resp.content_length = length
    metrics = request.app[METRICS]
    async with up:
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        node = _Body(up, cap, length, sse)
        body = node.pieces() if coding == IDENTITY else encoding.compress(node.pieces(), coding, live=follow)
        async with contextlib.aclosing(body):
            try:
                async for piece in body:
                    try:
                        await resp.write(piece)
                    except ConnectionError:
                        metrics.client_gone += 1
                        return resp
                    metrics.bytes_out += len(piece)
            except BadAnswer as exc:
                _bad(request, t, exc, f"the response to the client was cut after {node.sent} bytes; checkpoints")
                _cut(request)
                return resp
    await resp.write_eof()
    return resp


class _Body:
    """A node's body as it comes, held to its head: at most `cap` bytes, all of its Content-Length, and
    (SSE) whole events that check out. BadAnswer from the piece that breaks a rule, before it is given."""

    def __init__(self, up: aiohttp.ClientResponse, cap: int | None, length: int | None,
                 sse: SSECheck | None) -> None:
        self.up, self.cap, self.length, self.sse = up, cap, length, sse
        self.sent = 0  # the node's bytes taken so far

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        chunks = self.up.content.iter_chunked(PIECE).__aiter__()
        while True:
            try:
                piece = await anext(chunks)
            except StopAsyncIteration:
                break
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise BadAnswer(f"the answer was cut ({exc or type(exc).__name__})") from None
            if self.cap is not None and self.sent + len(piece) > self.cap:
                raise BadAnswer(f"more than the {self.cap} bytes its head announced")
            self.sent += len(piece)
            yield piece if self.sse is None else self.sse.feed(piece)
        if self.sse is not None:
            self.sse.close()
        if self.length is not None and self.sent != self.length:
            raise BadAnswer(f"{self.sent} bytes of a Content-Length of {self.length}")


def _cut(request: web.Request) -> None:
    """End a response that has begun as a failed transfer: no final chunk, a reset; never a clean end."""
    if request.transport is not None:
        request.transport.abort()


async def _proxy_json(request: web.Request, t: _Target) -> web.StreamResponse:
    """/index and the metadata: read whole (up to MAX_JSON), checked, then sent."""
    up = await _open(request, t, "GET")
    try:
        async with up:
            check_json_head(up.status, up.headers, MAX_JSON)
            body = bytearray()
            try:
                async for piece in up.content.iter_chunked(PIECE):
                    body += piece
                    if len(body) > MAX_JSON:
                        raise BadAnswer(f"more than {MAX_JSON} bytes of JSON")
            except (TimeoutError, aiohttp.ClientError) as exc:
                _unreachable(request, t, exc)
                raise _Fallback from None
        if t.route == "/index":
            check_index(bytes(body), held=t.held, start=_whole(request.query.get("start")) or 0,
                        end=_whole(request.query.get("end")))
        else:
            check_meta(bytes(body), task=t.view.task, host=t.view.host, run_id=t.run_id, held=t.held)
    except BadAnswer as exc:
        _bad(request, t, exc)
        raise _Fallback from None
    resp = web.Response(body=bytes(body), content_type="application/json",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
    return resp if request.method == "GET" else web.Response(headers=resp.headers)


async def _proxy_ws(request: web.Request, t: _Target) -> web.StreamResponse:
    """The tail as a WebSocket: every message checked (TailCheck) before it is passed on."""
    url, headers = _request(request, t)
    url = "ws" + url[4:]  # http → ws, https → wss
    try:
        up = await request.app[PROXY_SESSION].ws_connect(url, headers=headers, max_msg_size=MAX_MESSAGE,
                                                         heartbeat=PING_S, autoclose=True)
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status not in REFUSALS:
            _bad(request, t, BadAnswer(f"HTTP {exc.status} to a WebSocket upgrade"))
        raise _Fallback from None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        _unreachable(request, t, exc)
        raise _Fallback from None
    check = TailCheck(_whole(request.query.get("from")), t.held)
    metrics = request.app[METRICS]
    async with up:
        ws = web.WebSocketResponse(heartbeat=PING_S, compress=False)
        await ws.prepare(request)

        async def downstream() -> None:
            async for msg in up:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        break
                    raise BadAnswer(f"a {msg.type.name} message")
                check.message(msg.data)
                await ws.send_str(msg.data)
                metrics.bytes_out += len(msg.data)
            code = up.close_code or aiohttp.WSCloseCode.OK
            await ws.close(code=code if code in (aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.GOING_AWAY)
                           else aiohttp.WSCloseCode.TRY_AGAIN_LATER)

        async def client() -> None:
            async for _ in ws:  # what clients send is ignored (pongs, their close)
                pass

        pump = asyncio.create_task(downstream())
        listen = asyncio.create_task(client())
        try:
            await asyncio.wait((pump, listen), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, listen):
                task.cancel()
            for task in (pump, listen):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    try:
                        await task
                    except BadAnswer as exc:
                        _bad(request, t, exc, "the WebSocket was closed with 1014; checkpoints")
                        await ws.close(code=aiohttp.WSCloseCode.BAD_GATEWAY,
                                       message=b"the log's node API answered inconsistently; reconnect")
        return ws
