"""Tunings of the download path, held against real parts: a GET whose body is read in pieces of `chunk` bytes is
received `chunk` per recv() (1 MiB for zstd passed through, 256 KiB decompressed on the fly) and holds little more
than one unread (shipper/store/s3http.py), its pieces handed on as received, never joined (shipper/store/s3.py); and
the API's heap trim waits while log answers are streamed (api/heap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from api import heap
from api.keys import METRICS
from api.metrics import Metrics
from shipper.config import StoreConfig, load_config
from shipper.format import reader as reader_module
from shipper.format import zstdio
from shipper.format.parts import PIECE
from shipper.format.reader import Reader
from shipper.store import open_store
from shipper.store.s3 import READ_BUFSIZE, S3Store
from shipper.store.s3http import HELD, RECV_MAX, RECV_MIN
from shipper.watcher import watch

from .support import env_for, run_agent

TASK = "import sys\nfor i in range(30000): sys.stdout.write('line %06d %s\\n' % (i, 'abcdefghij' * (i % 7)))\n"


def _pooled_recv_sizes(store: S3Store) -> set[int]:
    """asyncio's recv() size of each kept-alive connection to the store (aiohttp's pool, read as it is)."""
    session = store._reader._session
    assert session is not None and session.connector is not None
    conns: dict[Any, Any] = session.connector._conns
    return {proto.transport.max_size for pooled in conns.values() for proto, _ in pooled if proto.transport}


async def test_a_get_read_in_big_pieces_receives_big_pieces(s3_store_cfg: StoreConfig) -> None:
    store = open_store(s3_store_cfg)
    assert isinstance(store, S3Store)
    try:
        data = os.urandom(3 << 20)
        await store.put("obj", data)
        got = b"".join([bytes(p) async for p in store.open("obj", chunk=RECV_MAX)])
        assert got == data
        assert _pooled_recv_sizes(store) == {RECV_MAX}
        # the same pooled connection, read in small pieces (decompressed on the fly): small recv()s, a small buffer
        pieces = [p async for p in store.open("obj", chunk=128 << 10)]
        assert b"".join(pieces) == data
        assert max(map(len, pieces)) <= 128 << 10
        assert _pooled_recv_sizes(store) == {128 << 10}
        got = b"".join([bytes(p) async for p in store.open("obj", chunk=1 << 10)])
        assert got == data
        assert _pooled_recv_sizes(store) == {RECV_MIN}
    finally:
        await store.close()


@pytest.mark.parametrize("chunk", [256 << 10, RECV_MAX])
async def test_an_answer_read_slowly_holds_little_more_than_one_recv(s3_store_cfg: StoreConfig, chunk: int) -> None:
    """The bytes of an answer not read yet wait in its buffer until aiohttp pauses the socket (above 2 x HELD for
    an answer decompressed on the fly, 2 x READ_BUFSIZE for one passed through):
    under 10 decompressing downloads, with the next object requested early, those buffers were ≈ 1/3 of the
    API's memory above idle (bench/README.md, "memory")."""
    store = open_store(s3_store_cfg)
    assert isinstance(store, S3Store)
    try:
        data = os.urandom(12 << 20)
        await store.put("obj", data)
        pieces = store.open("obj", chunk=chunk)
        got = [await anext(pieces)]
        await asyncio.sleep(0.5)  # the store would send all 8 MiB meanwhile, if let
        session = store._reader._session
        assert session is not None and session.connector is not None
        buffered = [proto._payload._size for proto in session.connector._acquired if proto._payload is not None]
        assert len(buffered) == 1 and 0 < buffered[0] <= 2 * (HELD if chunk < RECV_MAX else READ_BUFSIZE) + chunk
        got += [p async for p in pieces]
        assert b"".join(got) == data
    finally:
        await store.close()


@pytest.mark.parametrize("chunk", [256 << 10, RECV_MAX])
async def test_a_connection_kept_alive_after_a_streamed_answer_serves_the_next_one(s3_store_cfg: StoreConfig,
                                                                                   chunk: int) -> None:
    """A streamed answer whose last recv() paused the socket, read to its end after its connection went back to
    the pool, must not leave a read timer on that idle connection: aiohttp 3.14 re-arms `sock_read` when reading
    resumes, and the timer, firing in the pool, made the next GET on the connection fail at once ("cannot reach
    the store": every first download after a pause of a few seconds, in the API bench)."""
    store = S3Store(s3_store_cfg, read_timeout=0.3)
    try:
        data = os.urandom(3 << 20)
        await store.put("obj", data)
        for _ in range(3):
            pieces = store.open("obj", chunk=chunk)
            got = [await anext(pieces)]
            await asyncio.sleep(0.1)  # the rest arrives meanwhile: the socket is paused, the body's end received
            got += [p async for p in pieces]
            assert b"".join(got) == data
            await asyncio.sleep(0.6)  # idle in the pool for longer than the read timeout
    finally:
        await store.close()


async def test_a_chunked_answer_is_read_whole() -> None:
    """S3 answers a GET with a Content-Length; a proxy or another server may send it chunked: the end of each HTTP
    chunk is not the end of the body."""
    data = os.urandom(300_000)

    async def get(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 7_000):
            await resp.write(data[i:i + 7_000])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    runner = web.AppRunner(web.Application())
    runner.app.router.add_get("/bucket/obj", get)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    store = open_store(StoreConfig(url="s3://bucket", endpoint=f"http://127.0.0.1:{runner.addresses[0][1]}",
                                   access_key="k", secret_key="s"))
    try:
        for chunk in (1 << 10, 128 << 10, 1 << 20):
            pieces = [p async for p in store.open("obj", chunk=chunk)]
            assert b"".join(pieces) == data
            assert max(map(len, pieces)) <= chunk
    finally:
        await store.close()
        await runner.cleanup()


@pytest.mark.parametrize("compression", ["zstd", "none"])
async def test_a_read_asks_for_the_next_object_before_its_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              compression: str) -> None:
    """Reader.read requests the next part's object while this one goes out: a zstd part (decompressed on the fly,
    slower than the store sends) once EARLY_LEFT bytes of it are left, so that the early answer is not held
    buffered through the whole part; an uncompressed one at its first piece."""
    early_left, out_piece = 16 << 10, 4 << 10
    monkeypatch.setattr(reader_module, "EARLY_LEFT", early_left)
    monkeypatch.setattr(zstdio, "ZSTD_OUT", out_piece)  # decompressed pieces small enough to see where it asks
    spool = tmp_path / "spool"
    env = {"LOGSHIP_SPOOL_DIR": str(spool), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive",
           "LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", "LOGSHIP_STORE_COMPRESSION": compression}
    res = run_agent(spool, "t", [sys.executable, "-c", TASK], env=env_for(spool, env))
    assert res.returncode == 0
    await watch(load_config(env={**env, "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "0"}), once=True)
    store = open_store(load_config(env=env).store)
    reader = Reader(store)
    view = await reader.view("t", "h1")
    assert len(view.parts) > 3 and all(p.kind == "store" for p in view.parts)
    sent = 0
    asked: dict[str, int] = {}  # object key -> bytes the read had given when it was requested
    real_open = store.open

    def spy(key: str, *args: Any, **kw: Any) -> Any:
        asked.setdefault(key, sent)
        return real_open(key, *args, **kw)

    monkeypatch.setattr(store, "open", spy)
    got = bytearray()
    async for piece in reader.read(view):
        got += piece
        sent = len(got)
    assert bytes(got) == res.stdout
    for prev, part in zip(view.parts, view.parts[1:], strict=False):
        assert part.entry is not None
        at = asked[part.entry.keys("t", "h1")[0]]
        if compression == "zstd":
            assert early_left - out_piece < prev.end - at <= early_left
        else:
            assert prev.offset < at <= prev.offset + min(PIECE, prev.size)


async def test_the_heap_is_trimmed_only_when_no_answer_is_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "CHECK_S", 0.01)
    monkeypatch.setattr(heap, "TRIM_MIN_S", 0.0)
    monkeypatch.setattr(heap, "TRIM_GROWTH", -(1 << 40))  # whatever the RSS did
    app = web.Application()
    app[METRICS] = metrics = Metrics()
    trims: list[int] = []

    def trim(pad: int) -> int:  # malloc_trim's stand-in: the test is about when, not what
        trims.append(pad)
        return 1

    metrics.answers = 1  # a download in flight
    task = asyncio.create_task(heap._trimmer(app, trim))
    try:
        await asyncio.sleep(0.3)
        assert trims == []
        metrics.answers = 0  # it ended: the trim follows once the count settled
        for _ in range(200):
            if trims:
                break
            await asyncio.sleep(0.01)
        assert trims == [0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
