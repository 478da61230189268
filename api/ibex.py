"""Ibex-shaped read routes (docs/ibex.md): Nightingale's `GET /ibex/v1/task/{id}/stdout` and friends,
answered from the logs `logship run --ibex` writes (`ibex-<id>/<host>`), whole — not cut at 16,380 runes —
and streamed, so memory stays flat whatever their size.

Per host the newest run is served (a redo is `ibex-<id>.<n>`), as ibex shows a host's last result. The JSON
is ibex's own: `{"dat": [...], "err": ""}`, one element per host, sorted by host.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from shipper.errors import LogshipError, StoreError
from shipper.format import manifest, names
from shipper.spool import iter_logs
from shipper.store import Store

from .errors import BadRequest
from .keys import METRICS, SOURCE, STORE
from .logs import abort_transfer, missing_answer
from .source import LogNotFound, LogView

log = logging.getLogger("logship.api.ibex")
routes = web.RouteTableDef()
STREAMS = ("stdout", "stderr")
_ID_RE = re.compile(r"0|[1-9][0-9]{0,18}")
VIEW_CONCURRENCY = 16  # manifests fetched at once for a task of many hosts
RUN_BATCH = 8  # runs of an ibex task (the first and Nightingale's redos) asked of the catalog at once
MAX_RUNS = 1000  # as `logship run --ibex` numbers them (shipper/commands/ibex.py)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- which logs ---------------------------------------------------------------------------------


def _ibex_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not _ID_RE.fullmatch(raw):
        raise BadRequest(f"ibex task id {raw!r} is not a whole number", "ibex task ids are numbers, e.g. 1042")
    return int(raw)


async def newest_runs(app: web.Application, ibex_id: int) -> list[tuple[str, str]]:
    """(task, host) of the newest run of ibex task `ibex_id` on each host, sorted by host."""
    newest: dict[str, tuple[int, str]] = {}

    def note(task: str, host: str) -> None:
        parsed = names.parse_ibex_task(task)
        if parsed is not None and parsed[0] == ibex_id and parsed[1] > newest.get(host, (0, ""))[0]:
            newest[host] = (parsed[1], task)

    spool = app[SOURCE].spool
    try:
        await _catalog_runs(app[STORE], ibex_id, note)
        if not newest:  # not in the catalog: written before it (`logship catalog rebuild`), or a note not yet made
            for obj in await app[STORE].list(names.ibex_list_prefix(ibex_id)):
                pair = names.parse_log_prefix(obj.key)
                if pair is not None and obj.key == names.manifest_key(*pair):
                    note(*pair)
    except StoreError as exc:
        if spool is None:
            raise
        log.warning("ibex task %d: the store cannot be listed, serving the spool's runs only: %s", ibex_id, exc)
    if spool is not None:
        for task, host in await asyncio.to_thread(_spool_logs, spool, names.ibex_task(ibex_id)):
            note(task, host)
    if not newest:
        raise LogNotFound(f"no log of ibex task {ibex_id}",
                          "ibex scripts are logged when they run under `logship run --ibex` (docs/ibex.md)")
    return [(newest[h][1], h) for h in sorted(newest)]


async def _catalog_runs(store: Store, ibex_id: int, note: Callable[[str, str], None]) -> None:
    """Note the catalog's logs of ibex task `ibex_id`, RUN_BATCH runs at a time (task names, so parts are
    pruned by their Bloom filters): a host's runs are numbered 1, 2, 3… with no gap, so the next batch is
    asked for only when some host reached the last run of this one."""
    from shipper import catalog  # when first asked: pyarrow is 40 MB of an idle API

    first = 1
    while first <= MAX_RUNS:
        tasks = tuple(names.ibex_task(ibex_id, n) for n in range(first, first + RUN_BATCH))
        highest, cursor = 0, None
        while True:
            page, cursor = await catalog.list_logs(store, catalog.Filters(tasks=tasks), cursor, 1000)
            for row in page:
                note(row["task"], row["host"])
                highest = max(highest, (names.parse_ibex_task(row["task"]) or (0, 0))[1])
            if cursor is None:
                break
        if highest < first + RUN_BATCH - 1:
            return
        first += RUN_BATCH


def _spool_logs(spool: Path, base: str) -> list[tuple[str, str]]:
    return [(d.parent.name, d.name) for d in iter_logs(spool)
            if (d.parent.name == base or d.parent.name.startswith(base + ".")) and (d / names.RUN_FILE).exists()]


async def _views(request: web.Request) -> tuple[int, list[LogView]]:
    """The views of the newest run on each host (or on ?host= only), taken before any byte is sent."""
    ibex_id = _ibex_id(request)
    runs = await newest_runs(request.app, ibex_id)
    only = request.query.get("host")
    if only is not None:
        names.check_id("host", only)
        runs = [r for r in runs if r[1] == only]
        if not runs:
            raise LogNotFound(f"ibex task {ibex_id} has no log of host {only}",
                              f"GET /ibex/v1/task/{ibex_id}/stdout lists its hosts")
    source, sem = request.app[SOURCE], asyncio.Semaphore(VIEW_CONCURRENCY)

    async def view(task: str, host: str) -> LogView:
        async with sem:
            return await source.view(task, host)

    return ibex_id, list(await asyncio.gather(*(view(task, host) for task, host in runs)))


def ibex_status(view: LogView) -> str:
    """The ibex word for how the run went: running, success, failed or killed."""
    if view.status == manifest.RUNNING:
        return "running"
    end = view.exit or {}
    if view.status == manifest.FINISHED and end.get("signal"):
        return "killed"
    return "success" if view.status == manifest.FINISHED and end.get("exit_code") == 0 else "failed"


class _JsonText:
    """Bytes to the inside of a JSON string, piece by piece: invalid UTF-8 replaced, a character split
    between two pieces kept whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def encode(self, data: bytes, final: bool = False) -> bytes:
        text = self._decoder.decode(data, final)
        return json.dumps(text, ensure_ascii=False)[1:-1].encode() if text else b""


# --- the routes ---------------------------------------------------------------------------------


def _json_route(stream: str, full: bool) -> Handler:
    """/stdout (full: ibex's task-host rows {id, host, status, stdout, stderr}) and /stdout.json ({host, stdout})."""
    other = "stderr" if stream == "stdout" else "stdout"

    async def handler(request: web.Request) -> web.StreamResponse:
        ibex_id, views = await _views(request)
        if (missing := _missing(views)) is not None:
            return missing
        resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        sent = 0
        try:
            await resp.write(b'{"dat":[')
            for i, view in enumerate(views):
                head: dict[str, Any] = {"id": ibex_id, "host": view.host, "status": ibex_status(view)} if full \
                    else {"host": view.host}
                if full and stream == "stderr":
                    head[other] = ""
                text = json.dumps(head, ensure_ascii=False)[:-1] + f', "{stream}": "'
                await resp.write((b"," if i else b"") + text.encode())
                enc = _JsonText()
                async for piece in request.app[SOURCE].read_stream(view, stream):
                    await resp.write(enc.encode(piece))
                    sent += len(piece)
                tail = f'", "{other}": ""}}' if full and stream == "stdout" else '"}'
                await resp.write(enc.encode(b"", final=True) + tail.encode())
            await resp.write(b'],"err":""}')
        except ConnectionError:
            return resp
        except LogshipError as exc:  # begun: cut, never a second answer inside this one
            abort_transfer(request, exc)
            return resp
        finally:
            request.app[METRICS].bytes_out += sent
        await resp.write_eof()
        return resp

    return handler


def _text_route(stream: str) -> Handler:
    """/stdout.txt: each host's bytes under a `HOST:` line, hosts apart by an empty line — ibex's layout."""

    async def handler(request: web.Request) -> web.StreamResponse:
        _, views = await _views(request)
        if (missing := _missing(views)) is not None:
            return missing
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            for i, view in enumerate(views):
                await resp.write((b"\n\n" if i else b"") + view.host.encode() + b":\n")
                async for piece in request.app[SOURCE].read_stream(view, stream):
                    await resp.write(piece)
                    request.app[METRICS].bytes_out += len(piece)
        except ConnectionError:
            return resp
        except LogshipError as exc:  # begun: cut, never a second answer inside this one
            abort_transfer(request, exc)
            return resp
        await resp.write_eof()
        return resp

    return handler


def _missing(views: list[LogView]) -> web.Response | None:
    """A 416 naming the first range a host's log does not hold (its stream would run across it), else None."""
    for view in views:
        if missing := view.missing(0, view.size):
            return missing_answer(view, missing)
    return None


for _stream in STREAMS:
    routes.get(f"/ibex/v1/task/{{id}}/{_stream}")(_json_route(_stream, True))
    routes.get(f"/ibex/v1/task/{{id}}/{_stream}.json")(_json_route(_stream, False))
    routes.get(f"/ibex/v1/task/{{id}}/{_stream}.txt")(_text_route(_stream))


# --- the OpenAPI entries (api/openapi.py merges them) ------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    id_param = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^(0|[1-9][0-9]{0,18})$"},
                "description": "the ibex task id (the logs are `ibex-<id>/<host>`, redos `ibex-<id>.<n>`)"}
    host_param = {"name": "host", "in": "query", "schema": {"type": "string",
                                                            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                  "description": "only this host"}
    errors = {"400": {"$ref": "#/components/responses/BadRequest"},
              "401": {"$ref": "#/components/responses/Unauthorized"},
              "404": {"$ref": "#/components/responses/NotFound"},
              "502": {"$ref": "#/components/responses/StoreError"},
              "503": {"$ref": "#/components/responses/StoreUnavailable"}}
    text = {"type": "string", "description": "the whole stream, invalid UTF-8 replaced (exact bytes: .txt)"}
    paths: dict[str, Any] = {}
    for s in STREAMS:
        row = {"type": "object", "required": ["id", "host", "status", "stdout", "stderr"], "properties": {
            "id": {"type": "integer"}, "host": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "success", "failed", "killed"]},
            "stdout": text if s == "stdout" else {"const": ""}, "stderr": text if s == "stderr" else {"const": ""}}}
        short = {"type": "object", "required": ["host", s], "properties": {"host": {"type": "string"}, s: text}}

        def envelope(item: dict[str, Any]) -> dict[str, Any]:
            return {"application/json": {"schema": {"type": "object", "required": ["dat", "err"], "properties": {
                "dat": {"type": "array", "items": item}, "err": {"const": ""}}}}}

        paths[f"/ibex/v1/task/{{id}}/{s}"] = {"get": {
            "operationId": f"ibexTask{s.capitalize()}", "tags": ["ibex"],
            "summary": f"Every host's whole {s} of an ibex task, as ibex's task-host rows",
            "parameters": [id_param],
            "responses": {"200": {"description": "one row per host, sorted by host; streamed",
                                  "content": envelope(row)}, **errors}}}
        paths[f"/ibex/v1/task/{{id}}/{s}.json"] = {"get": {
            "operationId": f"ibexTask{s.capitalize()}Json", "tags": ["ibex"],
            "summary": f"Every host's whole {s} (or one host's), as ibex's {{host, {s}}} list",
            "parameters": [id_param, host_param],
            "responses": {"200": {"description": "one element per host, sorted by host; streamed",
                                  "content": envelope(short)}, **errors}}}
        paths[f"/ibex/v1/task/{{id}}/{s}.txt"] = {"get": {
            "operationId": f"ibexTask{s.capitalize()}Text", "tags": ["ibex"],
            "summary": f"Every host's whole {s}, byte-exact: `HOST:` then its bytes, hosts apart by an empty line",
            "parameters": [id_param],
            "responses": {"200": {"description": "the text", "content": {"text/plain": {"schema": {
                "type": "string"}}}}, **errors}}}
    return paths
