"""The ibex routes find a task's runs in the catalog: the newest run per host, redos past one batch of runs,
in requests that do not grow with the other logs; a log the catalog does not know is still found."""

from __future__ import annotations

import dataclasses
import secrets
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.keys import STORE
from shipper import catalog
from shipper.config import Config
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.store import Store, open_store

from .support import MakeConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def put_log(store: Store, task: str, host: str, *, note: bool = True, exit_code: int = 0) -> None:
    """A finished, empty log: its manifest, noted in the catalog as the watcher notes it."""
    started = time.time_ns() - 10**9
    run = {"task": task, "host": host, "run_id": secrets.token_hex(8), "started_ns": started,
           "command": ["sh", "script"], "labels": {"source": "ibex"}}
    end = {"exit_code": exit_code, "ended_ns": started + 1}
    doc = Manifest.build(run, end, manifest.FINISHED, [], None, [], "zstd")
    await store.put(names.manifest_key(task, host), doc.dump())
    if note:
        await catalog.Writer(store).note(doc)


async def hosts_and_cost(cfg: Config, ibex_id: int) -> tuple[int, list[tuple[str, str]], int]:
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    try:
        store = client.app[STORE]
        before = sum(store.stats.requests.values())
        resp = await client.get(f"/ibex/v1/task/{ibex_id}/stdout")
        body = await resp.json() if resp.status == 200 else {"dat": []}
        return resp.status, [(r["host"], r["status"]) for r in body["dat"]], sum(store.stats.requests.values()) - before
    finally:
        await client.close()


async def test_ibex_routes_read_the_catalog(make_config: MakeConfig) -> None:
    base = make_config()
    costs = []
    for others in (3, 30):
        cfg = dataclasses.replace(base, store=dataclasses.replace(
            base.store, url=f"{base.store.url.rstrip('/')}/o{others}-{secrets.token_hex(3)}/"))
        store = open_store(cfg.store)
        try:
            await put_log(store, names.ibex_task(7), "h2")
            for run in range(1, 11):  # ten runs on h1: past the first batch of runs asked for
                await put_log(store, names.ibex_task(7, run), "h1", exit_code=1 if run == 10 else 0)
            for i in range(others):  # tasks whose keys start like ibex-7's: ibex-70, ibex-700…
                await put_log(store, f"ibex-7{i}", "h1")
            await catalog.Compactor(store, catalog.Settings(grace_s=0)).run()
            status, hosts, cost = await hosts_and_cost(cfg, 7)
            assert (status, hosts) == (200, [("h1", "failed"), ("h2", "success")])  # h1: its 10th run
            costs.append(cost)
            # A log the catalog does not know (written before it) is found by listing its prefix.
            await put_log(store, names.ibex_task(9), "h3", note=False)
            assert (await hosts_and_cost(cfg, 9))[:2] == (200, [("h3", "success")])
            assert (await hosts_and_cost(cfg, 8))[0] == 404
        finally:
            await store.close()
    assert costs[0] == costs[1], costs
