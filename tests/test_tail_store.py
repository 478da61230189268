"""The tail of a log read from the store alone (issue 14, docs/checkpoints.md §6): its followers locate in the
store poller's view (api/hub.py, Reader.refresh), so they cost one LIST per poll between them and no manifest
GET while the manifest does not change — and still get every byte once, across checkpoints and a seal."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.keys import STORE
from shipper.format import names
from shipper.store import open_store

from .support import DELTAS, MakeConfig, counted, spooled, sse_tail, steady, stop_agent, watching

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

API_POLL_S = 0.2  # the API's watch.checkpoint_seconds: its store poller lists this often at most
FOLLOWERS = 3


async def resumed(session: aiohttp.ClientSession, url: str) -> bytes:
    """A tail that goes away after 20,000 bytes and comes back with the id of the last event it had."""
    first = await sse_tail(session, url, stop=20_000)
    return first + await sse_tail(session, url, start=len(first))


async def test_store_only_followers_cost_a_list_per_poll_and_no_manifest_get(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")  # checkpoints every 0.1 s; a seal at 64 KiB
    api_cfg = make_config(**{**DELTAS, "LOGSHIP_WATCH_CHECKPOINT_SECONDS": str(API_POLL_S)})
    p = steady(cfg, "sf", "3000", "0.002")  # 29-byte lines: ≈ 87 KB over 6 s or more
    store = open_store(cfg.store)
    puts = counted(store, "put")
    server = TestServer(create_app(api_cfg, serve_spool=False), host="127.0.0.1")
    await server.start_server()
    api_store = server.app[STORE]
    gets = counted(api_store, "get")
    manifest = names.manifest_key("sf", "h1")
    u = f"http://127.0.0.1:{server.port}/api/v1/tasks/sf/hosts/h1"
    try:
        async with watching(cfg, store), aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:  # the store has the log
                async with session.get(f"{u}/log") as r:
                    if r.status == 200 and await r.read():
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            lists0, manifest_gets0, puts0 = api_store.stats.requests["list_objects_v2"], gets[manifest], puts.copy()
            t0 = time.monotonic()
            tails = await asyncio.wait_for(asyncio.gather(resumed(session, f"{u}/tail"), *(
                sse_tail(session, f"{u}/tail") for _ in range(FOLLOWERS - 1))), 120)
            elapsed = time.monotonic() - t0
            assert p.wait(30) == 0
        want = spooled(cfg.spool_dir, "sf")
        assert all(t == want for t in tails)
        lists = api_store.stats.requests["list_objects_v2"] - lists0
        manifest_gets = gets[manifest] - manifest_gets0
        new = puts - puts0
        deltas = sum(n for k, n in new.items() if names.parse_delta_name(k.rsplit("/", 1)[-1]))
        commits = new[manifest]
        sealed = sum(1 for k in new if ".frames" in k or k.endswith(".idx"))
        # Each tail's connection (one more: the resumed one) makes one view (the proxy middleware's, handed to
        # the route); then only the poller reads the manifest: its first view, its first refresh on the file
        # store (an etag that is no MD5 is not recorded) and once per commit it lists (a seal, the end); it
        # lists once per poll, the followers not at all.
        polls = elapsed / API_POLL_S + 1
        assert deltas >= 10 and commits >= 2 and sealed >= 1, (deltas, commits, sealed)
        views = FOLLOWERS + 1
        assert manifest_gets <= commits + views + 4, (manifest_gets, commits)  # was ≈ 100: one per wake-up
        assert lists <= polls + commits + views + 4, (lists, polls, commits)
        assert lists <= deltas + commits + views + 4, (lists, deltas)
        delta_gets = [n for k, n in gets.items() if names.parse_delta_name(k.rsplit("/", 1)[-1])]
        assert delta_gets and max(delta_gets) <= 2  # each new delta: its check, shared by the poller and readers
    finally:
        stop_agent(p, cfg.spool_dir, "sf")
        await server.close()
        await store.close()
