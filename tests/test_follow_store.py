"""`…/log?follow=true` of a log read from the store alone (issue 14, DESIGN §6.7): its followers wait on the tail's
store poller (api/hub.py), so N of them cost its one LIST a poll between them, not one each a second — and still
get every byte once, across checkpoints and a seal, and end as before (the log's end, a shutdown, a deleted log).
A request takes one view of the log (the proxy middleware's, handed to the route), and a view made from the store
records its manifest's etag when the listing shows it is of the bytes it was built from (Reader.view)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.hub import Feed
from api.keys import STORE
from api.logs import _wait_feed
from api.source import LogMoved, Source
from shipper.format import names
from shipper.format.reader import Reader
from shipper.store import Store, open_store

from .support import DELTAS, MakeConfig, body, counted, served, spooled, steady, stop_agent, watching

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

API_POLL_S = 0.2  # the API's watch.checkpoint_seconds: its store poller lists this often at most
FOLLOWERS = 20


def lists(store: Store) -> int:
    return int(store.stats.requests["list_objects_v2"])


async def test_store_only_followers_cost_the_pollers_lists_and_a_request_one_view(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")  # checkpoints every 0.1 s; a seal at 64 KiB
    api_cfg = make_config(**{**DELTAS, "LOGSHIP_WATCH_CHECKPOINT_SECONDS": str(API_POLL_S)})
    p = steady(cfg, "fs", "3000", "0.002")  # 29-byte lines: ≈ 87 KB over 6 s or more
    store = open_store(cfg.store)
    puts = counted(store, "put")
    server = TestServer(create_app(api_cfg, serve_spool=False), host="127.0.0.1")
    await server.start_server()
    api_store = server.app[STORE]
    gets = counted(api_store, "get")
    manifest = names.manifest_key("fs", "h1")
    u = f"http://127.0.0.1:{server.port}/api/v1/tasks/fs/hosts/h1"
    try:
        async with watching(cfg, store), aiohttp.ClientSession() as session:
            await served(session, f"{u}/log")
            # A plain request of a running log read from the store: one view (a manifest GET, a LIST), not the
            # proxy middleware's and the route's.
            for route in ("/log", "/index", ""):
                lists0, manifest_gets0 = lists(api_store), gets[manifest]
                async with session.get(f"{u}{route}") as r:
                    assert r.status == 200
                    await r.read()
                assert (gets[manifest] - manifest_gets0, lists(api_store) - lists0) == (1, 1), route

            lists0, manifest_gets0, puts0 = lists(api_store), gets[manifest], puts.copy()
            t0 = time.monotonic()
            follows = await asyncio.wait_for(asyncio.gather(*(
                body(session, f"{u}/log?follow=true") for _ in range(FOLLOWERS))), 120)
            elapsed = time.monotonic() - t0
            assert p.wait(30) == 0
        want = spooled(cfg.spool_dir, "fs")
        assert all(f == want for f in follows)  # byte-exact: no gap, no duplicate, and each ended at the log's end
        n_lists = lists(api_store) - lists0
        manifest_gets = gets[manifest] - manifest_gets0
        new = puts - puts0
        deltas = sum(n for k, n in new.items() if names.parse_delta_name(k.rsplit("/", 1)[-1]))
        commits = new[manifest]
        assert deltas >= 10 and commits >= 2, (deltas, commits)
        # Each follower's request takes one view; then only the poller reads the store: its first view, its first
        # refresh on the file store (an etag that is no MD5), a manifest GET per commit it lists (a seal, the
        # end), and one LIST a poll. Followers polling alone listed FOLLOWERS times a second, and read the
        # manifest at every commit each.
        polls = elapsed / API_POLL_S + 1
        assert manifest_gets <= commits + FOLLOWERS + 4, (manifest_gets, commits)
        assert n_lists <= polls + commits + FOLLOWERS + 4, (n_lists, polls, commits)
        assert n_lists < FOLLOWERS * elapsed, (n_lists, elapsed)  # what followers polling alone cost at the least
        delta_gets = [n for k, n in gets.items() if names.parse_delta_name(k.rsplit("/", 1)[-1])]
        assert delta_gets and max(delta_gets) <= 2  # each new delta: its check, shared by the poller and readers
    finally:
        stop_agent(p, cfg.spool_dir, "fs")
        await server.close()
        await store.close()


async def test_a_store_only_follow_ends_as_before_at_shutdown_and_at_deletion(make_config: MakeConfig) -> None:
    """A shutdown of the API cuts the answer (a failed transfer, so the client resumes); a log deleted while
    followed cuts it too (the error a follower's own look meets), rather than waiting forever."""
    cfg = make_config(**DELTAS)
    api_cfg = make_config(**{**DELTAS, "LOGSHIP_WATCH_CHECKPOINT_SECONDS": str(API_POLL_S)})
    p = steady(cfg, "fe", "100000", "0.01")  # runs longer than the test
    store = open_store(cfg.store)
    servers = [TestServer(create_app(api_cfg, serve_spool=False), host="127.0.0.1") for _ in range(2)]
    for s in servers:
        await s.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with watching(cfg, store):
                await served(session, f"http://127.0.0.1:{servers[0].port}/api/v1/tasks/fe/hosts/h1/log")
                rs = [await session.get(f"http://127.0.0.1:{s.port}/api/v1/tasks/fe/hosts/h1/log?follow=true")
                      for s in servers]
                first = [await r.content.readany() for r in rs]
                assert all(first)
                grown = [await asyncio.wait_for(r.content.readany(), 10) for r in rs]  # a checkpoint later
                assert all(grown)
            got = first[0] + grown[0]
            await servers[0].close()  # the shutdown: not the log's end
            with pytest.raises(aiohttp.ClientPayloadError):
                got += await asyncio.wait_for(rs[0].content.read(), 10)
            assert spooled(cfg.spool_dir, "fe").startswith(got)

            await store.delete([o.key for o in await store.list(names.log_prefix("fe", "h1"))])
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(rs[1].content.read(), 10)
    finally:
        stop_agent(p, cfg.spool_dir, "fe")
        for s in servers:
            await s.close()
        await store.close()


async def test_a_view_records_its_manifests_etag_only_when_listed_for_its_bytes(make_config: MakeConfig) -> None:
    """A view records the manifest's etag as listed after its GET when it is of the GET's bytes (S3's etag of a
    plain PUT is their MD5: SeaweedFS, rclone; the file store's GET tells the inode, mtime and size it read), so its
    first refresh reads no manifest; a manifest committed between the GET and the LIST is never taken for the one
    the view was built from."""
    cfg = make_config(**DELTAS)
    p = steady(cfg, "ft", "100000", "0.01")
    store, rstore = open_store(cfg.store), open_store(cfg.store)
    reader = Reader(rstore)
    manifest = names.manifest_key("ft", "h1")
    try:
        async with watching(cfg, store):
            deadline = time.monotonic() + 30
            while not (await store.list(manifest) and (await reader.view("ft", "h1")).size):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        # the watcher is stopped: the manifest stays as it is while the task runs on
        view = await reader.view("ft", "h1")
        listed = (await rstore.list(manifest))[0].etag
        assert view.manifest_tag == listed != ""
        gets = counted(rstore, "get")
        again = await reader.refresh(view)
        assert gets[manifest] == 0 and again.size == view.size

        # a commit between the view's GET and its LIST: the listed etag is of other bytes
        real = rstore.list_page

        async def commit_first(prefix: str, *args: Any, **kw: Any) -> Any:
            await store.put(manifest, (await store.get(manifest)) + b"\n")
            return await real(prefix, *args, **kw)

        rstore.list_page = commit_first  # type: ignore[method-assign]
        raced = await reader.view("ft", "h1")
        rstore.list_page = real  # type: ignore[method-assign]
        assert raced.manifest_tag == ""
        gets.clear()
        fresh = await reader.refresh(raced)
        assert gets[manifest] == 1 and fresh.manifest_tag == (await rstore.list(manifest))[0].etag
    finally:
        stop_agent(p, cfg.spool_dir, "ft")
        await store.close()
        await rstore.close()


async def test_a_follow_never_goes_on_into_another_run(make_config: MakeConfig) -> None:
    """The log deleted and run again under its name while followed: the poller's next view is of the new run,
    whose bytes are not this answer's continuation; the answer is cut (LogMoved), never served on from it."""
    cfg = make_config(**DELTAS)
    p = steady(cfg, "fr", "100000", "0.01")
    store, rstore = open_store(cfg.store), open_store(cfg.store)
    source = Source(rstore, None)
    try:
        async with watching(cfg, store):
            deadline = time.monotonic() + 30
            while not (await store.list(names.manifest_key("fr", "h1")) and (await source.view("fr", "h1")).size):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        view = await source.view("fr", "h1")
        feed = Feed(("fr", "h1", None))
        feed.polled = True
        pos = view.size - 1  # the answer has sent less than the views hold
        feed.view = dataclasses.replace(view)  # the poller's, of the same run: taken
        assert await _wait_feed(source, feed, view, pos, asyncio.Event()) is feed.view
        feed.view = dataclasses.replace(view, run={**view.run, "run_id": "another"})
        with pytest.raises(LogMoved):
            await _wait_feed(source, feed, view, pos, asyncio.Event())
        stopping = asyncio.Event()
        stopping.set()
        assert await _wait_feed(source, feed, view, pos, stopping) is None  # shutdown first
    finally:
        stop_agent(p, cfg.spool_dir, "fr")
        await store.close()
        await rstore.close()
