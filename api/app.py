"""The aiohttp application: `create_app(config)` wires routes, middleware and resources."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from api import page
from shipper.config import Config
from shipper.errors import ConfigError, StoreError
from shipper.format import names
from shipper.logs import event
from shipper.store import open_store

from . import ibex, listing, logs, metrics, openapi, proxy, query, tail
from .errors import Forbidden, Unauthorized, error_middleware, json_error
from .keys import CONFIG, METRICS, SOURCE, STOPPING, STORE
from .metrics import Metrics
from .source import Source

OPEN_PATHS = ("/healthz", "/readyz", *page.PUBLIC_PATHS)  # without a token: probes, the page (it holds no data)
READY_TIMEOUT = 2.0  # seconds the store has to answer GET /readyz
QUERY_PATHS = ("/api/v1/query",)  # arbitrary SQL over the archive: the query scope (api.query_tokens)
# ?token= is taken only where a browser cannot send a header: the tail's WebSocket (and SSE), and the
# page's download links (one log, all hosts of a task). Anywhere else a token in a URL would end up in
# histories, proxies' logs and Referer headers for nothing, so it is not looked at.
QUERY_TOKEN_PATHS = re.compile(r"/api/v1/tasks/[^/]+/(?:hosts/[^/]+/(?:log|tail)|log)")


def create_app(cfg: Config, *, serve_spool: bool = True) -> web.Application:
    """The API. With `serve_spool`, the newest bytes come from this host's spool as well as the store."""
    check_auth_config(cfg)
    auth = _auth_middleware(cfg.api.tokens, cfg.api.query_tokens)
    app = web.Application(middlewares=[error_middleware, auth, proxy.proxy_middleware],
                          client_max_size=1 << 20)
    app[CONFIG] = cfg
    app[METRICS] = Metrics()
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stop_followers)
    app.cleanup_ctx.append(_store_ctx(serve_spool))
    app.cleanup_ctx.append(tail.hub_ctx)  # after the store: its pollers stop before the store closes
    app.on_shutdown.append(tail.on_shutdown)
    app.cleanup_ctx.append(proxy.session_ctx)
    app.add_routes(logs.routes)
    app.add_routes(listing.routes)  # GET /api/v1/tasks
    app.add_routes(metrics.routes)
    app.add_routes(tail.routes)
    app.add_routes(openapi.routes)
    app.add_routes(page.routes)  # GET /: the web page
    app.add_routes(ibex.routes)  # /ibex/v1/task/{id}/stdout ... (docs/ibex.md)
    app.router.add_get("/readyz", readyz)
    query.setup(app)  # POST /api/v1/query, GET /api/v1/search, and the DuckDB they share
    return app


def say_listening(cfg: Config) -> Callable[[str], None]:
    """run_app's `print`, which it calls once every socket listens: one event in place of its banner."""

    def say(_banner: str) -> None:
        event(logging.getLogger("logship.api"), "api_listening", "API listening on http://{address}, store {store}, "
              "spool {spool}, {tokens} tokens and {query_tokens} of the query scope", address=cfg.api.listen,
              store=cfg.store.url, spool=str(cfg.spool_dir), tokens=len(cfg.api.tokens),
              query_tokens=len(cfg.api.query_tokens))

    return say


def _store_ctx(serve_spool: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        store = open_store(cfg.store)
        app[STORE] = store
        app[SOURCE] = Source(store, cfg.spool_dir if serve_spool else None)
        try:
            yield
        finally:
            await store.close()

    return ctx


async def _stop_followers(app: web.Application) -> None:
    app[STOPPING].set()


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the store answers a listing within READY_TIMEOUT, else 503 (`logship serve --check`)."""
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(request.app[STORE].list(names.READY_PROBE_PREFIX), READY_TIMEOUT)
    except TimeoutError:
        why = f"no answer within {READY_TIMEOUT:g}s"
    except StoreError as exc:
        why = exc.detail
    else:
        return web.json_response({"ok": True, "store_ms": round((time.monotonic() - t0) * 1000, 1)})
    return json_error(503, "store_unavailable", f"the store does not answer: {why}",
                      "check the store server, the network, store.url, store.endpoint and the credentials")


def check_auth_config(cfg: Config) -> None:
    """Without tokens the API may listen on loopback only: anyone who reaches it reads every log."""
    if cfg.api.tokens or cfg.api.query_tokens:
        return
    host = cfg.api.listen.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"api.listen = {cfg.api.listen!r} is not a loopback address and api.tokens is empty",
                          "set api.tokens (bearer tokens, 16+ characters) or listen on 127.0.0.1")


def _auth_middleware(tokens: list[str], query_tokens: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Bearer tokens in two scopes: api.tokens read logs and search; api.query_tokens also run SQL."""
    read = [t.encode() for t in tokens]
    query = [t.encode() for t in query_tokens]

    @web.middleware
    async def auth(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        request.app[METRICS].requests += 1
        if (read or query) and request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            given = token.strip().encode() if scheme.lower() == "bearer" else b""
            in_url = "token" in request.query and not given
            if in_url and request.method in ("GET", "HEAD") and QUERY_TOKEN_PATHS.fullmatch(request.path):
                given = request.query["token"].encode()  # a WebSocket or a download link: no header possible
                in_url = False
            may_query = any(hmac.compare_digest(given, t) for t in query)
            if not may_query and not any(hmac.compare_digest(given, t) for t in read):
                if in_url:
                    raise Unauthorized(f"{request.path} takes its token from the Authorization header",
                                       "send 'Authorization: Bearer TOKEN'; ?token= is taken only by the tail "
                                       "(…/hosts/{host}/tail) and the download links (…/log, GET or HEAD)")
                raise Unauthorized("a bearer token is required" if not given else "the bearer token is not valid",
                                   "send 'Authorization: Bearer TOKEN' with a token from api.tokens")
            if request.path in QUERY_PATHS and not may_query:
                raise Forbidden(f"{request.path} runs SQL: it needs a token of the query scope",
                                "use a token from api.query_tokens (api.tokens only read logs and search them)")
        return await handler(request)

    return auth
