"""The API beside the spool serves a log's liveness (issue 15): a real `logship run` samples its task into
liveness.json, the metadata route and /metrics read it; a hostile liveness.json costs only its own key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import liveness
from api.app import create_app
from shipper.config import Config
from shipper.format import names

from .support import LOGSHIP, agent_env, run_agent

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

FAST = {"LOGSHIP_AGENT_SAMPLE_SECONDS": "0.2"}


async def meta(client: TestClient[Any, Any], task: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/tasks/{task}/hosts/h1")
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def sampled(client: TestClient[Any, Any], task: str, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    end = time.monotonic() + 20
    while True:
        r = await client.get(f"/api/v1/tasks/{task}/hosts/h1")  # 404 until the agent wrote run.json
        live: Any = (await r.json()).get("liveness") if r.status == 200 else None
        if isinstance(live, dict) and want(live):
            return live
        assert time.monotonic() < end, f"timed out; last liveness {live}"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_sleeping_task_grows_silent_in_the_api_and_metrics(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    agent = subprocess.Popen([*LOGSHIP, "run", "--task", "sleepy", "--host", "h1", "--", "sh", "-c",
                              "echo started; sleep 4"], env={**agent_env(cfg), **FAST}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    client = TestClient(TestServer(create_app(cfg)))
    await client.start_server()
    try:
        first = await sampled(client, "sleepy", lambda lv: any(p["command"] == "sleep 4" for p in lv["processes"]))
        await asyncio.sleep(0.6)
        doc = await meta(client, "sleepy")
        later = doc["liveness"]
        assert doc["status"] == "running"
        assert later["last_output_ns"] == first["last_output_ns"]  # nothing printed since "started"
        assert later["silent_seconds"] >= first["silent_seconds"] + 0.5  # counted to the answer's time
        sleep = next(p for p in later["processes"] if p["command"] == "sleep 4")
        root = later["processes"][0]
        assert (sleep["state"], sleep["ppid"]) == ("S", root["pid"])
        assert later["sampled_ns"] > 0 and later["cpu_seconds"] >= 0
        assert set(sleep) == {"pid", "ppid", "state", "cpu_seconds", "rss_bytes", "command", "wchan"}
        schema = liveness.SCHEMA  # what the OpenAPI document says: its keys, required ones present
        assert set(later) == set(schema["properties"]) and set(schema["required"]) <= set(later)
        assert set(sleep) == set(schema["properties"]["processes"]["items"]["required"])

        text = await (await client.get("/metrics")).text()
        labels = '{task="sleepy",host="h1"}'
        silent = [ln for ln in text.splitlines() if ln.startswith(f"logship_log_silent_seconds{labels} ")]
        cpu = [ln for ln in text.splitlines() if ln.startswith(f"logship_log_cpu_seconds_total{labels} ")]
        assert len(silent) == 1 and float(silent[0].split()[-1]) >= later["silent_seconds"]
        assert len(cpu) == 1 and float(cpu[0].split()[-1]) >= 0
        assert "# TYPE logship_log_silent_seconds gauge" in text
        assert "# TYPE logship_log_cpu_seconds_total counter" in text

        out, _ = await asyncio.to_thread(agent.communicate, timeout=60)
        assert agent.returncode == 0 and out == b"started\n"
        # a finished log keeps its last sample, its silence as of the end (not growing), and has no metrics
        done = await meta(client, "sleepy")
        assert done["status"] == "finished" and done["liveness"]["processes"]
        await asyncio.sleep(0.3)
        assert (await meta(client, "sleepy"))["liveness"]["silent_seconds"] == done["liveness"]["silent_seconds"]
        assert 'task="sleepy"' not in await (await client.get("/metrics")).text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
        await client.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_hostile_liveness_file_costs_only_its_key(make_config: Callable[..., Config], tmp_path: Path) -> None:
    """liveness.json is a spool file others can write: whatever is in its place, the metadata answers 200
    without `liveness` and /metrics answers without the log's lines."""
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "hostile", [sys.executable, "-c", "print('x')"], env={**agent_env(cfg), **FAST})
    assert res.returncode == 0
    path = cfg.spool_dir / "hostile" / "h1" / names.LIVENESS_FILE
    good = path.read_bytes()
    secret = tmp_path / "secret.json"
    secret.write_bytes(good)
    client = TestClient(TestServer(create_app(cfg)))
    await client.start_server()
    try:
        assert "liveness" in await meta(client, "hostile")
        hostile: list[bytes | None] = [
            b"", b"{", b"[1]", b"null", good.replace(b'"version":1', b'"version":2'),
            good.replace(b'"last_output_ns":', b'"last_output_ns":-'), b'{"version":1,"written_ns":1e999}',
            b'{"version":1,"written_ns":1,"last_output_ns":1,"processes":[{"pid":1,"ppid":0,"state":"\\ud800",'
            b'"cpu_seconds":0,"rss_bytes":0,"command":"x","wchan":""}]}',
            b"[" * 100_000 + b"]" * 100_000, b" " * ((1 << 20) + 1), None]
        for data in hostile:
            path.unlink(missing_ok=True)
            if data is None:
                os.symlink(secret, path)  # a link to a good file elsewhere is not followed
            else:
                path.write_bytes(data)
            doc = await meta(client, "hostile")
            assert "liveness" not in doc and doc["status"] == "finished", data[:40] if data else data
        path.unlink()
        path.mkdir()  # a directory in its place
        assert "liveness" not in await meta(client, "hostile")
        r = await client.get("/metrics")
        assert r.status == 200 and 'task="hostile"' not in await r.text()
    finally:
        await client.close()
