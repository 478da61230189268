"""Liveness through the store (issue 15) and running sizes in the listing (issue 16 item 8): a real agent, a real
watcher, a central API that has no spool; bad liveness in the store costs only its own log's liveness."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.proxy_check import BadAnswer, check_meta
from shipper.errors import ObjectNotFound
from shipper.format import archive, liveness, names
from shipper.store import Store, open_store
from shipper.watcher import Watcher

from .support import LOGSHIP, MakeConfig, agent_env, run_agent, stop_agent

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

FAST = {"LOGSHIP_AGENT_SAMPLE_SECONDS": "0.2"}
Client = TestClient[Any, Any]


async def central(cfg: Any) -> Client:
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    return client


async def meta(client: Client, task: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/tasks/{task}/hosts/h1")
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def listing(client: Client, query: str = "") -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/tasks?{query}")
    assert r.status == 200, await r.text()
    rows: list[dict[str, Any]] = (await r.json())["logs"]
    return rows


def start(cfg: Any, task: str, script: str, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*LOGSHIP, "run", "--task", task, "--host", "h1", *args, "--", "sh", "-c", script],
                            env={**agent_env(cfg), **(env or FAST)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def test_a_sleeping_task_is_live_in_a_central_api_within_one_interval(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.5")
    agent = start(cfg, "sleepy", "echo started; sleep 60")
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    client = await central(cfg)
    try:
        end = time.monotonic() + 20
        first: dict[str, Any] | None = None
        while first is None:  # the agent's sample, through one watcher pass, to a central API
            assert time.monotonic() < end, "no liveness from the store"
            await w.run_once()
            doc = await meta(client, "sleepy") if await exists(store, names.manifest_key("sleepy", "h1")) else {}
            live = doc.get("liveness")
            if live and any(p["command"] == "sleep 60" for p in live["processes"]):
                first = live
            await asyncio.sleep(0.1)
        sleep = next(p for p in first["processes"] if p["command"] == "sleep 60")
        assert sleep["state"] == "S" and first["processes"][0]["pid"] == sleep["ppid"]
        # nothing new to checkpoint from here on: the sample still reaches the store, as its own object,
        # once the silence shows (10 s); from then on a central answer counts it to its own time
        t0 = time.monotonic()
        while (got := await _stored(store, "sleepy")) is None or not liveness.silent(got):
            assert time.monotonic() - t0 < 20, "the silence never reached the store"
            await w.run_once()
            await asyncio.sleep(0.25)
        assert got.last_output_ns == first["last_output_ns"]
        a = (await meta(client, "sleepy"))["liveness"]["silent_seconds"]
        await asyncio.sleep(0.5)
        b = (await meta(client, "sleepy"))["liveness"]["silent_seconds"]
        assert 10 <= a < b and b - a >= 0.4
        puts = w.stats["liveness_puts"]
        for _ in range(6):  # unchanged samples of a silent task cost no request (until the refresh, 60 s)
            await asyncio.sleep(0.3)
            await w.run_once()
        assert w.stats["liveness_puts"] == puts
        # the listing: running, silent_seconds 0 in a central one (noted at 60 s of silence), size of the
        # sealed segments (none yet: 0, not null)
        [row] = await listing(client, "status=running")
        assert (row["task"], row["silent_seconds"], row["size"], row["lines"]) == ("sleepy", 0.0, 0, 0)
    finally:
        await client.close()
        stop_agent(agent, cfg.spool_dir, "sleepy")
        await store.close()


async def exists(store: Store, key: str) -> bool:
    try:
        await store.head(key)
    except ObjectNotFound:
        return False
    return True


async def _stored(store: Store, task: str) -> liveness.Liveness | None:
    """The watcher's liveness object of a running log (None before the first one: the manifest had it)."""
    try:
        return liveness.parse_stored(json.loads(await store.get(names.liveness_key(task, "h1"))))
    except ObjectNotFound:
        return None


async def test_a_silence_kill_ends_with_end_reason_and_the_tree_in_the_manifest(make_config: MakeConfig) -> None:
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "stuck", ["sh", "-c", "echo hi; sleep 60"], env={**agent_env(cfg), **FAST},
                    args=["--silence-timeout", "1s", "--on-silence", "kill", "--silence-grace", "1s"])
    assert res.returncode == 124
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    client = await central(cfg)
    try:
        await w.run_once()
        doc = await archive.load_manifest(store, "stuck", "h1")
        assert (doc.status, doc.exit_code, doc.end_reason) == ("finished", 124, "silence")
        assert doc.liveness is not None and doc.liveness.events[-1].action == "kill"
        assert any(p.command == "sleep 60" for p in doc.liveness.events[-1].processes)  # the tree at the kill
        assert not await exists(store, names.liveness_key("stuck", "h1"))  # the manifest keeps the last sample
        m = await meta(client, "stuck")
        assert m["end_reason"] == "silence" and m["exit_code"] == 124
        silent = m["liveness"]["silent_seconds"]
        assert silent >= 1 and m["liveness"]["events"][-1]["action"] == "kill"
        await asyncio.sleep(0.3)
        assert (await meta(client, "stuck"))["liveness"]["silent_seconds"] == silent  # a finished log: at its end
    finally:
        await client.close()
        await store.close()


async def test_silent_since_and_running_sizes_in_the_listing(make_config: MakeConfig) -> None:
    """A running log whose agent reports it silent for 10 minutes (its liveness.json, written here as the
    agent would: the agent samples once an hour in this test) is noted silent in the catalog; its sealed
    segments' size shows in a central listing, the exact size in one beside the spool."""
    cfg = make_config(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    slow = {"LOGSHIP_AGENT_SAMPLE_SECONDS": "3600"}
    quiet = start(cfg, "quiet", "seq 1 30000; sleep 60", env=slow)
    busy = start(cfg, "busy", "while :; do echo tick; sleep 0.2; done", env=slow)
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    client = await central(cfg)
    beside = TestClient(TestServer(create_app(cfg, serve_spool=True)))
    await beside.start_server()
    path = cfg.spool_dir / "quiet" / "h1" / names.LIVENESS_FILE
    try:
        end = time.monotonic() + 20
        while not (path.exists() and (cfg.spool_dir / "quiet" / "h1" / "00000002.log").exists()):
            assert time.monotonic() < end
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # seq is done: the task sleeps
        now = time.time_ns()
        doc = liveness.read(path)
        assert doc is not None
        path.write_bytes(liveness.dumps(dataclasses.replace(doc, written_ns=now, last_output_ns=now - 600 * 10**9)))
        await w.run_once()
        await w.run_once()
        rows = {r["task"]: r for r in await listing(client)}
        quiet_row = rows["quiet"]
        assert quiet_row["status"] == "running" and quiet_row["silent_seconds"] >= 600
        assert quiet_row["size"] > 0 and quiet_row["lines"] > 0  # its sealed segments (issue 16 item 8)
        assert rows["busy"]["silent_seconds"] == 0.0
        assert [r["task"] for r in await listing(client, "silent_since=5m")] == ["quiet"]
        assert [r["task"] for r in await listing(client, "silent_since=5m&status=running")] == ["quiet"]
        assert await listing(client, "silent_since=20m") == []
        # beside the spool: the exact size (where the newest index ends) and the silence from liveness.json
        exact = {r["task"]: r for r in await listing(beside)}
        assert exact["quiet"]["size"] == len(b"".join(b"%d\n" % i for i in range(1, 30001)))
        assert exact["quiet"]["silent_seconds"] >= 600 and exact["busy"]["size"] > 0
        assert [r["task"] for r in await listing(beside, "silent_since=5m")] == ["quiet"]
        # output resumes (the agent's next sample): the catalog notes it
        path.write_bytes(liveness.dumps(dataclasses.replace(doc, written_ns=time.time_ns(),
                                                            last_output_ns=time.time_ns())))
        await w.run_once()
        assert await listing(client, "silent_since=5m") == []
    finally:
        await client.close()
        await beside.close()
        stop_agent(quiet, cfg.spool_dir, "quiet")
        stop_agent(busy, cfg.spool_dir, "busy")
        await store.close()


async def test_a_bad_liveness_in_the_store_costs_only_its_own(make_config: MakeConfig) -> None:
    """A manifest whose `liveness` is not one a watcher writes still serves its log (without liveness), and
    a garbage liveness object is left out the same way; the other log keeps its own."""
    cfg = make_config()
    for task in ("good", "bad"):
        res = run_agent(cfg.spool_dir, task, ["sh", "-c", "echo x; sleep 0.6"], env={**agent_env(cfg), **FAST})
        assert res.returncode == 0
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    client = await central(cfg)
    try:
        await w.run_once()
        key = names.manifest_key("bad", "h1")
        raw = json.loads(await store.get(key))
        assert raw["liveness"]["processes"]
        hostile: list[Any] = [
            {**raw["liveness"], "processes": [{"pid": 1}]}, {**raw["liveness"], "version": 9}, "x", [1],
            {**raw["liveness"], "processes": raw["liveness"]["processes"] * 65, "processes_total": 65 * 9}]
        for bad in hostile:
            await store.put(key, json.dumps({**raw, "liveness": bad}, indent=1).encode())
            m = await meta(client, "bad")
            assert m["status"] == "finished" and "liveness" not in m, bad
            r = await client.get("/api/v1/tasks/bad/hosts/h1/log")
            assert r.status == 200 and await r.read() == b"x\n"
        assert (await meta(client, "good"))["liveness"]["processes"]
        assert {r["task"] for r in await listing(client)} == {"good", "bad"}
    finally:
        await client.close()
        await store.close()


async def test_a_bad_liveness_object_of_a_running_log_costs_only_its_liveness(make_config: MakeConfig) -> None:
    cfg = make_config()
    agent = start(cfg, "run", "echo started; sleep 60")
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    client = await central(cfg)
    try:
        end = time.monotonic() + 20
        while not (cfg.spool_dir / "run" / "h1" / names.LIVENESS_FILE).exists():  # the manifest's first sample
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        await w.run_once()
        assert (await archive.load_manifest(store, "run", "h1")).liveness is not None
        good = (await meta(client, "run"))["liveness"]
        key = names.liveness_key("run", "h1")
        for bad in (b"{", b"[]", b" " * (liveness.STORED_MAX + 1), b'{"version":1,"written_ns":99e99}'):
            await store.put(key, bad)
            m = await meta(client, "run")  # the manifest's sample is left: the object is ignored
            assert m["status"] == "running" and m["liveness"]["last_output_ns"] == good["last_output_ns"], bad
    finally:
        await client.close()
        stop_agent(agent, cfg.spool_dir, "run")
        await store.close()


def test_a_node_answering_a_bad_liveness_is_not_believed() -> None:
    """api/proxy_check.py: a proxied metadata answer's `liveness` is held to what liveness.json may hold (a
    central API then answers from the store instead)."""
    proc = {"pid": 7, "ppid": 1, "state": "S", "cpu_seconds": 0.1, "rss_bytes": 10, "command": "sleep 9", "wchan": ""}
    good: dict[str, Any] = {"last_output_ns": 1, "silent_seconds": 2.5, "sampled_ns": 3, "cpu_seconds": 0.5,
                            "processes": [proc], "processes_total": 1, "silence": None, "events": []}
    base = {"task": "t", "host": "h", "run_id": "r", "live_size": 10, "status": "running"}
    check_meta(json.dumps({**base, "liveness": good}).encode(), task="t", host="h", run_id="r", held=5)
    check_meta(json.dumps(base).encode(), task="t", host="h", run_id="r", held=5)
    bad_process = {**proc, "state": "??"}
    bad: Any
    for bad in ([], {**good, "silent_seconds": -1}, {**good, "silent_seconds": "soon"},
                {**good, "processes": [bad_process]}, {**good, "processes": [{"pid": 7}]},
                {**good, "processes": [proc] * 257, "processes_total": 257}):
        with pytest.raises(BadAnswer, match="liveness"):
            check_meta(json.dumps({**base, "liveness": bad}).encode(), task="t", host="h", run_id="r", held=5)
