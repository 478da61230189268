"""The watcher notes each status change in the catalog right after the manifest: the listing shows a started
log and a finished one within the pass that committed it (well within one checkpoint interval)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shipper import catalog
from shipper.catalog import writer as catalog_writer
from shipper.format import names
from shipper.retention import maintenance
from shipper.store import open_store
from shipper.watcher import Watcher, watch

from .support import MakeConfig, agent_env, run_agent, start_agent, stop_agent


@pytest.mark.parametrize("make_config", ["file", "s3", "rclone"], indirect=True)  # a second S3 server too
async def test_started_and_finished_logs_show_in_the_listing(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.5")
    p = start_agent(cfg.spool_dir, "live", ["sh", "-c", "echo one; sleep 30"], env=agent_env(cfg))
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        rows: list[dict[str, object]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not rows:
            await w.run_once()
            rows, _ = await catalog.list_logs(store, catalog.Filters(status="running"))
            await asyncio.sleep(0.05)
        assert [(r["task"], r["host"], r["status"]) for r in rows] == [("live", "h1", "running")]
        written = catalog_writer.writer(store).records
        for _ in range(3):  # checkpoints of the running log change no status: no record, no request
            await asyncio.sleep(0.6)
            await w.run_once()
        assert catalog_writer.writer(store).records == written
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        t0 = time.monotonic()
        await w.run_once()
        rows, nxt = await catalog.list_logs(store, catalog.Filters(task="live"))
        assert time.monotonic() - t0 < 0.5  # one pass, inside one checkpoint interval
        assert [(r["task"], r["status"]) for r in rows] == [("live", "finished")] and nxt is None
        assert (await catalog.list_logs(store, catalog.Filters(status="running")))[0] == []
        assert (await catalog.list_logs(store, catalog.Filters(host="h1")))[0][0]["task"] == "live"
    finally:
        await store.close()
        stop_agent(p, cfg.spool_dir, "live")


async def test_logship_watch_compacts_the_catalog_on_its_schedule(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_COMPACT_EVERY="0.2", LOGSHIP_COMPACT_CATALOG_EVERY="0.2")
    for task in ("c1", "c2"):
        assert run_agent(cfg.spool_dir, task, ["true"], env=agent_env(cfg)).returncode == 0
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    stop = asyncio.Event()
    job = maintenance.start(cfg, store, stop)
    assert job is not None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [o.key for o in await store.list(names.CATALOG_PREFIX) if names.parse_catalog_part_key(o.key)]
            if found:
                break
            await asyncio.sleep(0.1)
        assert found, "no catalog part written"
        rows, _ = await catalog.list_logs(store, catalog.Filters())
        assert sorted(r["task"] for r in rows) == ["c1", "c2"]
    finally:
        stop.set()
        await job
        await store.close()
