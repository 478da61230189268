"""Readers of logs checkpointed as deltas (issue 14, docs/checkpoints.md §6): a running log's chain of deltas
after its manifest, sealed segments stored as their frames, read from the store alone — byte-exact against
the task's output, no gap, no overlap; a damaged delta ends the chain before it, never a wrong byte."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import zstandard
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.keys import METRICS
from shipper.format import names
from shipper.format.reader import Reader
from shipper.store import open_store
from shipper.watcher import Watcher

from .support import DELTAS, MakeConfig, agent_env, spooled, sse_tail, steady, stop_agent, watching

pytestmark = pytest.mark.asyncio(loop_scope="session")

async def read(reader: Reader, task: str, start: int = 0, end: int | None = None) -> tuple[int, bytes]:
    """(size of a fresh view, its bytes [start, end)) from the store alone."""
    view = await reader.view(task, "h1", recent=False)
    return view.size, b"".join([bytes(p) async for p in reader.read(view, start, end)])


async def until(w: Watcher, done: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "condition not reached"
        await w.run_once()
        await asyncio.sleep(0.05)


async def test_a_running_log_reads_through_its_frames_and_chain_then_finished(make_config: MakeConfig) -> None:
    """Segments sealed as frames, then the open segment's chain, while the task runs: every view is a
    prefix of the output, Ranges inside and across frames are exact; finished: whole, and as zstd."""
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    p = steady(cfg, "dr", "8000", "0.0005")
    store = open_store(cfg.store)
    reader = Reader(store)
    rnd = random.Random(3)
    kinds: set[str] = set()
    try:
        w = Watcher(cfg, store)

        async def grown() -> bool:
            with contextlib.suppress(Exception):
                view = await reader.view("dr", "h1", recent=False)
                kinds.update(part.kind for part in view.parts)
                size, got = await read(reader, "dr")
                assert size == len(got) and spooled(cfg.spool_dir, "dr").startswith(got)
                for _ in range(5):
                    a = rnd.randrange(size)
                    b = rnd.randrange(a, size + 1)
                    assert (await read(reader, "dr", a, b))[1] == spooled(cfg.spool_dir, "dr")[a:b]
            return {"frames", "delta"} <= kinds

        await until(w, grown)
        assert p.wait(60) == 0
        await w.run_once()
        want = spooled(cfg.spool_dir, "dr")
        view = await reader.view("dr", "h1", recent=False)
        assert view.finished and {p.kind for p in view.parts} <= {"frames", "store"} and view.size == len(want)
        assert (await read(reader, "dr"))[1] == want
        frame_ends = sorted({f.end for part in view.parts if part.kind == "frames"
                             for f in await reader.chained.table("dr", "h1", part.entry)})  # type: ignore[arg-type]
        for e in frame_ends[1:6]:  # across a frame boundary, and one byte on each side of it
            assert (await read(reader, "dr", e - 7, e + 9))[1] == want[e - 7:e + 9]
            assert (await read(reader, "dr", e - 1, e))[1] == want[e - 1:e]
            assert (await read(reader, "dr", e, e + 1))[1] == want[e:e + 1]
        zst = b"".join([bytes(p) async for p in reader.read_zstd(view)])
        assert len(zst) == Reader.zstd_size(view) and Reader.zstd_share(view) > 0.5
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst), read_across_frames=True).read() == want
        chunks = [c for part in view.parts for c in await reader.chunks(view, part)]
        assert [c.offset for c in chunks[1:]] == [c.end for c in chunks[:-1]] and chunks[-1].end == len(want)
    finally:
        stop_agent(p, cfg.spool_dir, "dr")
        await store.close()


async def test_a_damaged_delta_ends_the_chain_before_it(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS)
    p = steady(cfg, "bad", "200", "0.01", "60")  # then silent: the chain stops growing
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)

        async def whole() -> bool:
            deltas = [o for o in await store.list(names.delta_prefix("bad", "h1", 1))]
            return len(deltas) >= 4 and (await read(Reader(store), "bad"))[0] == len(spooled(cfg.spool_dir, "bad"))

        await until(w, whole)
        want = spooled(cfg.spool_dir, "bad")
        deltas = [o.key for o in await store.list(names.delta_prefix("bad", "h1", 1))]
        victim = deltas[len(deltas) // 2]
        parsed = names.parse_delta_name(victim.rsplit("/", 1)[1])
        assert parsed is not None
        blob = bytearray(await store.get(victim))
        blob[-5] ^= 0x55  # a flipped byte in the data frame: its checksum fails
        await store.put(victim, bytes(blob))
        reader = Reader(store)
        size, got = await read(reader, "bad")
        assert (size, got) == (parsed[1], want[:parsed[1]])  # up to the damaged delta, not one byte past it
        view = await reader.view("bad", "h1", recent=False)
        assert view.size == parsed[1] and not view.finished
        await store.delete([victim])  # gone (say, deleted under us): the same
        assert await read(Reader(store), "bad") == (parsed[1], want[:parsed[1]])
    finally:
        stop_agent(p, cfg.spool_dir, "bad")
        await store.close()


async def test_prefix_checkpoints_of_older_watchers_still_read(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_WATCH_CHECKPOINT_DELTAS="false", LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1",
                      LOGSHIP_QUERY_COPY="false")
    p = steady(cfg, "v1", "100", "0.005", "60")
    store = open_store(cfg.store)
    reader = Reader(store)
    try:
        w = Watcher(cfg, store)

        async def whole() -> bool:
            with contextlib.suppress(Exception):
                return (await read(reader, "v1"))[1] == spooled(cfg.spool_dir, "v1") and \
                    spooled(cfg.spool_dir, "v1").count(b"\n") == 100
            return False

        await until(w, whole)
        view = await reader.view("v1", "h1", recent=False)
        assert [p.kind for p in view.parts] == ["checkpoint"]
    finally:
        stop_agent(p, cfg.spool_dir, "v1")
        await store.close()


async def test_refresh_lists_and_reads_the_manifest_only_when_it_changed(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    p = steady(cfg, "rf", "6000", "0.001")
    store, rstore = open_store(cfg.store), open_store(cfg.store)
    reader = Reader(rstore)
    try:
        async with watching(cfg, store):
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(Exception):
                    view = await reader.view("rf", "h1", recent=False)
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            gets = lists = 0
            while not view.finished:
                await asyncio.sleep(0.1)
                before = dict(rstore.stats.requests)
                fresh = await reader.refresh(view)
                after = rstore.stats.requests
                got = after["get_object"] - before.get("get_object", 0)
                lists += after["list_objects_v2"] - before.get("list_objects_v2", 0)
                assert fresh.size >= view.size
                if fresh.doc is view.doc:
                    assert got <= sum(1 for part in fresh.parts[len(view.parts):])  # the new deltas only
                else:
                    gets += 1
                view = fresh
                assert time.monotonic() < deadline + 60
            assert p.wait(30) == 0
        want = spooled(cfg.spool_dir, "rf")
        assert view.size == len(want)
        assert b"".join([bytes(x) async for x in reader.read(view)]) == want
        assert 0 < gets < lists  # the manifest read again at seals and the end only
    finally:
        stop_agent(p, cfg.spool_dir, "rf")
        await store.close()
        await rstore.close()


async def test_a_central_api_falling_back_from_a_dead_node_serves_the_chain(make_config: MakeConfig) -> None:
    """The node API the manifest names is dead: the central API serves /log (Range, follow) and the tail
    from the store alone, and `logship cat` reads the same — each the task's output, byte for byte."""
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_WATCH_API_URL="http://127.0.0.1:9",
                      LOGSHIP_API_PROXY_ALLOW="127.0.0.1")
    p = steady(cfg, "fb", "5000", "0.002")
    store = open_store(cfg.store)
    server = TestServer(create_app(cfg, serve_spool=False), host="127.0.0.1")
    await server.start_server()
    u = f"http://127.0.0.1:{server.port}/api/v1/tasks/fb/hosts/h1"
    try:
        async with watching(cfg, store), aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:  # the log exists, with a chain of a few deltas
                async with session.get(f"{u}/log", headers={"Range": "bytes=0-"}) as r:
                    if r.status == 206 and len(await r.read()) > 4000:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            follow = asyncio.ensure_future(_get(session, f"{u}/log?follow=true"))
            tail = asyncio.ensure_future(sse_tail(session, f"{u}/tail?from=0"))
            for _ in range(10):  # Ranges while it runs: inside a delta or frame, and across them
                async with session.get(f"{u}/log") as r:
                    now = await r.read()
                assert spooled(cfg.spool_dir, "fb").startswith(now) and r.status == 200
                a = random.randrange(len(now))
                b = random.randrange(a, len(now))
                async with session.get(f"{u}/log", headers={"Range": f"bytes={a}-{b}"}) as r:
                    assert r.status == 206 and await r.read() == now[a:b + 1]
                async with session.get(f"{u}/index", params={"start": str(a)}) as r:  # line numbers, per delta
                    doc = await r.json()
                first = doc["chunks"][0][0]
                assert first <= a and doc["line"] == now[:first].count(b"\n")
                await asyncio.sleep(0.3)
            res = subprocess.run([sys.executable, "-m", "shipper.commands.cli", "cat", "fb", "--host", "h1"],
                                 env={**agent_env(cfg), "LOGSHIP_SPOOL_DIR": str(cfg.spool_dir / "elsewhere")},
                                 capture_output=True, timeout=60)
            assert res.returncode == 0, res.stderr[-2000:]
            assert len(res.stdout) > 4000 and spooled(cfg.spool_dir, "fb").startswith(res.stdout)
            assert p.wait(60) == 0
            want = spooled(cfg.spool_dir, "fb")
            assert await asyncio.wait_for(follow, 60) == want
            assert await asyncio.wait_for(tail, 60) == want
        assert server.app[METRICS].proxy_unreachable > 0  # it did try the node
    finally:
        stop_agent(p, cfg.spool_dir, "fb")
        await server.close()
        await store.close()


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as r:
        assert r.status == 200
        return await r.read()
