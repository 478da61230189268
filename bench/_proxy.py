"""A counting HTTP proxy in front of the S3 server, in a thread of the bench: every request a client sends
through it, by method, and the bytes on the wire each way (headers included): what a provider sees.

It parses HTTP/1.1 requests only as far as framing needs (Content-Length or chunked bodies), so
keep-alive connections count request by request; answers are passed through unread."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counts:
    requests: Counter[str] = field(default_factory=Counter)  # by method: PUT, GET, POST (DeleteObjects), ...
    body_bytes: int = 0  # request bodies
    bytes_up: int = 0  # request bytes on the wire, headers included
    bytes_down: int = 0

    def total(self) -> int:
        return sum(self.requests.values())


class CountingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._thread.join(10)

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(Counter(self.counts.requests), self.counts.body_bytes, self.counts.bytes_up,
                          self.counts.bytes_down)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._server.wait_closed()  # until stop() closes it (it serves from start_server on)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        down = asyncio.create_task(self._answers(up_reader, writer))
        try:
            while await self._request(reader, up_writer):
                pass
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            up_writer.close()
            await asyncio.gather(down, return_exceptions=True)
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        up.write(head)
        sent = len(head)
        body = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                n = int(size_line.split(b";")[0], 16)
                data = await reader.readexactly(n + 2)
                up.write(size_line + data)
                sent += len(size_line) + len(data)
                body += n
                if n == 0:
                    break
        else:
            left = int(headers.get("content-length", "0"))
            while left:
                data = await reader.read(min(left, 1 << 16))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                up.write(data)
                left -= len(data)
                sent += len(data)
                body += len(data)
                await up.drain()
        await up.drain()
        with self._lock:
            self.counts.requests[method] += 1
            self.counts.body_bytes += body
            self.counts.bytes_up += sent
        return True

    async def _answers(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()
                with self._lock:
                    self.counts.bytes_down += len(data)
        except OSError:
            pass
        finally:
            dst.close()
