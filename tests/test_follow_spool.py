"""`…/log?follow=true` of a log beside the spool (DESIGN §6.7): its followers wait on the tail's spool poller
(api/hub.py, a 1 ms look shared by all of them) and take their next view from the spool alone (Reader.refresh,
shipper/format/spoolview.py), so N followers cost O(1) manifest GETs each — not one each every 20 ms — and still
get every byte once, across a seal and a prune of the spool, to the log's end."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.hub import Feed
from api.keys import STORE
from api.logs import _wait_spool
from api.source import LogMoved, Source
from shipper.format import names
from shipper.format.parts import SpoolState
from shipper.store import open_store
from shipper.watcher import Watcher

from .support import MakeConfig, body, counted, served, steady, stop_agent, watching

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

FOLLOWERS = 10
SEGMENT = {"LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "0"}


def lines(n: int) -> bytes:
    """What tests/support.py STEADY writes for `n` lines."""
    return b"".join(b"line %06d of a steady task\n" % i for i in range(n))


def sealed(spool: Path, task: str) -> int:
    """How many of the log's segments were ever sealed (a pruned one is counted by the segments after it)."""
    segs = [int(p.name[:8]) for p in (spool / task / "h1").iterdir() if names.SEGMENT_RE.match(p.name)]
    return max(segs, default=1) - 1


@pytest.mark.parametrize("watched", [False, True], ids=["spool-only", "sealed-and-pruned"])
async def test_spool_followers_cost_no_manifest_get_per_look(make_config: MakeConfig, watched: bool) -> None:
    n = 6000
    cfg = make_config(**SEGMENT)
    p = steady(cfg, "sf", str(n), "0.0005")  # 29-byte lines: 174 KB over 3 s or more, two seals at 64 KiB
    store = open_store(cfg.store)
    server = TestServer(create_app(cfg), host="127.0.0.1")
    await server.start_server()
    api_store = server.app[STORE]
    gets = counted(api_store, "get")
    manifest = names.manifest_key("sf", "h1")
    u = f"http://127.0.0.1:{server.port}/api/v1/tasks/sf/hosts/h1/log"
    try:
        async with contextlib.AsyncExitStack() as stack:
            if watched:
                await stack.enter_async_context(watching(cfg, store))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            await served(session, u)
            gets0, t0 = gets[manifest], time.monotonic()
            follows = await asyncio.wait_for(asyncio.gather(*(
                body(session, f"{u}?follow=true") for _ in range(FOLLOWERS))), 120)
            elapsed = time.monotonic() - t0
            assert p.wait(30) == 0
            seals = sealed(cfg.spool_dir, "sf")
        want = lines(n)
        assert all(f == want for f in follows)  # byte-exact: no gap, no duplicate, each to the log's end
        manifest_gets = gets[manifest] - gets0
        assert elapsed > 2 and (seals >= 2 or not watched), (elapsed, seals)
        # Each follower: its request's view, its last (a whole view at the log's end), and at most one per
        # segment sealed and pruned under it (its manifest does not cover it). Polling alone every 20 ms,
        # each took ~50 a second.
        assert manifest_gets <= FOLLOWERS * (2 + (seals if watched else 0)) + 2, (manifest_gets, seals, elapsed)
        assert manifest_gets * 10 < FOLLOWERS * elapsed / 0.02, (manifest_gets, elapsed)
        print(f"{FOLLOWERS} followers, {elapsed:.1f} s, {seals} seals: {manifest_gets} manifest GETs")
    finally:
        stop_agent(p, cfg.spool_dir, "sf")
        await server.close()
        await store.close()


async def test_a_refresh_reads_the_manifest_only_after_a_prune_it_cannot_explain(make_config: MakeConfig) -> None:
    """Reader.refresh of a view beside the spool: from the spool alone while the view's manifest explains
    what the spool holds; a segment sealed, uploaded and pruned after that manifest takes a whole view (one
    manifest GET), and the bytes read from it are the log's."""
    n = 100000
    cfg = make_config(**SEGMENT)
    p = steady(cfg, "sr", str(n), "0.0002")
    store, rstore = open_store(cfg.store), open_store(cfg.store)
    source = Source(rstore, cfg.spool_dir)
    manifest = names.manifest_key("sr", "h1")
    w = Watcher(cfg, store)
    try:
        deadline = time.monotonic() + 30
        while not (cfg.spool_dir / "sr" / "h1" / names.RUN_FILE).exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await w.run_once()  # a manifest, with whatever the log has sealed yet
        view = await source.view("sr", "h1")
        assert view.spool_dir is not None and view.doc is not None
        gets = counted(rstore, "get")
        await asyncio.sleep(0.05)
        again = await source.refresh(view)
        assert gets[manifest] == 0 and again.doc is view.doc and again.size > view.size

        known = max((s.seq for s in view.doc.segments), default=0)  # the segments its manifest names
        while not _pruned_after(cfg.spool_dir, "sr", known):  # one sealed after it, uploaded and pruned
            assert time.monotonic() < deadline + 60
            await w.run_once()
            await asyncio.sleep(0.05)
        fresh = await source.refresh(view)
        assert gets[manifest] == 1 and fresh.doc is not view.doc and fresh.size > view.size
        got = b"".join([bytes(b) async for b in source.read(fresh, 0, fresh.size)])
        assert got == lines(n)[:fresh.size]
        assert gets[manifest] == 1  # read from the spool and the segments its manifest names

        feed = Feed(("sr", "h1", fresh.spool_dir))  # api/logs.py's wait: the next view, of this run only
        grown = await asyncio.wait_for(_wait_spool(source, feed, fresh, fresh.size, asyncio.Event()), 10)
        assert grown is not None and grown.size > fresh.size and gets[manifest] == 1
        earlier = dataclasses.replace(fresh, run={**fresh.run, "run_id": "an-earlier-run"})
        with pytest.raises(LogMoved):  # the log run again under its name: never served on into the new run
            await _wait_spool(source, feed, earlier, fresh.size, asyncio.Event())
    finally:
        stop_agent(p, cfg.spool_dir, "sr")
        await store.close()
        await rstore.close()


def _pruned_after(spool: Path, task: str, known: int) -> bool:
    """True once the spool no longer holds segment known + 1 (sealed after a manifest that names segments up to
    `known`, then uploaded and pruned)."""
    have = [int(p.name[:8]) for p in (spool / task / "h1").iterdir() if names.SEGMENT_RE.match(p.name)]
    return bool(have) and min(have) > known + 1


async def test_the_followers_one_change_woke_share_one_read_of_the_spool() -> None:
    feed = Feed(("t", "h", Path("spool-dir")))
    reads = 0

    async def read() -> SpoolState | None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return None

    assert await asyncio.gather(*(feed.spool_state(read) for _ in range(FOLLOWERS))) == [None] * FOLLOWERS
    assert reads == 1
    await feed.spool_state(read)  # no change since: the same read
    assert reads == 1
    feed.notify()
    await asyncio.gather(*(feed.spool_state(read) for _ in range(FOLLOWERS)))
    assert reads == 2  # a change: one new read, after it
