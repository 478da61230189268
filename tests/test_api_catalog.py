"""GET /api/v1/tasks answered from the catalog: every filter (label= repeatable, until= exclusive), paging,
bad label= input as a 400 with a hint, and garbage catalog objects costing only their own rows."""

from __future__ import annotations

import sys
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shipper import catalog
from shipper.config import Config
from shipper.format import names
from shipper.store import open_store
from shipper.watcher import watch

from .support import MakeConfig, agent_env, run_agent

# task -> (host, labels): started in this order, so the listing (newest first) is the reverse
LOGS = {"j0": ("a", ["team=infra", "env=prod"]), "j1": ("b", ["team=infra"]), "j2": ("a", ["team=web", "env=prod"]),
        "j3": ("b", []), "j4": ("a", ["team=infra", "env=prod"])}


async def archive(make_config: MakeConfig) -> Config:
    cfg = make_config()
    for task, (host, labels) in LOGS.items():
        args = [a for label in labels for a in ("--label", label)]
        res = run_agent(cfg.spool_dir, task, [sys.executable, "-c", f"print('{task}')"], env=agent_env(cfg),
                        host=host, args=args)
        assert res.returncode == 0, res.stderr
    await watch(cfg, once=True)
    return cfg


async def listing(client: TestClient[Any, Any], query: str) -> list[str]:
    r = await client.get(f"/api/v1/tasks?{query}")
    assert r.status == 200, await r.text()
    return [row["task"] for row in (await r.json())["logs"]]


async def test_filters_labels_until_and_pages(make_config: MakeConfig) -> None:
    cfg = await archive(make_config)
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    try:
        rows = (await (await client.get("/api/v1/tasks")).json())["logs"]
        assert [r["task"] for r in rows] == ["j4", "j3", "j2", "j1", "j0"]
        assert rows[0]["labels"] == {"team": "infra", "env": "prod"} and rows[0]["status"] == "finished"
        assert set(rows[0]) == {"task", "host", "run_id", "status", "exit_code", "started_ns", "ended_ns", "size",
                                "lines", "labels", "command", "silent_since_ns", "silent_seconds",
                                "end_reason"}  # today's shape
        assert rows[0]["silent_seconds"] is None  # finished: not silent, ended
        assert rows[0]["size"] == 3 and rows[0]["exit_code"] == 0
        assert await listing(client, "label=team=infra") == ["j4", "j1", "j0"]
        assert await listing(client, "label=team=infra&label=env=prod") == ["j4", "j0"]  # all must match
        assert await listing(client, "label=team=infra&host=a&task=j2") == []
        assert await listing(client, "label=team=nobody") == []
        assert await listing(client, "host=b") == ["j3", "j1"]
        assert await listing(client, "task=j2") == ["j2"]
        assert await listing(client, "status=finished&label=env=prod") == ["j4", "j2", "j0"]
        assert await listing(client, "status=running") == []
        j2 = rows[2]["started_ns"]
        assert await listing(client, f"until={j2}") == ["j1", "j0"]  # exclusive
        assert await listing(client, f"since={j2}") == ["j4", "j3", "j2"]
        assert await listing(client, f"since={j2}&until={rows[0]['started_ns']}") == ["j3", "j2"]
        seen, cursor = [], None
        while True:
            q = "limit=1&label=team=infra" + (f"&cursor={cursor}" if cursor else "")
            page = await (await client.get(f"/api/v1/tasks?{q}")).json()
            seen += [r["task"] for r in page["logs"]]
            if not (cursor := page["next_cursor"]):
                break
        assert seen == ["j4", "j1", "j0"]
        # /metrics: the listings this API answered, their requests, the records waiting for compaction
        m = await catalog_metrics(client)
        assert m["logship_catalog_listings_total"] == 15 and m["logship_catalog_listing_seconds_total"] > 0
        assert m["logship_catalog_requests_total"] >= 15 and m["logship_catalog_head_records"] == len(LOGS)
        assert m["logship_catalog_parts"] == 0 and m["logship_catalog_bad_objects_total"] == 0
        store = open_store(cfg.store)
        try:
            for _ in range(2):  # fold the records into a part, then delete them (what it replaces goes later)
                await catalog.Compactor(store, catalog.Settings(grace_s=0)).run()
        finally:
            await store.close()
        assert await listing(client, "") == ["j4", "j3", "j2", "j1", "j0"]
        m = await catalog_metrics(client)
        assert m["logship_catalog_head_records"] == 0 and m["logship_catalog_parts"] == 1
        assert m["logship_catalog_cache_bytes"] > 0
    finally:
        await client.close()


async def catalog_metrics(client: TestClient[Any, Any]) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {k: float(v) for k, _, v in (line.partition(" ") for line in text.splitlines())
            if k.startswith("logship_catalog_")}


async def test_bad_label_filters_are_a_400_with_a_hint(make_config: MakeConfig) -> None:
    client = TestClient(TestServer(create_app(make_config(), serve_spool=False)))
    await client.start_server()
    try:
        for query in ("label=team", "label==x", "label=", "&".join(["label=a=b"] * 17),
                      "label=k=" + "v" * 300, "until=tomorrowish"):
            r = await client.get(f"/api/v1/tasks?{query}")
            body = await r.json()
            assert r.status == 400 and body["error"] == "bad_request" and body["hint"], (query, body)
        assert await listing(client, "label=k=") == []  # an empty value is a value
        assert await listing(client, "label=k=a=b") == []  # the value may hold '='
    finally:
        await client.close()


async def test_garbage_catalog_objects_cost_only_their_rows(make_config: MakeConfig) -> None:
    cfg = await archive(make_config)
    store = open_store(cfg.store)
    try:
        records = [o.key for o in await store.list(names.CATALOG_PREFIX) if names.parse_catalog_record_key(o.key)]
        assert records
        j0 = [k for k in records if "~j0~" in k]
        assert len(j0) == 1
        await store.put(j0[0], b"\x00garbage")  # its own row goes (if the key holds it, nothing changes)
        kept = [] if j0[0].endswith("~-") else ["j0"]
        garbage = {
            names.catalog_record_key("nonsense"): b"x",
            names.catalog_record_key("0" * 16 + "~jx~h1~2" + "0" * 16 + "~-"): b"not json",  # body-held, bad body
            names.catalog_record_key("0" * 16 + "~jy~h1~2" + "0" * 16 + "~!!!"): b"",  # bad payload
            names.catalog_running_key("zz~jz~h1~-"): b"{}",
            names.catalog_part_key("2026-01-01", 1, "0" * 16): b"PAR1 not parquet",
        }
        for key, body in garbage.items():
            await store.put(key, body)
    finally:
        await store.close()
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    try:
        assert await listing(client, "") == ["j4", "j3", "j2", "j1", *kept]
        assert await listing(client, "status=running") == []
        assert await listing(client, "label=team=infra&limit=2") == ["j4", "j1"]
        assert (await client.get("/api/v1/tasks/j0/hosts/a/log")).status == 200  # the manifest is the truth
    finally:
        await client.close()


async def test_an_api_beside_the_spool_lists_logs_the_catalog_has_not_noted_yet(make_config: MakeConfig) -> None:
    cfg = await archive(make_config)
    assert run_agent(cfg.spool_dir, "fresh", ["true"], env=agent_env(cfg), host="a",
                     args=["--label", "team=infra"]).returncode == 0  # no watcher pass since: only in the spool
    client = TestClient(TestServer(create_app(cfg, serve_spool=True)))
    await client.start_server()
    try:
        assert await listing(client, "") == ["fresh", "j4", "j3", "j2", "j1", "j0"]
        assert await listing(client, "label=team=infra&limit=2") == ["fresh", "j4"]
        assert await listing(client, "host=b") == ["j3", "j1"]
        page = await (await client.get("/api/v1/tasks?limit=1")).json()
        assert [r["task"] for r in page["logs"]] == ["fresh"] and page["logs"][0]["size"] is None
        assert await listing(client, f"cursor={page['next_cursor']}&limit=2") == ["j4", "j3"]
    finally:
        await client.close()
