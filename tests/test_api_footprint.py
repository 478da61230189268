"""What `logship serve` costs before and per request (issue 11/16, the quiet A/B): it starts without the
libraries only some routes need, and requests for a log share its checked manifest without ever handing
out one that was not checked from the bytes the store holds now."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.keys import SOURCE
from api.source import FINISHED_VIEW_TTL
from shipper.config import Config
from shipper.format import archive, names
from shipper.format.manifest import Manifest
from shipper.store import open_store
from shipper.watcher import watch

from .support import ROOT, agent_env, run_agent

# pyarrow alone is ≈ 40 MB of RSS; the listing (the catalog) and SQL import theirs when first asked
HEAVY = ("pyarrow", "duckdb", "shipper.catalog", "shipper.query")
STARTUP = """
import json, sys
from api import server
from api.app import create_app
from shipper.config import load_config
create_app(load_config())
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'duckdb')
                        or m.startswith(('shipper.catalog', 'shipper.query')))))
"""


def test_the_api_starts_without_the_libraries_of_the_listing_and_sql(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path / 'store'}"}
    out = subprocess.run([sys.executable, "-c", STARTUP], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.startswith(HEAVY)], loaded


def test_the_manifest_cache_gives_back_only_what_was_checked_from_the_same_bytes() -> None:
    doc = Manifest.parse({"version": 1, "task": "t", "host": "h", "run_id": "0f" * 16, "status": "finished",
                          "exit_code": 0, "signal": None, "started_ns": 1, "ended_ns": 2, "command": ["x"],
                          "labels": {}, "compression": "zstd", "size": 0, "lines": 0, "segments": [],
                          "checkpoint": None, "dropped": [], "dropped_bytes": 0, "updated_ns": 3})
    cache = archive.ManifestCache(max_bytes=400)
    cache.put("a", b"x" * 100, doc)
    assert cache.get("a", b"x" * 100) is doc
    assert cache.get("a", b"x" * 99 + b"y") is None  # other bytes: parsed and checked again by the caller
    assert cache.get("b", b"x" * 100) is None  # the same bytes under another log's key
    cache.put("huge", b"x" * 101, doc)  # over a quarter of the bound: not kept
    assert cache.get("huge", b"x" * 101) is None
    for k in "bcde":
        cache.put(k, b"x" * 100, doc)
    assert cache.held <= 400 and cache.get("a", b"x" * 100) is None  # the least recently used went first
    assert cache.get("e", b"x" * 100) is doc


@pytest.mark.asyncio(loop_scope="session")
async def test_requests_share_a_checked_manifest_and_a_changed_one_is_checked_again(
        make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "job", [sys.executable, "-c", "print('hello')"], env=agent_env(cfg))
    assert res.returncode == 0
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    key = names.manifest_key("job", "h1")
    good = await store.get(key)
    app = create_app(cfg, serve_spool=False)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        source = app[SOURCE]
        docs = []
        for _ in range(2):
            r = await client.get("/api/v1/tasks/job/hosts/h1/log")
            assert r.status == 200 and await r.read() == b"hello\n"
            docs.append((await source.view("job", "h1", recent=False)).doc)
        assert docs[0] is docs[1]  # parsed once: the second GET of the same bytes skipped the checks

        await store.put(key, good.replace(b'"finished"', b'"finishe"'))  # damaged: checked again, refused
        await asyncio.sleep(FINISHED_VIEW_TTL * 2)  # past the reuse of a finished log's view
        r = await client.get("/api/v1/tasks/job/hosts/h1/log")
        assert r.status == 502 and (await r.json())["error"] == "integrity_error"

        await store.put(key, good)
        await asyncio.sleep(FINISHED_VIEW_TTL * 2)
        r = await client.get("/api/v1/tasks/job/hosts/h1/log")
        assert r.status == 200 and await r.read() == b"hello\n"

        await store.put(key, good.replace(b'"finished"', b'"deleting"'))  # logship gc began: gone at once
        await asyncio.sleep(FINISHED_VIEW_TTL * 2)
        r = await client.get("/api/v1/tasks/job/hosts/h1/log")
        assert r.status == 404
    finally:
        await client.close()
        await store.close()
