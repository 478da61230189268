"""Retention and compaction on a schedule, beside the watcher's own work (config: retention, compact).

`logship watch` starts this once (`start`); it runs `logship gc` by the retention policy every
`retention.every` (when `retention.older_than` is set), a compaction of the query copies every
`compact.every` and of the catalog every `compact.catalog_every`, each first at a random point of its
interval, so that the watchers sharing a store spread their runs. All are safe to run from several
watchers at once. A failed run is logged and tried again next time; the
watcher's shipping never waits for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from shipper import catalog
from shipper.config import Config
from shipper.errors import LogshipError
from shipper.query.compact import Compactor, Settings
from shipper.retention.gc import Collector, Policy
from shipper.retry import QuietLog
from shipper.store import Store

log = logging.getLogger("logship.maintenance")


def start(cfg: Config, store: Store, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """The scheduled jobs as one task (None when none is configured); cancel it, or set `stop`, to end it."""
    jobs: list[tuple[str, float, Callable[[], Awaitable[str]]]] = []
    if cfg.retention.older_than > 0:
        collector = Collector(store, cfg, say=lambda m: log.info("retention: %s", m))
        policy = Policy.of(cfg)

        # A random phase, as the jobs' own: watchers restarted more often than sweep_every still sweep.
        swept = time.monotonic() - random.uniform(0.0, 1.0) * cfg.retention.sweep_every

        async def retention() -> str:
            nonlocal swept
            sweep = cfg.retention.sweep_every > 0 and time.monotonic() - swept >= cfg.retention.sweep_every
            r = await collector.run(policy, sweep=sweep)
            if sweep:
                swept = time.monotonic()
            return (f"deleted {r.deleted_logs} logs ({r.objects} objects, {r.bytes} bytes)"
                    + (f", {r.pending} left for the next run" if r.pending else ""))

        jobs.append(("retention", cfg.retention.every, retention))
    if cfg.compact.every > 0:
        compactor = Compactor(store, Settings.of(cfg))

        async def compact() -> str:
            s = await compactor.run()
            return (f"merged {s.inputs_merged} objects into {s.parts_written} parts, deleted {s.objects_deleted} "
                    f"objects ({s.bytes_deleted} bytes) that earlier parts replace")

        jobs.append(("compact", cfg.compact.every, compact))
    if cfg.compact.catalog_every > 0:
        cat = catalog.Compactor(store, catalog.Settings(grace_s=cfg.query.grace_seconds))

        async def compact_catalog() -> str:
            c = await cat.run()
            return (f"folded {c.records} records into {c.parts_written} parts, deleted {c.deleted} objects"
                    + (f"; left out {len(c.bad)} bad objects" if c.bad else ""))

        jobs.append(("catalog", cfg.compact.catalog_every, compact_catalog))
    if not jobs:
        return None
    return asyncio.create_task(_loop(jobs, stop), name="logship-maintenance")


async def _loop(jobs: list[tuple[str, float, Callable[[], Awaitable[str]]]], stop: asyncio.Event) -> None:
    quiet = QuietLog(log, every=300)
    due = {name: time.monotonic() + random.uniform(0.1, 1.0) * every for name, every, _ in jobs}
    while not stop.is_set():
        name, every, job = min(jobs, key=lambda j: due[j[0]])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due[name] - time.monotonic()))
        if stop.is_set():
            return
        try:
            log.info("%s: %s", name, await job())
        except (LogshipError, OSError) as exc:
            quiet.log(logging.WARNING, name, "%s failed, tried again in %.0f s: %s", name, every, exc)
        except Exception:
            log.exception("%s failed, tried again in %.0f s", name, every)
        due[name] = time.monotonic() + every
