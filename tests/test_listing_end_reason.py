"""GET /api/v1/tasks says how each run ended (`end_reason`): `exit`, `signal`, `silence` (the agent's
--on-silence kill), `lost`, null while running; from the catalog (a central API: the manifest read only for a
run the agent's policy ended) and beside the spool alike, and checked against the OpenAPI document."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.openapi import DOCUMENT
from shipper.config import Config
from shipper.watcher import watch

from .support import MakeConfig, agent_env, kill_task, run_agent, spooled, start_agent, stop_agent

SUMMARY = DOCUMENT["components"]["schemas"]["LogSummary"]  # what the OpenAPI document says a row is
WANT = {"exits": "exit", "signalled": "signal", "hung": "silence", "lost": "lost", "running": None}


async def rows(cfg: Config, serve_spool: bool) -> dict[str, dict[str, Any]]:
    client = TestClient(TestServer(create_app(cfg, serve_spool=serve_spool)))
    await client.start_server()
    try:
        r = await client.get("/api/v1/tasks")
        assert r.status == 200, await r.text()
        got = (await r.json())["logs"]
        for row in got:  # every field the document requires, end_reason among them
            assert set(SUMMARY["required"]) <= set(row), sorted(set(SUMMARY["required"]) - set(row))
        return {row["task"]: row for row in got}
    finally:
        await client.close()


async def test_each_row_says_how_its_run_ended(make_config: MakeConfig) -> None:
    cfg = make_config()
    env, spool = agent_env(cfg), cfg.spool_dir
    assert run_agent(spool, "exits", ["sh", "-c", "echo ok; exit 3"], env=env).returncode == 3
    assert run_agent(spool, "signalled", ["sh", "-c", "echo x; kill -TERM $$"], env=env).returncode == 128 + 15
    hung = run_agent(spool, "hung", ["sh", "-c", "echo start; sleep 600"], env=env,
                     args=["--silence-timeout", "1s", "--on-silence", "kill", "--silence-grace", "1s"])
    assert hung.returncode == 124, hung.stderr
    lost = start_agent(spool, "lost", ["sh", "-c", "echo started; sleep 600"], env=env)
    running = start_agent(spool, "running", ["sh", "-c", "echo started; sleep 600"], env=env)
    try:
        for task in ("lost", "running"):
            deadline = time.monotonic() + 60
            while not (spool / task / "h1").is_dir() or spooled(spool, task) != b"started\n":
                assert time.monotonic() < deadline, f"the agent of {task} did not start"
                time.sleep(0.05)
        os.kill(lost.pid, signal.SIGKILL)  # the agent dies: the watcher marks its log lost
        lost.wait()
        kill_task(spool, "lost")
        w = await watch(cfg, once=True)
        assert w.stats["lost_logs"] == 1
        for beside in (False, True):  # the catalog's rows; then the spool's, fresher
            got = await rows(cfg, beside)
            assert {t: r["end_reason"] for t, r in got.items()} == WANT, (beside, got)
            assert got["signalled"]["exit_code"] == 143 and got["hung"]["exit_code"] == 124
    finally:
        stop_agent(running, spool, "running")
        stop_agent(lost, spool, "lost")
    assert "end_reason" in SUMMARY["required"] and SUMMARY["properties"]["end_reason"]["type"] == ["string", "null"]
