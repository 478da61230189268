"""The log routes: one log's metadata, the whole log (Range, follow, progressive), all hosts (listing: listing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shipper.errors import LogshipError, ObjectNotFound
from shipper.format import index, manifest, names
from shipper.retry import QuietLog

from . import encoding, liveness, params
from .encoding import IDENTITY
from .errors import BadRequest, json_error
from .hub import Feed
from .indexback import scan_back, scan_forward
from .keys import CONFIG, HUB, METRICS, SOURCE, STOPPING, STORE, VIEW
from .lines import lines_before
from .listing import spool_rows
from .source import LogMoved, LogNotFound, LogView, Source

if TYPE_CHECKING:  # imported by the listing when first asked: pyarrow is 40 MB of an idle API (bench/README.md)
    pass

routes = web.RouteTableDef()
log = logging.getLogger("logship.api")
_quiet = QuietLog(log)
FOLLOW_POLL_SPOOL = 0.02  # seconds between looks at a growing spool file while following
MANIFEST_FETCH_CONCURRENCY = 16


# --- every log of a task (the all-hosts log); the listing is api/listing.py -------------------


async def _all_logs(app: web.Application, task: str | None) -> list[dict[str, Any]]:
    """A summary row for every log in the store and in the local spool (the spool's are fresher)."""
    store = app[STORE]
    objects = await store.list(names.task_prefix(task) if task else names.LOGS_PREFIX)
    keys = [(o.key, parsed) for o in objects
            if (parsed := names.parse_log_prefix(o.key)) and o.key == names.manifest_key(*parsed)]
    sem = asyncio.Semaphore(MANIFEST_FETCH_CONCURRENCY)

    async def fetch(key: str, log_id: tuple[str, str]) -> manifest.Manifest | None:
        async with sem:
            try:
                doc = manifest.Manifest.load(await store.get(key), *log_id)
            except ObjectNotFound:
                return None  # deleted meanwhile
            except manifest.ManifestError as exc:  # costs its own row, never the listing
                app[METRICS].damaged_manifests += 1
                _quiet.log(logging.WARNING, key, "listing leaves out %s: a damaged manifest (%s)", key, exc)
                return None
            return None if doc.status == manifest.DELETING else doc  # logship gc is deleting it

    rows = {(d.task, d.host): _summary(d) for d in await asyncio.gather(*(fetch(k, p) for k, p in keys)) if d}
    spool = app[CONFIG].spool_dir if app[SOURCE].spool else None
    if spool is not None:
        for row in await asyncio.to_thread(spool_rows, spool, task):
            prev = rows.get((row["task"], row["host"]))
            if prev is None or prev["run_id"] == row["run_id"]:
                rows[(row["task"], row["host"])] = row
    return list(rows.values())


def _summary(d: manifest.Manifest) -> dict[str, Any]:
    return {"task": d.task, "host": d.host, "run_id": d.run_id, "status": d.status, "exit_code": d.exit_code,
            "started_ns": d.started_ns, "ended_ns": d.ended_ns, "size": d.size, "lines": d.lines,
            "labels": d.labels, "command": list(d.command)}


# --- one log ---------------------------------------------------------------------------------


@routes.get("/api/v1/tasks/{task}/hosts/{host}")
async def get_log_meta(request: web.Request) -> web.Response:
    view = await _view(request)
    doc = (view.doc if view.doc is not None else manifest.Manifest.build(
        view.run, view.exit, view.status, [], None, [], request.app[CONFIG].store.compression)).to_json()
    doc.update(status=view.status, live_size=view.size, exit_code=(view.exit or {}).get("exit_code"),
               ended_ns=(view.exit or {}).get("ended_ns"))
    doc.pop("liveness", None)  # the manifest's stored form; the answer's is api/liveness.py's
    if (live := await liveness.of_view(request.app[STORE], view)) is not None:
        doc["liveness"] = live  # the agent's last look at the task: from the spool, else the store
    return web.json_response(doc)


async def _view(request: web.Request) -> LogView:
    """The proxy middleware's view of the log if it took one (api/keys.py VIEW), else a view of our own."""
    if VIEW in request:
        return request[VIEW]
    return await request.app[SOURCE].view(request.match_info["task"], request.match_info["host"])


@routes.get("/api/v1/tasks/{task}/hosts/{host}/log")
async def get_log(request: web.Request) -> web.StreamResponse:
    stream = params.choice(request, "stream", ("stdout", "stderr"))
    follow = params.flag(request, "follow")
    start_param = params.offset(request, "start")
    view = await _view(request)
    # Ranges and ?start= are of the log's bytes: identity (api/encoding.py says why).
    coding = IDENTITY if "Range" in request.headers or start_param is not None else encoding.choose(
        request.headers.get("Accept-Encoding"))

    headers = {"Content-Type": "text/plain; charset=utf-8", "ETag": view.etag, "Accept-Ranges": "bytes",
               "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if stream is not None:
        if start_param is not None:
            raise BadRequest("start= cannot be combined with stream=", "offsets are the whole log's: use one")
        if missing := view.missing(0, view.size):
            return missing_answer(view, missing)
        resp = web.StreamResponse(headers=headers | encoding.headers(coding))
        del resp.headers["Accept-Ranges"]  # byte offsets are the whole log's, not the stream's (Range is ignored)
        del resp.headers["ETag"]  # the whole log's validator does not describe one stream's bytes
        return await _send(request, resp, view, 0, None, follow, stream, coding)

    if start_param is not None:  # progressive mode for pollers
        if start_param > view.size:
            return json_error(416, "bad_range", f"start={start_param} is past the end of the log ({view.size})",
                              "poll again from X-Log-Size of the last answer",
                              headers={"Content-Range": f"bytes */{view.size}"})
        # An answer ends at the first byte the log does not hold; asked from there, a 416 names the range
        # (`missing`), and the poller goes on after it. So every byte it gets is at its offset.
        missing = view.missing(start_param, view.size)
        if missing and missing[0][0] == start_param:
            return missing_answer(view, missing)
        stop = missing[0][0] if missing else view.size
        headers.update({"X-Log-Size": str(view.size),
                        "X-More-Data": "false" if view.finished and stop == view.size else "true"})
        resp = web.StreamResponse(headers=headers)
        if not follow or missing:
            resp.content_length = stop - start_param
            return await _send(request, resp, view, start_param, stop, False, None)
        return await _send(request, resp, view, start_param, None, True, None)

    current = encoding.etag(view.etag, coding)
    if encoding.none_match(request.headers.get("If-None-Match"), current):  # RFC 9110 13.1.2, before Range
        return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"}
                            | {"ETag": current})
    rng_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if rng_header is not None and if_range is not None and not view.etag_matches(if_range):
        rng_header = None  # the client's copy is of another run: send it the whole log
    try:
        rng = params.byte_range(rng_header, view.size)
    except params.RangeError as exc:
        return json_error(416, "bad_range", str(exc), "ask for one range within the log's size (HEAD or the "
                          "/hosts/{host} route give it)", headers={"Content-Range": f"bytes */{view.size}"})
    start, end = rng if rng is not None else (0, view.size)
    if missing := view.missing(start, end):
        return missing_answer(view, missing)
    if rng is not None:
        resp = web.StreamResponse(status=206, headers=headers)
        total = str(view.size) if view.finished else "*"
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        resp.content_length = end - start
        return await _send(request, resp, view, start, end, False, None)

    # Another representation per coding: its own (weak) validator, and a length only when known in advance
    # (identity of a finished log; zstd of a finished log the store holds as zstd, its frames sent as stored).
    resp = web.StreamResponse(headers=headers | encoding.headers(coding) | {"ETag": current})
    if view.finished:
        resp.content_length = view.size if coding == IDENTITY else encoding.passthrough_size(view, coding)
    return await _send(request, resp, view, 0, None if follow else view.size, follow, None, coding)


def missing_answer(view: LogView, missing: list[tuple[int, int]]) -> web.Response:
    """416 for a request of bytes the log does not hold: JSON naming the ranges (`missing`, [from, to)
    pairs), so a client asks around them. Never a 2xx with fewer bytes, or later bytes moved up."""
    exc = view.missing_error(missing)
    body = {"error": exc.code, "detail": exc.detail, "hint": exc.hint, "missing": [list(m) for m in missing]}
    return web.json_response(body, status=416, headers={"Content-Range": f"bytes */{view.size}"})


def abort_transfer(request: web.Request, exc: BaseException) -> None:
    """An answer already begun cannot become an error answer (finding: an HTTP response inside the body of
    another): it is cut instead — the connection closes without the last chunk, or short of its
    Content-Length — so the client sees a failed transfer, never a complete one with other bytes. What
    was sent before is good (checked) and stays usable for a resume."""
    request.app[METRICS].transfers_aborted += 1
    _quiet.log(logging.WARNING, request.path, "%s %s: answer cut after it began: %s", request.method,
               request.path_qs, exc)
    if request.transport is not None:
        request.transport.close()


async def _send(request: web.Request, resp: web.StreamResponse, view: LogView, start: int, end: int | None,
                follow: bool, stream: str | None, coding: str = IDENTITY) -> web.StreamResponse:
    """Write [start, end) of the log (end=None: to its end; with follow, until the task ends), in `coding`
    (api/encoding.py; a finished log's whole answer passes its stored zstd frames through).

    The first piece is read before the headers go out: an object that fails its check, or is missing,
    before any byte is sent gets a JSON error (4xx/5xx) rather than a 200 that breaks off. Once the answer
    has begun, such an error cuts it (abort_transfer)."""
    metrics = request.app[METRICS]
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    whole = coding != IDENTITY and view.finished and stream is None
    body = (encoding.whole(request.app[SOURCE], view, coding) if whole
            else _body(request, view, start, end, follow, stream))
    if coding != IDENTITY and not whole:
        body = encoding.compress(body, coding, live=follow)
    async with contextlib.aclosing(body):
        first = b""
        if (coding != IDENTITY and not follow) or (start < view.size and not (follow and stream)):
            first = await anext(body, b"")
        await resp.prepare(request)
        metrics.answers += 1  # api/heap.py trims the heap only when none are in flight
        if follow:
            metrics.followers += 1
        try:
            if first:
                await resp.write(first)
                metrics.bytes_out += len(first)
                first = b""  # not held for the whole answer (a decompressed piece: 256 KiB per download)
            async for piece in body:
                await resp.write(piece)
                metrics.bytes_out += len(piece)
            await resp.write_eof()  # inside: a client gone before the last chunk is the same case
        except ConnectionError:
            # The client went away (curl stopped to resume later, a tab closed): routine, and there is no one
            # to answer. aiohttp would log it as an error with a traceback for every such download.
            metrics.client_gone += 1
            return resp
        except LogshipError as exc:
            abort_transfer(request, exc)
            return resp
        except ShuttingDown:
            # Not the log's end: the answer ends as a failed transfer (no last chunk), so the client knows
            # to resume (?start= or Range) from what it has, from this API once back or from another.
            if request.transport is not None:
                request.transport.close()
            return resp
        finally:
            metrics.answers -= 1
            if follow:
                metrics.followers -= 1
    return resp


class ShuttingDown(Exception):
    """A followed answer is cut because the API is stopping."""


async def _body(request: web.Request, view: LogView, start: int, end: int | None, follow: bool,
                stream: str | None) -> AsyncGenerator[bytes, None]:
    source = request.app[SOURCE]
    pos = start
    async with contextlib.AsyncExitStack() as stack:
        feed: Feed | None = None
        while True:
            stop = view.size if end is None else min(end, view.size)
            pieces = source.read(view, pos, stop) if stream is None else source.read_stream(view, stream, pos, stop)
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    yield piece
            pos = stop
            if not follow or view.finished or (end is not None and pos >= end):
                return
            if feed is None:  # the tail's poller of the log, shared by all its followers (hub.py)
                feed = await stack.enter_async_context(request.app[HUB].follow(view.task, view.host, view.spool_dir))
            stopping = request.app[STOPPING]
            fresh = await (_wait_feed(source, feed, view, pos, stopping) if feed.key[2] is None and
                           view.spool_dir is None else _wait_spool(source, feed, view, pos, stopping))
            if fresh is None:
                raise ShuttingDown
            view = fresh


async def _wait_growth(source: Source, view: LogView, pos: int, stopping: asyncio.Event) -> LogView | None:
    """The next view of a running log that holds more than `pos` bytes, or has ended; None at shutdown."""
    poll = FOLLOW_POLL_SPOOL if view.spool_dir is not None else 1.0
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), poll)
            return None
        except TimeoutError:
            pass
        fresh = await source.refresh(view)  # from the store alone: one LIST a second (docs/checkpoints.md §6)
        if fresh.size > pos or fresh.finished:
            return fresh


async def _wait_spool(source: Source, feed: Feed, view: LogView, pos: int, stopping: asyncio.Event) -> LogView | None:
    """_wait_growth for a log beside the spool, woken by the tail's spool poller (api/hub.py: a 1 ms look shared
    by every follower of the log). A woken follower's next view is from the spool alone (Reader.refresh keeps
    the view's manifest unless the spool shows what it cannot explain), and the spool is read once for all the
    followers one change woke: N followers cost no store request per look, not N manifest GETs each 20 ms."""
    task, host = view.task, view.host
    while not stopping.is_set():
        if feed.failed or view.spool_dir is None or view.spool_dir != feed.key[2]:  # not this feed's: look alone
            return await _wait_growth(source, view, pos, stopping)
        generation = feed.generation  # read before looking: a change meanwhile wakes us
        fresh = await source.refresh(view, feed.spool_state(
            lambda: asyncio.to_thread(source.spool_state, task, host)))
        if fresh.run.get("run_id") != view.run.get("run_id"):  # deleted, and a new run under its name
            raise LogMoved(f"{view.task}/{view.host} is another run now", "ask again (If-Range keeps a copy "
                           "of this run from mixing with the new one's bytes)")
        if fresh.size > pos or fresh.finished:
            return fresh
        view = fresh  # a whole view taken (after a prune) is the base of the next look: not one per wake-up
        await feed.wait(generation)
    return None


async def _wait_feed(source: Source, feed: Feed, view: LogView, pos: int, stopping: asyncio.Event) -> LogView | None:
    """_wait_growth for a log read from the store alone, from the store poller's views (api/hub.py): N followers
    of one log cost its one LIST a poll between them, not one each. The poller wakes us at each change and at
    least every STORE_POLL_S, and at shutdown (api/tail.py on_shutdown, after STOPPING is set)."""
    while not stopping.is_set():
        if feed.failed:  # the poller died: look ourselves, as before it
            return await _wait_growth(source, view, pos, stopping)
        generation, seen = feed.generation, feed.view  # read before looking: a change meanwhile wakes us
        if feed.polled and seen is None:
            # It cannot read the log (deleted, its manifest damaged, none yet): look ourselves once per wake-up,
            # and end with the error a look of our own meets, as a follower polling alone did.
            seen = await source.refresh(view)
        if seen is not None and seen is not view and (seen.size > pos or seen.finished):
            if seen.run.get("run_id") != view.run.get("run_id"):  # deleted, and a new run under its name
                raise LogMoved(f"{view.task}/{view.host} is another run now", "ask again (If-Range keeps a copy "
                               "of this run from mixing with the new one's bytes)")
            return seen
        await feed.wait(generation)
    return None


# --- the chunk index of a byte range (the web page's line numbers, streams and timestamps) -----------

INDEX_MAX_CHUNKS = 20_000  # per answer; `more` says to ask again from the last chunk's end
INDEX_COLUMNS = ["offset", "length", "lines", "stream", "flags", "ts"]


@routes.get("/api/v1/tasks/{task}/hosts/{host}/index")
async def get_log_index(request: web.Request) -> web.Response:
    """The index records overlapping [start, end), and `line`: how many lines end before the first one.

    A client that reads the bytes of these chunks (Range) knows each line's number, stream and time
    exactly, wherever in a large log it starts; chunks are cut at line ends per stream (docs/format.md).
    With `last=N` (and `stream=`), the last N records before `end` instead; with `stream=` alone, that stream's
    records from `start` (api/indexback.py).
    """
    start = params.offset(request, "start") or 0
    end_param = params.offset(request, "end")
    last = params.integer(request, "last", None, 1, INDEX_MAX_CHUNKS)
    stream = params.choice(request, "stream", ("stdout", "stderr"))
    view = await _view(request)
    if start > view.size:
        return json_error(416, "bad_range", f"start={start} is past the end of the log ({view.size})",
                          "ask for offsets within the log's size", headers={"Content-Range": f"bytes */{view.size}"})
    end = view.size if end_param is None else min(end_param, view.size)
    source = request.app[SOURCE]
    code = index.STREAM_CODES[stream] if stream else None
    back = None  # a scan for a line's start or end (api/indexback.py)
    if last is not None:
        back = await scan_back(source, view, start, end, last, code)
    elif code is not None:
        back = await scan_forward(source, view, start, end, INDEX_MAX_CHUNKS, code)
    if back is not None:
        return web.json_response({"size": view.size, "status": view.status, "line": back.line,
                                  "columns": INDEX_COLUMNS, "chunks": [_record(c) for c in back.chunks],
                                  "more": back.more, ("from" if last is not None else "to"): back.start},
                                 headers={"Cache-Control": "no-cache"})
    rows: list[list[Any]] = []
    line: int | None = None
    more = False
    for part in view.parts:
        if part.end <= start or part.offset >= end or more:
            continue
        chunks = await source.chunks(view, part)
        for c in chunks:
            if c.end <= start or c.offset >= end:
                continue
            if line is None:
                line = await lines_before(source, view, part.seq, part.offset) + \
                    sum(x.lines for x in chunks if x.end <= c.offset)
            if len(rows) == INDEX_MAX_CHUNKS:
                more = True
                break
            rows.append(_record(c))
    if line is None and start == view.size:  # nothing after: every line of the log ends before `start`
        line = await lines_before(source, view, max((p.seq for p in view.parts), default=0) + 1)
    return web.json_response({"size": view.size, "status": view.status, "line": line, "columns": INDEX_COLUMNS,
                              "chunks": rows, "more": more}, headers={"Cache-Control": "no-cache"})


def _record(c: index.Chunk) -> list[Any]:
    return [c.offset, c.length, c.lines, c.stream_name, c.flags, c.ts_ns]


# --- every host of a task --------------------------------------------------------------------


@routes.get("/api/v1/tasks/{task}/log")
async def get_task_log(request: web.Request) -> web.StreamResponse:
    task = names.check_id("task", request.match_info["task"])
    rows = await _all_logs(request.app, task)
    if not rows:
        raise LogNotFound(f"no log of task {task}", "list logs with GET /api/v1/tasks")
    rows.sort(key=lambda r: r["host"])
    source = request.app[SOURCE]
    views = [await source.view(task, row["host"]) for row in rows]
    for view in views:
        if missing := view.missing(0, view.size):
            return missing_answer(view, missing)
    coding = encoding.choose(request.headers.get("Accept-Encoding"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
                                       "Vary": "Accept-Encoding"} | encoding.headers(coding))
    await resp.prepare(request)
    if request.method == "HEAD":  # the headers only: a body here would be read as the connection's next answer
        return resp
    body = _hosts_body(source, task, views)
    if coding != IDENTITY:
        body = encoding.compress(body, coding)
    try:
        async with contextlib.aclosing(body):  # closed when the client goes
            async for piece in body:
                await resp.write(piece)
        await resp.write_eof()  # the last chunk too: a client gone by then is the same routine case
    except ConnectionError:  # the client stopped reading (`| head`, a closed tab): counted, not an error
        request.app[METRICS].client_gone += 1
    except LogshipError as exc:
        abort_transfer(request, exc)
    return resp


async def _hosts_body(source: Source, task: str, views: list[LogView]) -> AsyncGenerator[bytes, None]:
    for view in views:
        yield f"==> {task}/{view.host} ({view.status}, {view.size} bytes) <==\n".encode()
        last = b"\n"
        async with contextlib.aclosing(source.read(view, 0, view.size)) as pieces:
            async for piece in pieces:
                yield piece
                last = piece[-1:]
        if last != b"\n":
            yield b"\n"
