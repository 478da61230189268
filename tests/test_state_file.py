"""When the watcher rewrites its state file (shipper/watcher/state_file.py): health news at once, counters that
only checkpoints move at most every `watch.state_seconds`, and the last counters at a clean stop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipper.config import Config
from shipper.format import names
from shipper.spool import SegmentWriter
from shipper.store import open_store
from shipper.watcher import Watcher, watch
from shipper.watcher.state_file import StateFile

from .support import config, start_log


def append(w: SegmentWriter, data: bytes) -> None:
    w.append(1, [data], len(data), data.count(b"\n"), False)


def state(cfg: Config) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((cfg.spool_dir / names.WATCHER_STATE_FILE).read_bytes())
    return doc


async def until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def slow(tmp_path: Path, **env: str) -> Config:
    """Checkpoints every 0.1 s, the state file's counters every minute."""
    return config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1", LOGSHIP_WATCH_STATE_SECONDS="60",
                  LOGSHIP_QUERY_COPY="false", **env)


async def test_a_run_of_checkpoint_passes_writes_the_state_once(tmp_path: Path) -> None:
    cfg = slow(tmp_path)
    w = Watcher(cfg, open_store(cfg.store))
    sf = StateFile(w, cfg.watch.state_seconds)
    log = start_log(cfg.spool_dir, "t")
    try:
        append(log, b"first\n")
        await w.run_once()
        assert sf.due(True)  # the first pass: nothing written yet
        sf.write(True)
        assert state(cfg)["healthy"] is True
        checkpoints, written = w.stats["checkpoints"], []
        for i in range(15):
            append(log, b"line %d\n" % i)
            await asyncio.sleep(0.11)  # a checkpoint due
            await w.run_once()
            written.append(sf.due(True))
        assert w.stats["checkpoints"] >= checkpoints + 14, w.stats  # every pass (or all but one) checkpointed
        assert written == [False] * 15 and sf.pending
        assert state(cfg)["stats"]["checkpoints"] == checkpoints  # the file waits for its minute
        # health news is written at once, and so is a log set aside, a seal, a log started
        w.last_error = "the store is down"
        assert sf.due(False)
        assert not sf.due(False)  # the same news again: no write
        w.last_error = ""
        assert sf.due(True)
        w.set_aside["t/h1"] = "its run.json is damaged"
        assert sf.due(True)
        del w.set_aside["t/h1"]
        assert sf.due(True)
        append(log, b"last of the segment\n")
        seq = log.seq
        log.seal()  # the agent's sealer renames it in a thread of its own
        await until(lambda: names.spool_segment(log.log_dir, seq).exists())
        await w.run_once()
        assert w.stats["segments_uploaded"] == 1 and sf.due(True)
        start_log(cfg.spool_dir, "u").close()
        await w.run_once()
        assert sf.due(True)  # a log more
        # with state_seconds 0, every pass
        every = StateFile(w, 0)
        assert every.due(True) and every.due(True)
    finally:
        log.close()
        await w.store.close()


async def test_the_daemon_writes_a_failing_store_at_once_and_its_last_counters_at_stop(tmp_path: Path) -> None:
    cfg = slow(tmp_path)
    archive = tmp_path / "archive"
    log = start_log(cfg.spool_dir, "t")
    stop = asyncio.Event()
    task = asyncio.create_task(watch(cfg, stop=stop))
    try:
        append(log, b"first\n")
        await until(lambda: (cfg.spool_dir / names.WATCHER_STATE_FILE).exists())
        await until(lambda: any(archive.rglob("*.d*-*.zst")))  # a delta checkpoint stored
        first = state(cfg)
        assert first["healthy"] is True
        for i in range(10):  # a second of checkpoints: counters only, the file stays as it was
            append(log, b"line %d\n" % i)
            await asyncio.sleep(0.1)
        assert state(cfg)["updated_ns"] == first["updated_ns"]
        # the store fails (its directory a file: every PUT fails): the file says so within the backoff's first
        # step, not the state file's minute
        archive.rename(tmp_path / "archive.away")
        archive.write_bytes(b"")
        append(log, b"while the store is down\n")
        await until(lambda: state(cfg)["healthy"] is False)
        assert state(cfg)["last_error"] and state(cfg)["stats"]["retries"] >= 1
        archive.unlink()
        (tmp_path / "archive.away").rename(archive)
        await until(lambda: state(cfg)["healthy"] is True)
        for i in range(5):
            append(log, b"after %d\n" % i)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        w = await asyncio.wait_for(task, 30)
        log.close()
    last = state(cfg)
    assert last["stats"] == w.stats and last["stats"]["checkpoints"] > first["stats"]["checkpoints"]
    assert last["healthy"] is True and last["last_ok_ns"] >= first["last_ok_ns"]
