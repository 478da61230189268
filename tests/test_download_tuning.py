"""Two tunings of the download path, held against real parts: a GET whose body is read in 1 MiB pieces (zstd
passed through) is received 1 MiB per recv(), others keep asyncio's 256 KiB (shipper/store/s3http.py); and the
API's heap trim waits while log answers are streamed (api/heap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest
from aiohttp import web

from api import heap
from api.keys import METRICS
from api.metrics import Metrics
from shipper.config import StoreConfig
from shipper.store import open_store
from shipper.store.s3 import S3Store
from shipper.store.s3http import RECV_DEFAULT, RECV_MAX


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
        # the same pooled connection, read in small pieces (decompressed on the fly): back to the default
        got = b"".join([bytes(p) async for p in store.open("obj", chunk=128 << 10)])
        assert got == data
        assert _pooled_recv_sizes(store) == {RECV_DEFAULT}
    finally:
        await store.close()


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
