"""A pass makes no prune hop while nothing the spool keeps can go yet (shipper/watcher/prune.py `due`): a slow log
keeps its sealed segment `spool.keep_uploaded_seconds`, and each checkpoint pass looked at it for nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shipper.format import names
from shipper.spool import SpoolLog
from shipper.store import open_store
from shipper.watcher import LogState, Watcher

from .support import config, start_log


async def test_a_kept_segment_is_pruned_at_its_time_without_a_hop_each_pass_before(tmp_path: Path) -> None:
    cfg = config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="3",
                 LOGSHIP_QUERY_COPY="false")
    w = Watcher(cfg, open_store(cfg.store))
    calls = 0
    prune = w.pruner.prune

    def counted(sl: SpoolLog, st: LogState) -> None:
        nonlocal calls
        calls += 1
        prune(sl, st)

    w.pruner.prune = counted  # type: ignore[method-assign]
    log = start_log(cfg.spool_dir, "slow")
    try:
        log.append(1, [b"the first segment\n"], 18, 1, False)
        log.seal()
        sealed = names.spool_segment(log.log_dir, 1)
        while not sealed.exists():
            await asyncio.sleep(0.005)
        sealed_at = time.time()
        await w.run_once()  # ships and commits it
        await w.run_once()  # the first prune after the commit: kept for its age
        first = calls
        assert first >= 1 and sealed.exists()
        passes = 0
        while time.time() < sealed_at + 2:  # checkpoint passes within its keep time: no hop for it
            log.append(1, [b"more\n"], 5, 1, False)
            await asyncio.sleep(0.11)
            await w.run_once()
            passes += 1
        assert passes >= 10 and calls == first and sealed.exists()
        while sealed.exists():  # its time comes: the next pass over the log (it grows: not settled) prunes it
            assert time.time() < sealed_at + 30, "never pruned"
            log.append(1, [b"more\n"], 5, 1, False)
            await asyncio.sleep(0.2)
            await w.run_once()
        assert w.stats["pruned_segments"] == 1 and calls <= first + 15
    finally:
        log.close()
        await w.store.close()
