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
from shipper.format import archive, manifest, names, reader
from shipper.format.manifest import Manifest, ManifestError
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
    "stored_sha256 null": lambda d: d["segments"][0].update(stored_sha256=None),
    "query_copy a string": lambda d: d["segments"][0].update(query_copy="yes"),
    "blocks of an odd size": lambda d: d["segments"][0].update(blocks={"size": 1000, "sha256": "a" * 32}),
    "blocks missing a digest": lambda d: d["segments"][0].update(blocks={"size": 65536, "sha256": ""}),
    "blocks not hex": lambda d: d["segments"][0].update(blocks={"size": 65536, "sha256": "z" * 32}),
    "blocks of an unknown hash": lambda d: d["segments"][0].update(blocks={"size": 65536, "md5": "a" * 32}),
    "blocks of two hashes": lambda d: d["segments"][0].update(
        blocks={"size": 65536, "sha256": "a" * 32, "xxh3_128": "a" * 32}),
    "frames in version 1": lambda d: d["segments"][0].update(frames=3, frames_sha256="a" * 64),
    "version 2 without frames": lambda d: d.update(version=2),
    "frames 0": lambda d: (d.update(version=2), d["segments"][0].update(frames=0, frames_sha256="a" * 64)),
    "frames without their sha256": lambda d: (d.update(version=2), d["segments"][0].update(frames=3)),
    "frames_sha256 without frames": lambda d: d["segments"][0].update(frames_sha256="a" * 64),
    "frames null": lambda d: (d.update(version=2), d["segments"][0].update(frames=None, frames_sha256="a" * 64)),
    "a checkpoint with frames": lambda d: (d.update(version=2), [e.update(frames=1, frames_sha256="a" * 64)
                                                                 for e in (d["segments"][0], d["checkpoint"])]),
}


def _entry(seq: int, offset: int, size: int, **more: Any) -> dict[str, Any]:
    """A segment entry in the order every watcher wrote it."""
    return {"seq": seq, "offset": offset, "raw_size": size, "stored_size": size // 3, "index_size": 40,
            "sha256": f"{seq:x}" * 64, "compression": "zstd", "first_ts": 10 * seq, "last_ts": 10 * seq + 5,
            "lines": seq, "chunks": [seq, seq], **more}


def _doc(status: str, segments: list[dict[str, Any]], checkpoint: dict[str, Any] | None,
         dropped: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """A manifest in the order every watcher wrote it (`more`: the fields after updated_ns)."""
    parts = segments + ([checkpoint] if checkpoint else [])
    end = max([p["offset"] + p["raw_size"] for p in parts + dropped], default=0)
    done = status != "running"
    return {"version": 1, "task": "job-1", "host": "node-7", "run_id": "0f" * 16, "status": status,
            "exit_code": 0 if done else None, "signal": None, "started_ns": 1_700_000_000_000_000_000,
            "ended_ns": 1_700_000_100_000_000_000 if done else None, "command": ["make", "-j", "ü"],
            "labels": {"team": "infra"}, "compression": "zstd", "size": end,
            "lines": sum(p["lines"] for p in parts), "segments": segments, "checkpoint": checkpoint,
            "dropped": dropped, "dropped_bytes": sum(d["raw_size"] for d in dropped),
            "updated_ns": 1_700_000_200_000_000_000, **more}


_DIGESTS = {"stored_sha256": "d" * 64, "blocks": {"size": 1 << 20, "sha256": "e" * 32}, "index_sha256": "f" * 64}
_XXH3 = {"stored_sha256": "d" * 64, "blocks": {"size": 1 << 18, "xxh3_128": "e" * 32}, "index_sha256": "f" * 64}
# A segment stored as its deltas (shipper/checkpoint.py): the frame table's rows and sha256 after the digests.
_FRAMES = {"frames": 7, "frames_sha256": "9" * 64}
# What watchers of each version wrote (shipper/format/manifest.py's history: fields were only ever added).
WRITTEN: dict[str, dict[str, Any]] = {
    "first: no digests, drops without a reason": _doc(
        "finished", [_entry(1, 0, 300), _entry(3, 600, 300)], None,
        [{"seq": 2, "offset": 300, "raw_size": 300, "first_ts": 20, "last_ts": 25}]),
    "running, query copies, api_url": _doc(
        "running", [_entry(1, 0, 300, query_copy=True)], _entry(2, 300, 50), [], api_url="http://node-7:8080"),
    "lost, no segments": _doc("lost", [], None, []),
    "gc deleting it": _doc("deleting", [_entry(1, 0, 300)], None, [], deleting_ns=5, status_before_deleting="lost"),
    "digests, drops with reasons": _doc(
        "finished", [_entry(1, 0, 300, **_DIGESTS, query_copy=True), _entry(3, 600, 300, **_DIGESTS)],
        None, [{"seq": 2, "offset": 300, "raw_size": 300, "first_ts": 20, "last_ts": 25, "lines": 2, "reason": "quota"},
               {"seq": 3, "offset": 900, "raw_size": 10, "lines": 0, "reason": "damaged", "detail": "x: short"}]),
    "xxh3 block digests": _doc("finished", [_entry(1, 0, 300_000, **_XXH3, query_copy=True)], None, []),
    "version 2: segments stored as their deltas": {**_doc(
        "finished", [_entry(1, 0, 300, **_XXH3, query_copy=True), _entry(2, 300, 300, **_FRAMES, query_copy=True),
                     _entry(3, 600, 300, **_FRAMES)], None, []), "version": 2},
}


@pytest.mark.parametrize("case", sorted(WRITTEN))
def test_what_each_watcher_version_wrote_round_trips_byte_for_byte(case: str) -> None:
    data = json.dumps(WRITTEN[case], indent=1).encode()
    m = Manifest.load(data, "job-1", "node-7")
    assert m.dump() == data
    assert Manifest.load(m.dump()) == m


def test_a_segment_stored_as_its_deltas_makes_the_manifest_version_2() -> None:
    """Version 2 exactly when a segment has `frames` (older builds refuse it); dropping the framed segments
    brings it back to version 1."""
    m = Manifest.load(json.dumps(WRITTEN["version 2: segments stored as their deltas"]).encode())
    assert m.version == manifest.FRAMES_VERSION and [s.frames for s in m.segments] == [None, 7, 7]
    assert m.to_json()["version"] == 2 and m.segments[1].to_json()["frames_sha256"] == "9" * 64
    assert m.replace(segments=m.segments[:1]).to_json()["version"] == manifest.VERSION


def test_fields_of_a_newer_writer_survive_a_round_trip() -> None:
    """Kept in the object they were in, written back after the known fields; an api_url that is not a string
    is the one field dropped (advisory: it costs only the proxying)."""
    doc = copy.deepcopy(WRITTEN["digests, drops with reasons"])
    doc["segments"][0]["crc32"] = "00ff"
    doc["dropped"][0]["host_note"] = {"a": [1]}
    doc["annotations"] = {"cpu_seconds": 1.5}
    data = json.dumps(doc, indent=1).encode()
    m = Manifest.load(data)
    assert m.extra == {"annotations": {"cpu_seconds": 1.5}} and m.segments[0].extra == {"crc32": "00ff"}
    assert m.dump() == data
    assert m.replace(status=manifest.DELETING).to_json()["annotations"] == {"cpu_seconds": 1.5}
    m = Manifest.load(json.dumps({**doc, "api_url": 7}).encode())
    assert m.api_url is None and "api_url" not in m.to_json()


def test_a_good_manifest_passes_and_keeps_unknown_fields() -> None:
    doc = {**copy.deepcopy(GOOD), "annotations": {"cpu_seconds": 1.5}}
    doc["segments"][0]["blocks"] = {"size": 1 << 20, "sha256": "c" * 32}
    assert Manifest.load(json.dumps(doc).encode(), "t", "h").to_json() == doc


def test_a_manifest_built_from_the_spool_is_checked_too() -> None:
    run = {"task": "t", "host": "h", "run_id": "ab", "started_ns": 1, "command": ["true"]}
    m = Manifest.build(run, None, manifest.RUNNING, [], None, [{"seq": 1, "offset": 0, "raw_size": 5}], "zstd")
    assert (m.size, m.dropped_bytes, m.labels) == (5, 5, {})
    with pytest.raises(ManifestError, match="dropped"):
        Manifest.build(run, None, manifest.RUNNING, [], None, [{"seq": 1, "offset": -1, "raw_size": 5}], "zstd")
    with pytest.raises(ManifestError, match="status"):
        m.replace(status="done")


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_manifest_is_refused_with_the_reason(case: str) -> None:
    doc = copy.deepcopy(GOOD)
    BAD[case](doc)
    with pytest.raises(ManifestError):
        Manifest.load(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"\xff\xfe", b"[" * 100_000, b"null", b"[]", b'"x"',
                                  b'{"version": 2}', b" " * (manifest.MAX_BYTES + 1)])
def test_what_is_not_a_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.load(data)


def test_a_manifest_copied_from_another_log_is_refused() -> None:
    with pytest.raises(ManifestError, match="stored as the manifest of"):
        Manifest.load(json.dumps(GOOD).encode(), "t", "other-host")


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
        assert Manifest.load(good).dump() == good  # as the current watcher wrote it, byte for byte
        await store.put(names.manifest_key("bad-copy", "h1"), good)  # another log's manifest, as is
        assert await reader.read_all(store, "good", "h1") == b"good\n"
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

