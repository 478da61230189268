"""The daemon: `logship watch` runs passes until stopped, woken by the spool or the clock, retrying the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable

from .. import wakeups
from ..config import Config
from ..errors import StoreError
from ..logs import event
from ..retry import Backoff
from ..store import Store, open_store
from ..wakeups import SpoolWatch
from .ship import Watcher
from .state_file import StateFile

log = logging.getLogger("logship.watcher")

# Work that runs beside the shipping, on the same store client, until `stop` (retention and compaction:
# shipper/retention/maintenance.py start); None when there is none. The composition is the command's
# (shipper/commands/cli.py), so that shipping never depends on retention code.
Alongside = Callable[[Store, asyncio.Event], "asyncio.Task[None] | None"]


async def watch(cfg: Config, *, once: bool = False, stop: asyncio.Event | None = None,
                alongside: Alongside | None = None) -> Watcher:
    """Run the watcher until `stop` is set (or one successful pass, with once=True).

    Wakes when a log starts or ends or a segment is sealed (shipper/wakeups.py; appends wake nothing),
    and passes over the spool every checkpoint interval (every second where the kernel cannot tell it
    what changed: no inotify, or its watch limit reached). Every failed pass is retried with capped
    backoff, forever: the data waits in the spool meanwhile.
    """
    stop = stop or asyncio.Event()
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    state = StateFile(w, cfg.watch.state_seconds)
    event(log, "watcher_started", "watcher started: spool {spool}, store {store}, checkpoint every {interval:g} s",
          spool=str(cfg.spool_dir), store=store.url, interval=cfg.watch.checkpoint_seconds, once=once)
    cfg.spool_dir.mkdir(parents=True, exist_ok=True)
    wake = asyncio.Event()
    notifier = None if once else SpoolWatch.start(cfg.spool_dir, wake)
    fallback = (None if once or notifier is not None  # no inotify here: watchfiles, appends filtered out
                else asyncio.create_task(wakeups.portable(cfg.spool_dir, wake, stop)))
    scheduled = None if once or alongside is None else alongside(store, stop)
    backoff = Backoff()
    periodic_at = 0.0  # monotonic time of the next periodic pass (a wake-up's pass does not move it)
    frozen = False
    try:
        while not stop.is_set():
            wake.clear()
            periodic = time.monotonic() >= periodic_at
            try:
                await w.run_once()
            except* StoreError as group:
                failure: BaseException | None = _first_leaf(group)
            else:
                failure = None
            if failure is not None:
                w.stats["retries"] += 1
                w.last_error = str(failure)
                delay = backoff.failed(w._quiet, "the store", failure)
                await state.after_pass(False)
                await _wait(stop, delay)
                continue
            backoff.succeeded(log, "the store")
            w.last_error = ""
            w.last_ok_ns = time.time_ns()
            await state.after_pass(True)
            if not frozen:
                freeze_heap()
                frozen = True
            if once:
                if await w.copies.drain():
                    continue  # one more pass records the copies in the manifests
                break
            if notifier is not None:
                notifier.ensure()
            if periodic:  # measured from the pass's end: a checkpoint taken in it is due again at the next one
                periodic_at = time.monotonic() + _period(cfg, notifier)
            await _wait(stop, max(0.0, periodic_at - time.monotonic()), wake)
    finally:
        await w.copies.cancel()  # a restart finds the segments the manifest does not mark copied
        if scheduled is not None:  # stopped anywhere, gc and compaction are finished by a later run
            scheduled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduled
        if notifier is not None:
            notifier.close()
        if fallback is not None:
            fallback.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fallback
        await store.close()
        state.stopped()  # the file as the last pass left things
    return w


def freeze_heap() -> None:
    """After the watcher's first pass: what it has made so far (the imports, botocore's service model, the
    store's client) lives as long as it does, so the cyclic GC stops walking it. Each pass allocates enough to
    set off collections, and a full one walked ≈ 100,000 objects (tens of ms); in-process that was ≈ 1 ms a pass
    on average (`python -m bench.pass_cost`, docs/checkpoints.md §12). Frozen objects are still freed when
    their last reference goes; only their cycles are never collected."""
    gc.collect()
    gc.freeze()


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _wait(stop: asyncio.Event, timeout: float, wake: asyncio.Event | None = None) -> None:
    waiters = [asyncio.ensure_future(stop.wait())] + ([asyncio.ensure_future(wake.wait())] if wake else [])
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waiters:
            t.cancel()


def _period(cfg: Config, notifier: SpoolWatch | None) -> float:
    """Seconds between periodic passes: the checkpoint interval, or at most a second when nothing wakes
    the watcher for a sealed segment or a new log (no inotify, or not on every directory)."""
    if notifier is None or notifier.broken:
        return min(1.0, cfg.watch.checkpoint_seconds)
    return cfg.watch.checkpoint_seconds


def main(cfg: Config, *, once: bool = False, alongside: Alongside | None = None) -> int:
    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        w = await watch(cfg, once=once, stop=stop, alongside=alongside)
        log.info("watcher stopped: %s", " ".join(f"{k}={v}" for k, v in w.stats.items()),
                 extra={"event": "watcher_stopped", **w.stats})
        return 0 if not w.last_error else 1

    return asyncio.run(run())
