"""The fan-out of a followed log: one reading of its new bytes, each event encoded once, the same bytes
written to every follower that is caught up.

A follower reads the log itself (api/tail.py, Cursor) until it has everything there is; then, if it is
where the fan-out is, it joins the fan-out (`join`) and its own task sleeps: no wake-up, no read and no
encoding of its own per event. The fan-out's task reads each change once (a Cursor of its own; the first
follower to join hands its cursor over), encodes the events once per wire form (Batch: WebSocket frames,
SSE chunks) and writes them to each live follower's transport in one loop. At 1,000 followers a task per
follower per event was ~60 µs each, ~60 ms per event before the last one was served; the loop is a
send() each.

A live follower whose socket does not keep up (more than LIVE_BUFFER unsent) leaves the fan-out at the
offset it has, and reads on by itself again with backpressure (its own cursor, aiohttp's drain), as
every follower did before; it joins again once caught up. So no client is dropped or buffered without
bound, and a slow one costs only itself. If the fan-out's reading fails, every live follower goes back to
its own cursor, which meets the same condition and answers it as before (an error event, a wait for the
store). At the log's end the fan-out writes the end event and each follower closes as it would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSCloseCode

from .hub import Feed
from .messages import Event

if TYPE_CHECKING:
    from .metrics import Metrics
    from .tail import Cursor

log = logging.getLogger("logship.api.tail")

CAST_BYTES = 64 << 10  # log bytes per fan-out step: what a live follower's buffer can gain per step
LIVE_BUFFER = 64 << 10  # unsent bytes of a live follower above which it leaves the fan-out (reads on alone)


class Batch:
    """Events encoded once for every follower: as WebSocket text frames and as SSE events (each made on
    first use and then shared)."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = b"".join(_frame(e.text.encode()) for e in self.events)
        return self._ws

    @property
    def sse(self) -> bytes:
        """The SSE events of the batch, as api/tail.py's _SSE.send writes them."""
        if self._sse is None:
            self._sse = sse_text(self.events).encode()
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """`sse` as one HTTP/1.1 chunk (a chunked response's body is written in such pieces)."""
        if self._sse_chunk is None:
            self._sse_chunk = b"%x\r\n%s\r\n" % (len(self.sse), self.sse)
        return self._sse_chunk


def sse_text(events: list[Event]) -> str:
    return "".join(f"id: {e.after}\ndata: {e.text}\n\n" if e.after >= 0 else f"data: {e.text}\n\n" for e in events)


def _frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 §5.2): what a server sends."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class LiveSink(Protocol):
    closing: bool

    def write_live(self, batch: Batch) -> bool:
        """Write the batch now, without waiting; False (nothing written) if the client is gone, is closing,
        or has more than LIVE_BUFFER unsent."""


class Live:
    """A follower in the fan-out: its sink, and how it left (`left`: None to read on alone from `pos`,
    or the close code of its end)."""

    def __init__(self, fanout: Fanout, sink: LiveSink) -> None:
        self.fanout = fanout
        self.sink = sink
        self.pos = 0
        self.left: asyncio.Future[WSCloseCode | None] = asyncio.get_running_loop().create_future()

    def leave(self, pos: int, code: WSCloseCode | None = None) -> None:
        if not self.left.done():
            self.pos = pos
            self.left.set_result(code)


class Fanout:
    """The fan-out of one feed: the cursor that reads for the live followers, and its task."""

    def __init__(self, feed: Feed, cursor: Cursor, metrics: Metrics) -> None:
        self.feed = feed
        self.cursor = cursor
        cursor.batch = CAST_BYTES
        self.metrics = metrics
        self.live: dict[Live, None] = {}  # insertion-ordered: the first to join is served first
        self.pos = cursor.pos  # where every live follower is: the offset after the last batch written
        self.ended = False
        self.task = asyncio.create_task(self._run(), name=f"tail-fanout {feed.key[0]}/{feed.key[1]}")

    async def _run(self) -> None:
        feed, cursor = self.feed, self.cursor
        try:
            while not feed.failed:
                generation = feed.generation
                before = self.pos
                try:
                    events = await cursor.step()
                except Exception as exc:  # noqa: BLE001  each follower meets it again on its own cursor, and answers it
                    log.debug("tail fan-out of %s/%s stops: %r", *feed.key[:2], exc)
                    self._release(before)
                    return
                if events:
                    self._cast(events, before)
                self.pos = cursor.pos
                if cursor.done:
                    self._release(cursor.pos, WSCloseCode.OK)
                    return
                if events:
                    await asyncio.sleep(0)  # let the transports flush, and others run, between steps
                    continue
                while True:  # as a follower waits (api/tail.py _pump): from the store only on a new manifest
                    await feed.wait(generation)
                    if feed.failed or feed.generation != generation or feed.local:
                        break
        finally:
            self.ended = True
            if feed.fanout is self:
                feed.fanout = None
            self._release(self.pos)
            with contextlib.suppress(Exception):
                await cursor.close()

    def _cast(self, events: list[Event], before: int) -> None:
        batch = Batch(events)
        served = 0
        cpu = time.thread_time()  # what a write costs, against a plain send's (python -m bench.fanout_floor)
        for live in list(self.live):
            if live.sink.write_live(batch):
                served += 1
            else:  # gone, closing, or slow: it reads on by itself from where it is (or its task ends)
                del self.live[live]
                live.leave(before)
        m = self.metrics
        m.fanout_cpu += time.thread_time() - cpu
        m.fanout_writes += served
        for e in events:
            m.tail_messages += served * (e.data_bytes > 0)
            m.tail_skipped_bytes += served * e.skipped_bytes
        m.bytes_out += served * sum(len(e.text) for e in events)

    def _release(self, pos: int, code: WSCloseCode | None = None) -> None:
        live, self.live = self.live, {}
        for f in live:
            f.leave(pos, code)


def join(feed: Feed, cursor: Cursor, sink: LiveSink, metrics: Metrics) -> Live | None:
    """Make a caught-up follower live, if it is where the fan-out is (or start the fan-out with its cursor,
    which it then no longer owns). None: not now, read on alone. Call with no await since the cursor's
    last step found nothing new, so that its offset is still the end of what it saw."""
    if feed.failed or cursor.done or sink.closing:
        return None
    fanout = feed.fanout
    if fanout is None:
        fanout = feed.fanout = Fanout(feed, cursor, metrics)
    elif fanout.ended or fanout.pos != cursor.pos:
        return None
    live = Live(fanout, sink)
    fanout.live[live] = None
    return live


async def wait_live(live: Live, idle_every: float | None, idle: LiveIdle) -> WSCloseCode | None:
    """Sleep while live; every `idle_every` seconds (None: never) call `idle` (SSE pings, a gone client noticed).
    Returns how it left (Live.left); a gone client returns None with the sink closing."""
    try:
        while not live.left.done():
            done, _ = await asyncio.wait((live.left,), timeout=idle_every)
            if not done:
                await idle()
                if live.sink.closing:
                    return None
        return live.left.result()
    finally:
        live.fanout.live.pop(live, None)


class LiveIdle(Protocol):
    async def __call__(self) -> None: ...
