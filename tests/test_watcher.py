"""The watcher's logic against the filesystem store, driven pass by pass (run_once)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipper.config import Config
from shipper.errors import ObjectNotFound, StoreUnavailable
from shipper.format import archive, names, reader
from shipper.format.manifest import Manifest
from shipper.spool import read_json
from shipper.store import open_store
from shipper.watcher import Watcher, watch

from .support import NASTY, MakeConfig, agent_env, config, kill_task, run_agent, sha, spooled, start_agent, stop_agent

# A store nobody answers for: a closed port on loopback.
NOWHERE = {"LOGSHIP_STORE_URL": "s3://nowhere/x", "LOGSHIP_STORE_ENDPOINT": "http://127.0.0.1:9",
           "LOGSHIP_STORE_ACCESS_KEY": "k", "LOGSHIP_STORE_SECRET_KEY": "s"}


async def archived(cfg: Config, task: str, host: str = "h1", stream: str | None = None) -> bytes:
    store = open_store(cfg.store)
    try:
        return await reader.read_all(store, task, host, stream)
    finally:
        await store.close()


async def stored_manifest(cfg: Config, task: str, host: str = "h1") -> Manifest:
    store = open_store(cfg.store)
    try:
        raw = await store.get(names.manifest_key(task, host))
        assert Manifest.load(raw).dump() == raw  # typed and back, byte for byte as the watcher wrote it
        return await archive.load_manifest(store, task, host)
    finally:
        await store.close()


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("make_config", ["file", "s3", "rclone"], indirect=True)  # a second S3 server too
async def test_ships_nasty_output_exactly(make_config: MakeConfig, compression: str) -> None:
    cfg = make_config(LOGSHIP_STORE_COMPRESSION=compression, LOGSHIP_SPOOL_SEGMENT_BYTES="1MiB")
    res = run_agent(cfg.spool_dir, "nasty", [sys.executable, "-c", NASTY], env=agent_env(cfg))
    w = await watch(cfg, once=True)
    assert w.stats["segments_uploaded"] >= 5
    assert sha(await archived(cfg, "nasty")) == sha(spooled(cfg.spool_dir, "nasty"))
    assert await archived(cfg, "nasty", stream="stdout") == res.stdout
    assert await archived(cfg, "nasty", stream="stderr") == res.stderr
    doc = await stored_manifest(cfg, "nasty")
    assert doc.status == "finished" and doc.exit_code == 0 and doc.checkpoint is None
    assert doc.size == len(res.stdout) + len(res.stderr)
    assert doc.command[0] == sys.executable and doc.ended_ns is not None and doc.started_ns <= doc.ended_ns
    assert [s.seq for s in doc.segments] == list(range(1, len(doc.segments) + 1))
    assert (cfg.spool_dir / "nasty" / "h1" / names.SHIPPED_FILE).exists()


async def test_empty_task_gives_an_empty_finished_log(make_config: MakeConfig) -> None:
    cfg = make_config()
    run_agent(cfg.spool_dir, "quiet", ["true"], env=agent_env(cfg), args=["--label", "team=infra"])
    await watch(cfg, once=True)
    doc = await stored_manifest(cfg, "quiet")
    assert not doc.segments and doc.size == 0 and doc.status == "finished"
    assert doc.labels == {"team": "infra"}
    assert await archived(cfg, "quiet") == b""


async def test_once_marks_a_query_copy_that_finished_before_the_drain(make_config: MakeConfig) -> None:
    """`watch --once` ends when no query copy is left to mark. A copy that was stored before the pass's
    drain (while the state file was written, say) still needs the pass that marks it and notes the log
    shipped: the drain reports it."""
    cfg = make_config()
    run_agent(cfg.spool_dir, "quick", ["sh", "-c", "seq 1 1000"], env=agent_env(cfg))
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        await w.run_once()
        while w.copies.tasks:  # the copy ends on its own, before anyone drains
            await asyncio.sleep(0.01)
        assert await w.copies.drain()
        await w.run_once()
        assert not await w.copies.drain()
        assert (cfg.spool_dir / "quick" / "h1" / names.SHIPPED_FILE).exists()
        assert (await stored_manifest(cfg, "quick")).segments[0].query_copy
    finally:
        await store.close()


async def test_rerun_resumes_from_the_store_and_uploads_nothing_twice(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    run_agent(cfg.spool_dir, "again", ["sh", "-c", "seq 1 1000000"], env=agent_env(cfg))
    first = await watch(cfg, once=True)
    assert first.stats["segments_uploaded"] >= 4
    (cfg.spool_dir / "again" / "h1" / names.SHIPPED_FILE).unlink()  # as if the watcher died before noting it
    second = await watch(cfg, once=True)
    assert second.stats["segments_uploaded"] == 0
    assert await archived(cfg, "again") == spooled(cfg.spool_dir, "again")


async def test_checkpoints_a_running_log_then_replaces_them(make_config: MakeConfig) -> None:
    """The prefix checkpoints of before issue 14 (watch.checkpoint_deltas: false, for one release)."""
    cfg = make_config(LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1", LOGSHIP_WATCH_CHECKPOINT_DELTAS="false")
    p = start_agent(cfg.spool_dir, "live", ["sh", "-c", "echo one; echo two; sleep 30"], env=agent_env(cfg))
    try:
        store = open_store(cfg.store)
        w = Watcher(cfg, store)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await w.run_once()
            with contextlib.suppress(ObjectNotFound):  # the agent may not have started yet
                doc = await archive.load_manifest(store, "live", "h1")
                if doc.checkpoint and doc.checkpoint.raw_size == 8:
                    break
            await asyncio.sleep(0.1)
        assert doc.status == "running" and not doc.segments
        assert await reader.read_all(store, "live", "h1") == b"one\ntwo\n"
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        await w.run_once()
        doc = await archive.load_manifest(store, "live", "h1")
        assert doc.checkpoint is None and doc.status == "finished"
        assert not [o.key for o in await store.list("logs/live/") if ".ckpt-" in o.key]  # old checkpoints gone
        await store.close()
    finally:
        stop_agent(p, cfg.spool_dir, "live")


async def test_agent_killed_9_is_archived_and_marked_lost(make_config: MakeConfig) -> None:
    cfg = make_config()
    script = ("import sys,time\nfor i in range(20): print('line', i, flush=True)\n"
              "sys.stdout.write('partial'); sys.stdout.flush(); time.sleep(60)")
    p = start_agent(cfg.spool_dir, "victim", [sys.executable, "-c", script], env=agent_env(cfg),
                    stdout=subprocess.PIPE)
    assert p.stdout is not None
    got = b""
    while not got.endswith(b"partial"):
        got += os.read(p.stdout.fileno(), 65536)
    time.sleep(0.2)  # the partial line reaches the spool after the idle flush
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    kill_task(cfg.spool_dir, "victim")  # it would linger, asleep, until its next write hit the closed pipe
    w = await watch(cfg, once=True)
    assert w.stats["lost_logs"] == 1
    doc = await stored_manifest(cfg, "victim")
    assert doc.status == "lost" and doc.exit_code is None
    assert await archived(cfg, "victim") == got


async def test_store_down_keeps_spool_and_counts_retries(tmp_path: Path) -> None:
    cfg = config(tmp_path, **NOWHERE)
    run_agent(cfg.spool_dir, "waits", ["echo", "hello"], env=agent_env(cfg))
    w = Watcher(cfg, open_store(cfg.store))
    with pytest.raises(BaseExceptionGroup) as info:
        await w.run_once()
    assert info.group_contains(StoreUnavailable)
    await w.store.close()
    assert spooled(cfg.spool_dir, "waits") == b"hello\n"


async def test_quota_drops_oldest_unuploaded_but_keeps_first_segment(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = config(tmp_path, **NOWHERE,
                 LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_QUOTA_BYTES="3MiB")
    run_agent(cfg.spool_dir, "big", ["sh", "-c", "seq 1 1000000"], env=agent_env(cfg))  # 6.9 MB
    w = Watcher(cfg, open_store(cfg.store))
    w.local_pass()
    d = cfg.spool_dir / "big" / "h1"
    kept = sorted(int(p.name[:8]) for p in d.glob("*.log"))
    dropped = read_json(d / "dropped.json")
    assert len(kept) >= 2 and kept[0] == 1 and kept[1] > 2  # the first segment stays, the oldest after it went
    assert {e["seq"] for e in dropped} == set(range(2, kept[1]))
    assert kept == [1, *range(kept[1], kept[-1] + 1)]  # and everything newer stays
    assert w.stats["dropped_bytes"] == sum(e["raw_size"] for e in dropped) > 0
    assert w.stats["spool_bytes"] <= 3 << 20
    await w.store.close()
    # once a store is back, the manifest records the hole
    cfg2 = make_config(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    await watch(cfg2, once=True)
    doc = await stored_manifest(cfg2, "big")
    assert [e.seq for e in doc.dropped] == [e["seq"] for e in dropped]
    assert doc.dropped_bytes == w.stats["dropped_bytes"]
    assert [s.seq for s in doc.segments] == kept


async def test_prunes_uploaded_segments_after_keep_time(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    data = run_agent(cfg.spool_dir, "prune", ["sh", "-c", "seq 1 1000000"], env=agent_env(cfg)).stdout
    w = await watch(cfg, once=True)
    assert w.stats["pruned_segments"] == w.stats["segments_uploaded"] >= 4
    assert not list((cfg.spool_dir / "prune" / "h1").glob("*.log"))
    assert await archived(cfg, "prune") == data


async def test_second_run_elsewhere_does_not_overwrite_the_archive(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config()
    run_agent(cfg.spool_dir, "twice", ["echo", "first"], env=agent_env(cfg))
    await watch(cfg, once=True)
    other = make_config(LOGSHIP_SPOOL_DIR=str(tmp_path / "spool2"))
    run_agent(other.spool_dir, "twice", ["echo", "second"], env=agent_env(other))
    w = await watch(other, once=True)
    assert w.stats["conflicts"] == 1
    assert await archived(cfg, "twice") == b"first\n"
    assert spooled(other.spool_dir, "twice") == b"second\n"  # kept in its spool, not lost
