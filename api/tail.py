"""The live tail (`GET …/tail`, WebSocket or SSE): where a follower starts, its cursor over the log, the messages.

Each follower owns a cursor (a byte offset) and reads the log itself, from the spool segment it is in
(fds held across seal and prune, the index read incrementally) or from the store's segments and
checkpoint. The hub (api/hub.py) only wakes followers when the log changes. So a slow follower is held
back by its own socket's backpressure: it lags, then catches up from disk or store, and is never dropped;
nobody else waits for it and no per-client queue grows (memory stays flat). A follower that reconnects
with the offset after its last message (`from=`, or SSE `Last-Event-ID`) continues with no gap and no
duplicate. Bytes that no longer exist (dropped at the spool quota) are announced with a `skipped` event.

Messages (JSON text): data `{"offset", "ts", "stream", "data"}`, one per index chunk (a chunk is cut
into pieces of at most MESSAGE_BYTES, at a UTF-8 boundary; the first piece starts at `from` when it
falls mid-chunk); `{"event": "skipped", "from", "to", "bytes"}`; `{"event": "end", "status",
"exit_code", "signal", "size"}` once the task ended and the follower has everything, then the connection
closes; `{"event": "error", "error", "detail", "hint"}` before closing on a failure. SSE events are
plain `message`s whose `id:` is the offset after the event; EventSource reconnects by itself, so a
browser client must close on `end`.

Start: `Last-Event-ID` (SSE) overrides `from`; without `from`, the last `lines` lines (default
DEFAULT_LINES). `from` past the end is allowed while the log runs (the follower waits for the bytes;
if the log ends shorter, an error event); on a finished log it is a 416, and `from` = size gives the
end event at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import WSCloseCode, web

from shipper.errors import DamagedObject, LogshipError, StoreError, StoreUnavailable
from shipper.format import index, names
from shipper.format.archive import IntegrityError
from shipper.retry import QuietLog

from . import fanout, params
from .errors import BadRequest, json_error
from .hub import BATCH_BYTES, Feed, Hub, SegmentReader
from .keys import CONFIG, HUB, METRICS, SINKS, SOURCE, VIEW
from .messages import Event, end_event, error_event, skipped_event
from .sinks import PING_S, SSE, Sink, WebSocket
from .source import LogMoved, LogView, Part, Source

routes = web.RouteTableDef()
log = logging.getLogger("logship.api.tail")
_quiet = QuietLog(log)

DEFAULT_LINES = 100  # a screenful and some context, as a log page opens
MAX_LINES = 100_000



class Cursor:
    """One follower's position in a log and the reading that moves it: `step()` gives the next events."""

    def __init__(self, source: Source, feed: Feed, pos: int, view: LogView | None = None) -> None:
        self.source = source
        self.feed = feed
        self.memo = feed.memo
        self.task, self.host = feed.key[0], feed.key[1]
        self.pos = pos
        self.done = False
        self._view = view  # used by the next locate, then the next one is taken (_next_view)
        self._last = view  # the newest view located in: a store-only log's next one follows on from it
        self._whole = False  # the next locate takes a whole view (a hole to confirm, a part moved away)
        self._reader: SegmentReader | None = None
        self._store: AsyncGenerator[list[Event], None] | None = None
        self._gap_checked = False
        self.batch = BATCH_BYTES  # log bytes per step at most (the fan-out's cursor takes smaller steps)

    async def step(self) -> list[Event]:
        """Events from the cursor on; [] when there is nothing new yet (wait for a wake-up)."""
        out: list[Event] = []
        for _ in range(8):  # a few hops (segment to segment, spool to store), then let the caller send
            if self._store is not None:
                try:
                    out += await anext(self._store)
                except StopAsyncIteration:
                    await self._drop_store()
                except LogMoved:  # replaced again and again while read: read on from a fresh view
                    await self._drop_store()
                    self._view, self._whole = None, True
            elif self._reader is not None:
                if not await self._step_reader(out):
                    return out  # nothing new in the segment yet
            elif not await self._locate(out) or self.done:
                return out
            if out:
                return out
        return out

    async def _step_reader(self, out: list[Event]) -> bool:
        """Read the spool segment on; False if it has nothing new yet (it may grow)."""
        r = self._reader
        assert r is not None
        size = 0
        while size < self.batch and (hit := self.memo.next(self.pos, r.seq)) is not None:
            out += hit.events  # another follower read this chunk already
            size += hit.end - self.pos
            self.pos, r.idx_pos = hit.end, hit.idx_end
        if out:
            return True
        try:
            chunks, data, start = await r.read(self.batch)
            if not chunks:
                if not r.complete(self.feed.spool):
                    return False
                # complete now, so a read from here on gets the rest of the segment, however late it was written
                chunks, data, start = await r.read(self.batch)
        except IntegrityError as exc:
            self.source.note(exc)
            raise
        idx = r.idx_pos - len(chunks) * index.RECORD_SIZE
        for c in chunks:
            idx += index.RECORD_SIZE
            if c.end <= self.pos:
                continue
            if c.offset > self.pos:
                out.append(skipped_event(self.pos, c.offset))
            a = max(c.offset, self.pos)
            # B023: events() calls the lambda before it returns, in this iteration
            out += self.memo.events(c, a, lambda: data[a - start:c.end - start], r.seq, idx)  # noqa: B023
            self.pos = c.end
        if chunks:
            return True
        r.close()
        self._reader = None
        try:  # the usual next step, without a view: the agent's next segment
            self._reader = SegmentReader(r.dir, r.seq + 1, self.pos)
        except FileNotFoundError:
            self._view = None  # ended, or the next segment already left the spool: locate from a view
        return True

    async def _locate(self, out: list[Event]) -> bool:
        """Find the part holding the cursor and start reading it; False if there is nothing to read yet."""
        view = self._view or await self._next_view()
        self._view = None
        part = next((p for p in view.parts if p.end > self.pos), None)
        if part is not None and part.offset > self.pos and not self._gap_checked:
            # A view can show a hole that is not one: a segment committed and pruned between its
            # manifest GET and its look at the spool. Only a hole a fresh view still has was dropped.
            self._gap_checked = self._whole = True
            return True
        self._gap_checked = False
        if part is None:
            if view.finished:
                self.done = True
                out.append(end_event(view) if self.pos == view.size else error_event(
                    "bad_range", f"from={self.pos} is past the end of the log ({view.size} bytes)",
                    "resume from an offset this log's messages gave"))
            return False
        if part.offset > self.pos:  # dropped at the spool quota
            out.append(skipped_event(self.pos, part.offset))
            self.pos = part.offset
        if part.kind in ("spool", "open"):
            assert view.spool_dir is not None
            try:
                self._reader = SegmentReader(view.spool_dir, part.seq, self.pos)
            except FileNotFoundError:
                return True  # pruned since the view was taken: the next view has it from the store
        else:
            # Followers of a store-only log wake together at each new checkpoint: one fetches and
            # decompresses it, the others take its chunks from the memo.
            size = 0
            while (size < self.batch and (hit := self.memo.items.get(self.pos)) is not None
                   and hit.end <= part.end):
                out += hit.events
                size += hit.end - self.pos
                self.pos = hit.end
            if self.pos < part.end:
                self._store = self._read_store(view, part)
            else:
                self._view = view  # still good for finding the next part
        return True

    async def _next_view(self) -> LogView:
        """The view the next locate looks in. Beside the spool a whole one: the spool moves under any view.
        From the store alone (issue 14) never a whole view per wake-up: the store poller's newest (api/hub.py:
        it woke us, so it costs no request), else the last one followed on by Reader.refresh (one LIST; the
        manifest only when the listing shows it changed, at a seal or the end). A whole view only after a
        part moved away under a view, or to confirm a hole."""
        last, seen = self._last, self.feed.view
        if self.feed.local or self._whole or (last is None and seen is None):
            self._whole = False
            view = await self.source.view(self.task, self.host)
        elif seen is None:
            assert last is not None
            # The poller has not looked yet (it wakes us when it has), or it failed to read the log: then
            # follow on from ours, and meet the failure (a log deleted, a damaged manifest) ourselves.
            view = await self.source.refresh(last) if self.feed.polled else last
        else:  # the poller's, unless it saw nothing newer: then nothing past ours to find (it wakes us when it does)
            view = seen if last is None or _newer(seen, last) else last
        self._last = view
        return view

    async def _drop_store(self) -> None:
        if self._store is not None:
            await self._store.aclose()
            self._store = None

    async def _read_store(self, view: LogView, part: Part) -> AsyncGenerator[list[Event], None]:
        """The events of a store segment or checkpoint from the cursor on, a batch at a time.

        The cursor moves only as a batch is handed out: if the object goes (a replaced checkpoint),
        the next view carries on from the last event given, with no gap.
        """
        at = self.pos
        chunks = [c for c in await self.source.chunks(view, part) if c.end > at]
        buf, buf_at = bytearray(), at
        # Source.read is an async generator: close it when we stop early (cancelled, or a replaced checkpoint)
        pieces = self.source.read(view, at, part.end)
        async with contextlib.aclosing(pieces):
            batch: list[Event] = []
            for c in chunks:
                while buf_at + len(buf) < c.end:
                    piece = await anext(pieces, None)
                    if piece is None:  # the index names bytes the segment does not have: say so, send nothing
                        raise DamagedObject(f"the index of {view.task}/{view.host} segment {part.seq} ({part.kind}) "
                                            f"names bytes up to {c.end}, past the segment's end at {part.end}",
                                            "the log's index is damaged: tell the operator (the API logs it); GET "
                                            "…/log still gives the log's bytes")
                    buf += piece
                a = max(c.offset, at)
                # B023: events() calls the lambda before it returns, in this iteration
                batch += self.memo.events(c, a, lambda: bytes(buf[a - buf_at:c.end - buf_at]))  # noqa: B023
                del buf[:c.end - buf_at]
                buf_at = at = c.end
                if at - self.pos >= self.batch or c is chunks[-1]:
                    self.pos = at
                    yield batch
                    batch = []

    async def close(self) -> None:
        await self._drop_store()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _newer(a: LogView, b: LogView) -> bool:
    """Whether view `a` of a log is at least as far on as `b` (and not the same view)."""
    return a is not b and a.size >= b.size and (a.finished or not b.finished)


async def last_lines_offset(source: Source, view: LogView, n: int) -> int:
    """Where the last `n` lines of the view start (an unterminated last line counts), from the chunk index."""
    want: int | None = None  # newlines to pass, counting back from the end
    for part in reversed(view.parts):
        for c in reversed(await source.chunks(view, part)):
            if want is None:  # the log's last chunk: a whole-line chunk ends with \n, a partial one does not
                ends = not c.flags & index.PARTIAL if not c.flags & index.RECOVERED else \
                    b"".join([p async for p in source.read(view, c.end - 1, c.end)]) == b"\n"
                want = n + ends
            if n == 0:
                return c.end
            if c.lines < want:
                want -= c.lines
                continue
            data = b"".join([p async for p in source.read(view, c.offset, c.end)])
            at = len(data)
            for _ in range(want):
                at = data.rfind(b"\n", 0, at)
            return c.offset + at + 1
    return 0


# --- the route -----------------------------------------------------------------------------------


@routes.get("/api/v1/tasks/{task}/hosts/{host}/tail")
async def tail(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=PING_S, compress=False)
    upgrade = ws.can_prepare(request).ok
    if not upgrade and "text/event-stream" not in request.headers.get("Accept", ""):
        return json_error(406, "not_acceptable", "the tail is a WebSocket or a Server-Sent Events stream",
                          "open it as a WebSocket, or send 'Accept: text/event-stream'; "
                          "GET …/log?follow=true streams plain text")
    task = names.check_id("task", request.match_info["task"])
    host = names.check_id("host", request.match_info["host"])
    start = params.offset(request, "from")
    lines = params.integer(request, "lines", None, 0, MAX_LINES)
    if start is not None and lines is not None:
        raise BadRequest("from and lines were both given", "give from=<offset> to resume, or lines=N to begin "
                         "with the last N lines")
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if not upgrade and last_id:
        if not params.DIGITS.fullmatch(last_id):
            raise BadRequest(f"Last-Event-ID {last_id[:40]!r} is not an offset",
                             "send the id of the last event received (a whole number of up to 19 digits)")
        start = int(last_id)
    source = request.app[SOURCE]
    view = request[VIEW] if VIEW in request else await source.view(task, host)  # the proxy middleware's, if any
    if start is None:
        start = await last_lines_offset(source, view, DEFAULT_LINES if lines is None else lines)
    elif view.finished and start > view.size:
        return json_error(416, "bad_range", f"from={start} is past the end of the finished log ({view.size} bytes)",
                          "resume from an offset this log's messages gave, or use lines=N",
                          headers={"Content-Range": f"bytes */{view.size}"})
    sink: Sink = WebSocket(ws, request) if upgrade else SSE(request)
    metrics = request.app[METRICS]
    sinks = request.app[SINKS]
    async with request.app[HUB].follow(task, host, view.spool_dir) as feed:
        follower = _Follower(source, feed, sink, Cursor(source, feed, start, view))
        sinks.add(sink)
        metrics.followers += 1
        try:
            return await sink.run(lambda: _pump(request.app, follower))
        finally:
            metrics.followers -= 1
            sinks.discard(sink)
            await follower.drop_cursor()


class _Follower:
    """A follower's state across its two ways of being served: its own cursor, or the fan-out."""

    def __init__(self, source: Source, feed: Feed, sink: Sink, cursor: Cursor) -> None:
        self.source, self.feed, self.sink = source, feed, sink
        self.cursor: Cursor | None = cursor

    def own(self, pos: int) -> Cursor:
        """Its cursor; a new one from `pos` (and a fresh view) after the fan-out."""
        if self.cursor is None:
            self.cursor = Cursor(self.source, self.feed, pos)
        return self.cursor

    async def be_live(self, live: fanout.Live) -> WSCloseCode | None:
        """Served by the fan-out until it lets go: None to read on alone from `live.pos` (or the client
        went), else the close code of the end."""
        if live.fanout.cursor is self.cursor:
            self.cursor = None  # handed over: the fan-out reads with it now
        else:
            await self.drop_cursor()  # its fds and buffers are not needed while live
        return await fanout.wait_live(live, self.sink.idle_every, self.sink.idle)

    async def drop_cursor(self) -> None:
        if self.cursor is not None:
            cursor, self.cursor = self.cursor, None
            await cursor.close()


async def _pump(app: web.Application, follower: _Follower) -> WSCloseCode:
    """Send what the cursor reads, wait for the log to change, repeat, until the end or the client goes;
    once caught up, be served by the fan-out (api/fanout.py) until it lets go.
    Returns the WebSocket close code: OK, or after an error event BAD_GATEWAY (the store's object failed
    its check, or is missing: shipper/format/archive.py) or INTERNAL_ERROR."""
    metrics = app[METRICS]
    feed, sink = follower.feed, follower.sink
    pos = 0
    while not sink.closing:
        cursor = follower.own(pos)
        generation = feed.generation  # read before looking, so a change while we look is not missed
        try:
            events = await cursor.step()
        except StoreUnavailable as exc:  # keep the follower: it carries on from its offset once the store is back
            _quiet.log(logging.WARNING, "store", "tail of %s/%s waits for the store: %s", cursor.task, cursor.host,
                       exc)
            events = []
        except LogshipError as exc:
            if isinstance(exc, DamagedObject):
                log.warning("tail of %s/%s: %s", cursor.task, cursor.host, exc.detail)
            await sink.send([error_event(exc.code, exc.detail, exc.hint)])
            bad_gateway = isinstance(exc, (StoreError, DamagedObject))
            return WSCloseCode.BAD_GATEWAY if bad_gateway else WSCloseCode.INTERNAL_ERROR
        if events:
            await sink.send(events)
            for e in events:
                metrics.tail_messages += e.data_bytes > 0
                metrics.tail_skipped_bytes += e.skipped_bytes
                metrics.bytes_out += len(e.text)
        if cursor.done:
            return WSCloseCode.OK
        if events:
            continue
        live = fanout.join(feed, cursor, sink, metrics)  # no await since the step: its offset is still current
        if live is not None:
            code = await follower.be_live(live)
            if code is not None:
                return code
            pos = live.pos
            continue
        while not feed.failed:  # (checked first too: a follower the fan-out let go may find it failed)
            await feed.wait(generation)
            if feed.failed:
                break
            await sink.idle()
            # Without a wake-up, look again beside the spool only (cheap, and a safety net); from the
            # store only when its poller saw a new manifest, not one GET per follower per second.
            if sink.closing or feed.generation != generation or feed.local:
                break
        if feed.failed:
            await sink.send([error_event("internal", "the tail's watch of this log failed", "reconnect")])
            return WSCloseCode.INTERNAL_ERROR
    return WSCloseCode.OK


# --- app wiring ------------------------------------------------------------------------------------


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub lives as long as the app: its pollers are cancelled and awaited at cleanup."""
    hub = Hub(app[SOURCE], app[CONFIG].watch.checkpoint_seconds)
    app[HUB] = hub
    app[SINKS] = set()
    try:
        yield
    finally:
        await hub.close()


async def on_shutdown(app: web.Application) -> None:
    """Tell every follower to go: WebSockets close with GOING_AWAY (1001), SSE streams end as a failed
    transfer (no last chunk), as `…/log?follow=true` does (api/logs.py): not the log's end, so resume."""
    sinks = list(app.get(SINKS, ()))
    for sink in sinks:
        sink.closing = sink.shut = True  # before any pump runs again: it ends as a failed transfer, not cleanly
    if HUB in app:
        app[HUB].wake_all()
    await asyncio.gather(*(s.shutdown() for s in sinks), return_exceptions=True)
