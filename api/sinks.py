"""Where a follower's events go: a WebSocket or an SSE response (api/tail.py has the route and the reading).

Each writes events one way for its own follower (`send`, with aiohttp's backpressure) and one way for the
fan-out (`write_live`: bytes encoded once for all, written now or not at all). At the API's shutdown a
WebSocket closes with GOING_AWAY (1001) and an SSE stream ends as a failed transfer: not the log's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from . import fanout
from .messages import Event

log = logging.getLogger("logship.api.tail")

PING_S = 15.0  # SSE comment / WebSocket ping interval, for proxies and dead-peer detection
SHUTDOWN_REASON = b"server shutting down; reconnect with from=<offset after your last message>"


class Sink:
    """Where a follower's events go: a WebSocket or an SSE response."""

    closing = False
    shut = False  # the API is stopping
    idle_every: float | None = PING_S  # how often a live follower wakes to call `idle` (None: never)

    async def run(self, pump: Callable[[], Awaitable[WSCloseCode]]) -> web.StreamResponse:
        raise NotImplementedError

    async def send(self, events: list[Event]) -> None:
        raise NotImplementedError

    async def idle(self) -> None:
        """Called after each wait: notice a gone client, keep proxies from timing out."""

    async def shutdown(self) -> None:
        raise NotImplementedError

    def write_live(self, batch: fanout.Batch) -> bool:
        """The fan-out's write (api/fanout.py LiveSink): now, whole, or not at all."""
        raise NotImplementedError


def _writable(transport: asyncio.Transport | None) -> bool:
    return (transport is not None and not transport.is_closing()
            and transport.get_write_buffer_size() <= fanout.LIVE_BUFFER)


def _socket_fd(transport: asyncio.Transport | None) -> int:
    """The fd of a plain TCP transport's socket, for `_write`; -1 for any other (TLS: its bytes are not ours)."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None and sock.type == socket.SOCK_STREAM else -1


def _write(transport: asyncio.Transport, fd: int, data: bytes) -> None:
    """transport.write(data) of a `_writable` transport, the send done here when it has nothing buffered: the
    transport's own checks were ≈ 0.7 µs of a write's ≈ 6 here (`python -m bench.fanout_floor writes`), × 1,000.
    The fd is the transport's socket's while the transport is not closing (asyncio closes the socket after);
    what is not sent now (a full socket, an error) goes to the transport, in order, and it handles the rest."""
    if fd >= 0 and not transport.get_write_buffer_size():
        try:
            n = os.write(fd, data)
        except OSError:  # would block, or the peer is gone: the transport meets it again, and closes as it does
            n = 0
        if n == len(data):
            return
        data = data[n:]
    transport.write(data)


class WebSocket(Sink):
    # A live WebSocket follower needs no wake-up of its own: aiohttp pings it (heartbeat) and its read loop
    # notices a gone client. Its wake-up did nothing, and followers that joined together (1,000 at an API's
    # restart) all woke within the same few ms every PING_S, where a line's cast could wait behind them.
    idle_every = None

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.finishing = False
        self.transport: asyncio.Transport | None = None  # the socket's, once upgraded
        self.fd = -1  # its socket's, for the fan-out's writes (_write)

    async def run(self, pump: Callable[[], Awaitable[WSCloseCode]]) -> web.StreamResponse:
        await self.ws.prepare(self.request)
        self.transport = self.request.transport
        self.fd = _socket_fd(self.transport)
        sender = asyncio.create_task(self._send_all(pump))
        try:
            async for msg in self.ws:  # reads pongs and the client's close; what clients send is ignored
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.closing = True
            if not self.finishing:
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return self.ws

    async def _send_all(self, pump: Callable[[], Awaitable[WSCloseCode]]) -> None:
        try:
            code = await pump()
        except ConnectionError:
            return  # the client is gone: the read loop sees it too
        except Exception:
            log.exception("tail %s failed", self.request.path)
            code = WSCloseCode.INTERNAL_ERROR
        if self.closing:
            return  # the client went, or shutdown closes it with GOING_AWAY
        self.finishing = True  # from here the close handshake runs: let it finish
        await self.ws.close(code=code)

    async def send(self, events: list[Event]) -> None:
        for e in events:
            await self.ws.send_str(e.text)

    async def shutdown(self) -> None:
        self.closing = True
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=SHUTDOWN_REASON)

    def write_live(self, batch: fanout.Batch) -> bool:
        # Whole frames straight to the socket, as aiohttp's own writer does (synchronously), so they never
        # interleave with its pings or its close frame; none after a close has begun.
        transport = self.transport
        if self.closing or self.finishing or self.ws.closed or not _writable(transport):
            return False
        assert transport is not None
        _write(transport, self.fd, batch.ws)
        return True


class SSE(Sink):
    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})
        self.last_write = time.monotonic()
        self.chunked = True  # known once the headers are out
        self.fd = -1  # its socket's, for the fan-out's writes (_write)

    async def run(self, pump: Callable[[], Awaitable[WSCloseCode]]) -> web.StreamResponse:
        await self.resp.prepare(self.request)
        self.chunked = self.resp.headers.get("Transfer-Encoding") == "chunked"  # not to an HTTP/1.0 client
        self.fd = _socket_fd(self.request.transport)
        try:
            await self._write("retry: 1000\n\n")
            await pump()
            if self.shut and self.request.transport is not None:
                # a failed transfer (no last chunk), not the stream's end: the client reconnects with
                # Last-Event-ID (EventSource does by itself); only the end event ends it cleanly
                self.request.transport.close()
            else:
                await self.resp.write_eof()
        except ConnectionError:
            self.closing = True
        return self.resp

    async def _write(self, text: str) -> None:
        await self.resp.write(text.encode())
        self.last_write = time.monotonic()

    async def send(self, events: list[Event]) -> None:
        await self._write(fanout.sse_text(events))

    async def idle(self) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self.closing = True
        elif time.monotonic() - self.last_write >= PING_S:
            await self._write(": ping\n\n")

    async def shutdown(self) -> None:
        self.closing = self.shut = True

    def write_live(self, batch: fanout.Batch) -> bool:
        transport = self.request.transport
        if self.closing or not _writable(transport):
            return False
        assert transport is not None
        _write(transport, self.fd, batch.sse_chunk if self.chunked else batch.sse)  # as aiohttp frames a chunk
        return True
