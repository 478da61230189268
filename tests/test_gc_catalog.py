"""gc selects old logs from the catalog: its requests grow with the logs it deletes, not with the archive;
a log the catalog does not know is left to the sweep (`logship gc --sweep`, retention.sweep_every)."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import time

import pytest

from shipper import catalog
from shipper.config import Config
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.retention.gc import Collector, Policy
from shipper.store import Store, open_store

from .support import LOGSHIP, MakeConfig, agent_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = 86_400 * 10**9
NOW = {"LOGSHIP_QUERY_GRACE_SECONDS": "0"}


def fresh(cfg: Config) -> Config:
    """The config with a store of its own (one test builds several archives)."""
    url = f"{cfg.store.url.rstrip('/')}/a-{secrets.token_hex(3)}/"
    return dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, url=url))


async def put_log(store: Store, task: str, ended_days_ago: float, *, note: bool = True,
                  status: str = manifest.FINISHED) -> None:
    """A finished log (a manifest and one object beside it), noted in the catalog as a watcher notes it."""
    ended = time.time_ns() - int(ended_days_ago * DAY)
    run = {"task": task, "host": "h1", "run_id": secrets.token_hex(8), "started_ns": ended - 60 * 10**9,
           "command": ["true"], "labels": {"team": "a"}}
    end = None if status == manifest.RUNNING else {"exit_code": 0, "ended_ns": ended}
    doc = Manifest.build(run, end, status, [], None, [], "zstd").replace(updated_ns=ended)
    await store.put(f"{names.log_prefix(task, 'h1')}extra.bin", b"x" * 10)
    await store.put(names.manifest_key(task, "h1"), doc.dump())
    if note:
        await catalog.Writer(store).note(doc)


async def tasks_left(store: Store) -> set[str]:
    return {p[0] for o in await store.list(names.LOGS_PREFIX) if (p := names.parse_log_prefix(o.key))}


async def test_gc_requests_grow_with_the_logs_it_deletes_not_the_archive(make_config: MakeConfig) -> None:
    base = make_config(**NOW)
    costs = {}
    for n in (20, 80):
        cfg = fresh(base)
        store = open_store(cfg.store)
        try:
            for i in range(n):
                await put_log(store, f"new-{i}", 0.1)
            old = {f"old-{i}" for i in range(4)}
            for t in old:
                await put_log(store, t, 10)
            await put_log(store, "old-running", 10, status=manifest.RUNNING)
            await catalog.Compactor(store, catalog.Settings(grace_s=0)).run()  # most rows in parts, as in life
            counting = open_store(cfg.store)  # a fresh client: its StoreStats count this gc only
            try:
                report = await Collector(counting, cfg).run(Policy(older_than_s=86400 * 5))
                costs[n] = dict(counting.stats.requests)
            finally:
                await counting.close()
            assert report.deleted_logs == len(old)
            assert await tasks_left(store) == {f"new-{i}" for i in range(n)} | {"old-running"}
            page, _ = await catalog.list_logs(store, catalog.Filters(), None, 1000)
            assert {r["task"] for r in page} == await tasks_left(store)
        finally:
            await store.close()
    assert costs[20] == costs[80], costs


async def test_a_log_the_catalog_does_not_know_goes_with_the_sweep(make_config: MakeConfig) -> None:
    cfg = make_config(**NOW)
    store = open_store(cfg.store)
    try:
        await put_log(store, "noted", 10)
        await put_log(store, "unnoted", 10, note=False)  # written before the catalog, or its note was lost
        await put_log(store, "young", 0.1, note=False)
        policy = Policy(older_than_s=86400 * 5)
        dry = await Collector(store, cfg).run(policy, dry_run=True)
        assert [v.task for v in dry.selected] == ["noted"]
        assert (await Collector(store, cfg).run(policy)).deleted_logs == 1
        assert await tasks_left(store) == {"unnoted", "young"}
        for args, says in ((), "would delete 0 logs"), (("--sweep",), "would delete unnoted/h1: finished"):
            res = subprocess.run([*LOGSHIP, "gc", "--older-than", "5d", "--dry-run", *args], env=agent_env(cfg),
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0 and says in res.stdout, res.stdout + res.stderr
        swept = await Collector(store, cfg).run(policy, sweep=True)
        assert swept.deleted_logs == 1
        assert await tasks_left(store) == {"young"}
    finally:
        await store.close()


async def test_a_stale_catalog_row_never_deletes_a_log_its_manifest_keeps(make_config: MakeConfig) -> None:
    """The catalog picks candidates; the manifest (the truth) decides: a row that says "ended 10 days
    ago" of a log whose manifest changed since is not deleted."""
    cfg = fresh(make_config(**NOW))
    store = open_store(cfg.store)
    try:
        await put_log(store, "touched", 10)
        key = names.manifest_key("touched", "h1")
        doc = Manifest.load(await store.get(key))
        await store.put(key, doc.replace(updated_ns=time.time_ns()).dump())  # not noted: same status
        report = await Collector(store, cfg).run(Policy(older_than_s=86400 * 5))
        assert report.deleted_logs == 0 and await tasks_left(store) == {"touched"}
    finally:
        await store.close()
