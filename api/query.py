"""SQL and search over archived lines: `POST /api/v1/query` (streamed) and `GET /api/v1/search`.

DuckDB (shipper/query/engine.py) is opened on the first query, so an API nobody queries never loads it, and
every call into it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from shipper.config import Config
from shipper.errors import LogshipError
from shipper.format import names

from . import params
from .errors import BadRequest, json_error
from .keys import CONFIG, METRICS, QUERY_ENGINE

if TYPE_CHECKING:
    from shipper.query.engine import Database
    from shipper.query.result import Result

log = logging.getLogger("logship.api.query")
routes = web.RouteTableDef()
CONCURRENT_QUERIES = 2  # more wait their turn: each already uses query.threads cores
SEARCH_LIMIT_MAX = 1000
_T = TypeVar("_T")


class Engine:
    """The API's DuckDB, opened on first use and shared by all requests (each query has its own cursor)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db: Database | None = None
        self._open_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(CONCURRENT_QUERIES)

    async def get(self) -> Database:
        async with self._open_lock:
            if self.db is None:
                from shipper.query.engine import Database

                self.db = await asyncio.to_thread(Database, self.cfg)
            return self.db

    def metrics(self) -> list[str]:
        """Lines for /metrics."""
        bad = self.db.bad_manifests if self.db is not None else 0
        return ["# TYPE logship_query_bad_manifests_total counter", f"logship_query_bad_manifests_total {bad}"]

    async def close(self) -> None:
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
            self.db = None


def setup(app: web.Application) -> None:
    """Routes and the DuckDB resource: one line in create_app."""
    app.add_routes(routes)
    app.cleanup_ctx.append(_engine_ctx)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = Engine(app[CONFIG])
    app[QUERY_ENGINE] = engine
    try:
        yield
    finally:
        await engine.close()


@routes.post("/api/v1/query")
async def post_query(request: web.Request) -> web.StreamResponse:
    fmt = params.choice(request, "format", ("json", "csv", "ndjson")) or "json"
    sql = await _sql_of(request)
    engine = request.app[QUERY_ENGINE]
    from shipper.query import formats
    from shipper.query.rules import QueryError, check_text

    try:
        check_text(sql)  # the cheap checks (size, NUL) before a query slot is taken
    except QueryError as exc:
        return _refusal(exc)

    async with engine.slots:
        db = await engine.get()
        try:
            result = await asyncio.to_thread(db.execute, sql)
        except QueryError as exc:
            return _refusal(exc)
        pieces = formats.encode(result, fmt)
        try:
            # The first piece runs the query: its errors (a file outside the archive, a timeout) are still a 400.
            try:
                first = await _next(pieces, result)
            except QueryError as exc:
                return _refusal(exc)
            resp = web.StreamResponse(headers={"Content-Type": formats.CONTENT_TYPES[fmt],
                                               "X-Row-Limit": str(result.limits.max_rows),
                                               "Cache-Control": "no-store"})
            await resp.prepare(request)
            piece = first
            while piece is not None:
                await resp.write(piece)
                request.app[METRICS].bytes_out += len(piece)
                try:
                    piece = await _next(pieces, result)
                except LogshipError as exc:
                    return await _fail_midway(request, resp, result, fmt, exc)
            await resp.write_eof()
            return resp
        finally:
            result.close()
            await asyncio.to_thread(pieces.close)


async def _sql_of(request: web.Request) -> str:
    body = await params.read_json_body(request, example='{"sql": "SELECT ..."}')
    if not isinstance(body, dict) or not isinstance(body.get("sql"), str) or not body["sql"].strip():
        raise BadRequest('the body has no "sql" string', 'send a JSON body {"sql": "SELECT ..."}')
    extra = sorted(set(body) - {"sql"})
    if extra:
        raise BadRequest(f"unknown key(s) in the body: {', '.join(extra)}", 'the body is {"sql": "SELECT ..."}; '
                         "the format is the query parameter ?format=json|csv|ndjson")
    sql: str = body["sql"]
    return sql


def _refusal(exc: LogshipError) -> web.Response:
    """A query refused before any row: 400, or the status its kind names (413 for SQL too long)."""
    return json_error(getattr(exc, "status", 400), exc.code, exc.detail, exc.hint)


async def _next(pieces: Iterator[_T], result: Result) -> _T | None:
    """The next item of a DuckDB-fed iterator, computed in a thread; a cancelled request stops the query."""
    fut = asyncio.ensure_future(asyncio.to_thread(next, pieces, None))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        result.interrupt()
        with contextlib.suppress(BaseException):
            await fut
        raise


async def _fail_midway(request: web.Request, resp: web.StreamResponse, result: Result, fmt: str,
                       exc: LogshipError) -> web.StreamResponse:
    """A failure after rows went out: JSON closes with an `error`; CSV and NDJSON are cut off, so the
    client sees an incomplete body rather than an answer that looks whole."""
    log.warning("query failed after %d rows: %s", result.rows, exc)
    if fmt == "json":
        from shipper.query import formats

        await resp.write(formats.json_tail(result, {"error": exc.code, "detail": exc.detail, "hint": exc.hint}))
        await resp.write_eof()
    elif request.transport is not None:
        request.transport.close()
    return resp


@routes.get("/api/v1/search")
async def search(request: web.Request) -> web.Response:
    from shipper.query.rules import QueryError
    from shipper.query.search import Search

    q = request.query.get("q", "")
    if not q:
        raise BadRequest("q is required", "give the text to look for: /api/v1/search?q=disk+full (i=1: any case)")
    task, host = request.query.get("task") or None, request.query.get("host") or None
    s = Search(q, ignore_case=params.flag(request, "i"),
               task=names.check_id("task", task) if task else None,
               host=names.check_id("host", host) if host else None,
               since_ns=params.since_ns(request), stream=params.choice(request, "stream", ("stdout", "stderr")),
               limit=params.integer(request, "limit", 100, 1, SEARCH_LIMIT_MAX) or 100)
    engine = request.app[QUERY_ENGINE]
    async with engine.slots:
        db = await engine.get()
        try:
            hits, elapsed = await asyncio.to_thread(_run_search, db, s)
        except QueryError as exc:
            return _refusal(exc)
    if not hits and s.task:
        await _check_task_has_log(request.app, s.task, s.host)  # a wrong id is a 404, never "no match"
    more = len(hits) > s.limit
    return web.json_response({"hits": [_hit(h) for h in hits[:s.limit]], "more": more, "elapsed_ms": elapsed})


async def _check_task_has_log(app: web.Application, task: str, host: str | None) -> None:
    """Raise LogNotFound (404) when `task` has no log (on `host`) in the store or the spool this API serves.
    Called only when nothing matched; it costs a HEAD, or a delimited LIST of the task's prefix and a HEAD."""
    from shipper.format.hosts import has_log, hosts_of
    from shipper.spool.logs import iter_logs

    from .keys import SOURCE, STORE
    from .source import LogNotFound

    spool = app[SOURCE].spool
    logs = [] if spool is None else await asyncio.to_thread(iter_logs, spool)
    spooled = {d.name for d in logs if d.parent.name == task}
    if (spooled if host is None else host in spooled) or (host and await has_log(app[STORE], task, host)):
        return
    found = await hosts_of(app[STORE], task, want=1 if host is None else 10)
    if host is None and found.hosts:
        return
    if hosts := sorted({*found.hosts, *spooled}):
        raise LogNotFound(f"no log {task}/{host}", f"task {task} has logs on {', '.join(hosts)}"
                          f"{' and more' if found.unchecked else ''}: search one of them, or leave out host=")
    raise LogNotFound(f"no log of task {task}", "check the task id (ids are case-sensitive); "
                      "GET /api/v1/tasks lists logs")


def _run_search(db: Database, s: Any) -> tuple[list[dict[str, Any]], int]:
    result = db.execute(s.sql())
    try:
        hits = [json.loads(obj) for batch in result.fetch_json() for obj in batch]
    finally:
        result.close()
    return hits, result.elapsed_ms


def _hit(h: dict[str, Any]) -> dict[str, Any]:
    """A match and where it is: GET `url` with `Range: <range>` gives its bytes (its line, and any other
    stream's bytes written in the middle of it)."""
    url = f"/api/v1/tasks/{quote(h['task'])}/hosts/{quote(h['host'])}/log"
    return {"task": h["task"], "host": h["host"], "line_no": h["line_no"],
            "ts": h["ts"].replace(" ", "T") + "Z" if h["ts"] else None, "stream": h["stream"],
            "line": h["line"], "truncated": h["truncated"], "partial": h["partial"],
            "offset": h["byte_offset"], "end": h["byte_end"], "url": url,
            "range": f"bytes={h['byte_offset']}-{h['byte_end'] - 1}"}
