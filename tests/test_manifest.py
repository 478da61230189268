"""A manifest is untrusted input: the checker refuses what a watcher did not write, and one bad manifest costs
only its own log in the listing, the log's routes, gc and compaction."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shipper.config import Config
from shipper.errors import DamagedObject
from shipper.format import archive, manifest, names
from shipper.store import open_store
from shipper.watcher import watch

from .support import agent_env, run_agent

GOOD: dict[str, Any] = {
    "version": 1, "task": "t", "host": "h", "run_id": "0123abcd", "status": "finished", "exit_code": 0,
    "signal": None, "started_ns": 1, "ended_ns": 2, "command": ["true"], "labels": {"k": "v"},
    "compression": "zstd", "size": 30, "lines": 3, "dropped": [], "dropped_bytes": 0, "updated_ns": 3,
    "checkpoint": {"seq": 2, "offset": 20, "raw_size": 10, "stored_size": 9, "index_size": 9, "sha256": "a" * 64,
                   "compression": "zstd", "first_ts": 1, "last_ts": 1, "lines": 1, "chunks": [2, 2]},
    "segments": [{"seq": s, "offset": 10 * s, "raw_size": 10, "stored_size": 9, "index_size": 9, "sha256": "b" * 64,
                  "compression": "zstd", "first_ts": 1, "last_ts": 1, "lines": 1, "chunks": [s, s]} for s in (0, 1)],
}

Edit = Callable[[dict[str, Any]], object]
BAD: dict[str, Edit] = {
    "version only": lambda d: [d.pop(k) for k in list(d) if k != "version"],
    "no task": lambda d: d.pop("task"),
    "task not an id": lambda d: d.update(task="../x"),
    "run_id with a quote": lambda d: d.update(run_id='a"b'),
    "unknown status": lambda d: d.update(status="done"),
    "size a string": lambda d: d.update(size="30"),
    "size a bool": lambda d: d.update(size=True),
    "size past 2^63": lambda d: d.update(size=1 << 63),
    "size a float": lambda d: d.update(size=1e308),
    "size below the parts' end": lambda d: d.update(size=29),
    "segments not a list": lambda d: d.update(segments={}),
    "segment not an object": lambda d: d["segments"].__setitem__(0, 7),
    "segment without sha256": lambda d: d["segments"][0].pop("sha256"),
    "sha256 not hex": lambda d: d["segments"][0].update(sha256="z" * 64),
    "segments overlap": lambda d: d["segments"][1].update(offset=5),
    "segments out of order": lambda d: d["segments"].reverse(),
    "negative offset": lambda d: d["segments"][0].update(offset=-1),
    "checkpoint overlaps": lambda d: d["checkpoint"].update(offset=15),
    "checkpoint before the last segment": lambda d: d["checkpoint"].update(seq=1),
    "chunks of three": lambda d: d["segments"][0].update(chunks=[0, 1, 2]),
    "unknown compression": lambda d: d["segments"][0].update(compression="gzip"),
    "command a string": lambda d: d.update(command="rm -rf /"),
    "labels of numbers": lambda d: d.update(labels={"k": 1}),
    "dropped entry a string": lambda d: d.update(dropped=["x"]),
    "stored_sha256 short": lambda d: d["segments"][0].update(stored_sha256="ab"),
    "blocks of an odd size": lambda d: d["segments"][0].update(blocks={"size": 1000, "sha256": "a" * 32}),
    "blocks missing a digest": lambda d: d["segments"][0].update(blocks={"size": 65536, "sha256": ""}),
    "blocks not hex": lambda d: d["segments"][0].update(blocks={"size": 65536, "sha256": "z" * 32}),
}


def test_a_good_manifest_passes_and_keeps_unknown_fields() -> None:
    doc = {**copy.deepcopy(GOOD), "liveness": {"cpu_seconds": 1.5}}
    doc["segments"][0]["blocks"] = {"size": 1 << 20, "sha256": "c" * 32}
    assert manifest.loads(json.dumps(doc).encode(), "t", "h") == doc


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_manifest_is_refused_with_the_reason(case: str) -> None:
    doc = copy.deepcopy(GOOD)
    BAD[case](doc)
    with pytest.raises(manifest.ManifestError):
        manifest.loads(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"\xff\xfe", b"[" * 100_000, b"null", b"[]", b'"x"',
                                  b'{"version": 2}', b" " * (manifest.MAX_BYTES + 1)])
def test_what_is_not_a_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(manifest.ManifestError):
        manifest.loads(data)


def test_a_manifest_copied_from_another_log_is_refused() -> None:
    with pytest.raises(manifest.ManifestError, match="stored as the manifest of"):
        manifest.loads(json.dumps(GOOD).encode(), "t", "other-host")


@pytest.mark.asyncio(loop_scope="session")
async def test_one_damaged_manifest_costs_only_its_own_log(make_config: Callable[..., Config],
                                                          tmp_path: Path) -> None:
    """The listing, the log's routes, gc and the watcher's neighbours keep working around it."""
    cfg = make_config()
    for task in ("good", "bad-version", "bad-json", "bad-copy"):
        res = run_agent(cfg.spool_dir, task, [sys.executable, "-c", f"print('{task}')"], env=agent_env(cfg))
        assert res.returncode == 0
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    try:
        await store.put(names.manifest_key("bad-version", "h1"), b'{"version": 1}')
        await store.put(names.manifest_key("bad-json", "h1"), b"not json")
        good = await store.get(names.manifest_key("good", "h1"))
        await store.put(names.manifest_key("bad-copy", "h1"), good)  # another log's manifest, as is
        assert await archive.read_all(store, "good", "h1") == b"good\n"
        with pytest.raises(DamagedObject, match="bad-copy/h1"):
            await archive.load_manifest(store, "bad-copy", "h1")
    finally:
        await store.close()

    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    try:
        r = await client.get("/api/v1/tasks")
        assert r.status == 200
        # The listing is the catalog's: it noted all four when the watcher stored them, before the damage (the
        # manifest stays the truth: each damaged log's own routes refuse it, and `logship catalog check` says so).
        assert sorted(row["task"] for row in (await r.json())["logs"]) == ["bad-copy", "bad-json", "bad-version",
                                                                           "good"]
        for task in ("bad-version", "bad-json", "bad-copy"):
            r = await client.get(f"/api/v1/tasks/{task}/hosts/h1/log")
            assert r.status == 502, task
            body = await r.json()
            assert body["error"] == "integrity_error" and names.manifest_key(task, "h1") in body["detail"], body
            assert body["hint"]
        r = await client.get("/api/v1/tasks/good/hosts/h1/log")
        assert r.status == 200 and await r.read() == b"good\n"
        metrics = await (await client.get("/metrics")).text()
        assert "logship_api_damaged_manifests_total" in metrics  # the listing reads no manifest now: it counts none
    finally:
        await client.close()

