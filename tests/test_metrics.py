"""/metrics: what the API and the watcher sent to the store, and a watcher state file that others can write."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shipper.config import Config
from shipper.format import names
from shipper.watcher import watch

from .support import agent_env, run_agent


@pytest.mark.asyncio(loop_scope="session")
async def test_metrics_count_store_requests_and_survive_a_garbage_state_file(
        make_config: Callable[..., Config]) -> None:
    """/metrics shows what the watcher and the API sent to the store; the watcher's state file is a spool
    file others can write, so garbage in it costs its own lines, never the page."""
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "counted", [sys.executable, "-c", "print('x')"], env=agent_env(cfg))
    assert res.returncode == 0
    await watch(cfg, once=True)
    client = TestClient(TestServer(create_app(cfg)))
    await client.start_server()
    try:
        assert (await client.get("/api/v1/tasks/counted/hosts/h1/log")).status == 200
        text = await (await client.get("/metrics")).text()
        puts = [ln for ln in text.splitlines()
                if ln.startswith('logship_store_requests_total{op="put_object",by="watcher"}')]
        assert puts and int(puts[0].split()[-1]) >= 3  # segment, index, manifest
        sent = [ln for ln in text.splitlines() if ln.startswith('logship_store_bytes_sent_total{by="watcher"}')]
        assert sent and int(sent[0].split()[-1]) > 0
        assert 'logship_store_requests_total{op="get_object",by="api"}' in text
        state = cfg.spool_dir / names.WATCHER_STATE_FILE
        for garbage in (b"[1]", b"{", b'{"stats": {"x": "1", "ok": 2, "bad name": 3, "inf": 1e999}, '
                        b'"store_stats": {"requests": [1], "bytes_sent": "x"}}'):
            state.write_bytes(garbage)
            r = await client.get("/metrics")
            assert r.status == 200, garbage
            text = await r.text()
            assert "bad name" not in text and "logship_watcher_x_total" not in text
        assert "logship_watcher_ok_total 2" in text
    finally:
        await client.close()
