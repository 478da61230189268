"""Memory given back to the OS after a burst of connections: `logship serve` runs on glibc's malloc
(PYTHONMALLOC=malloc) and trims its heap once followers have left.

Why (measured, issue 11 and 16, item 9): 1,000 WebSockets opened then reset left the API 20–40 MB larger
for good, with no Python object of ours left behind (a tracemalloc diff across rounds: ~0.1 MB). pymalloc
frees an arena only when it is wholly empty, and the connections' small objects are spread over all of
them; malloc_trim cannot give back what pymalloc holds (~2 MB of it). With every object in glibc's heap,
malloc_trim(0) returns the free pages inside it: back to within ~5 MB of before, round after round. A
reset connection's buffers are held by reference cycles (its exception's traceback) until the cyclic
collector's next full pass, so a full collection comes first. Both take tens of ms at ~100 MB (the trim
walks the heap holding its lock), so they run only after followers left and their count has settled,
and not more than every TRIM_MIN_S.

glibc gives each thread that allocates an arena of its own (up to 8 per core): the worker threads
(asyncio.to_thread: spool reads, the store's) each kept a fragmented heap, and the peak RSS under 10
downloads + 100 tails was 134–170 MB with them, 110–136 MB with MALLOC_ARENA_MAX=2 (bench/README.md, "The
API's memory"). The re-exec sets it unless the operator did.

pyarrow (the catalog's listing) allocates through its own mimalloc pool by default, which keeps what a
Parquet decode used: 14–21 MB of the API's peak RSS under the 100,000-log listings (docs/catalog.md §5).
On the system pool its buffers go to glibc's heap, where the trim above gives them back; the re-exec sets
ARROW_DEFAULT_MEMORY_POOL=system unless the operator chose a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .keys import METRICS
from .metrics import Metrics

log = logging.getLogger("logship.api")

# How often the follower count and the RSS are looked at (two cheap reads): followers gone are seen
# settled, and the memory given back, within 2 x CHECK_S of the last one leaving.
CHECK_S = 0.5
TRIM_GROWTH = 8 << 20  # trim when the RSS is this much above what the last trim left ...
TRIM_MIN_S = 10.0  # ... at most this often
_PAGE = os.sysconf("SC_PAGE_SIZE")
ARENAS = "2"  # MALLOC_ARENA_MAX of the re-executed process (see above)
# glibc's thresholds, fixed: a download's pieces (256 KiB - 1 MiB, received, parsed, sent, freed) were each
# mmapped or grew the heap's top and were given back at once: page faults, zeroing and unmapping were ≈ 8 % of a
# passthrough download's API CPU (perf). With these, the API's CPU per 1 GiB passed through: 0.335 -> 0.265 s
# (paired, 6 rounds), the peak RSS under 10 downloads + 100 tails unchanged (bench/README.md, "memory").
# A full trim (above) still gives everything back.
MMAP_THRESHOLD, TRIM_THRESHOLD = str(2 << 20), str(4 << 20)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another libc: nothing to do)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def use_malloc() -> None:
    """Run this process again on glibc's malloc unless PYTHONMALLOC is already set (by the operator, or
    by this): the allocator is chosen at interpreter start, glibc's arenas too. Same pid, same arguments."""
    if "PYTHONMALLOC" in os.environ or _malloc_trim() is None or not sys.orig_argv:
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    os.environ.setdefault("MALLOC_ARENA_MAX", ARENAS)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when pyarrow is first imported
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


async def trim_ctx(app: web.Application) -> AsyncIterator[None]:
    """The trimmer runs as long as the app, if this process is on glibc's malloc."""
    trim = _malloc_trim()
    task = None
    if trim is not None and os.environ.get("PYTHONMALLOC") == "malloc":
        task = asyncio.create_task(_trimmer(app, trim), name="heap-trim")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _busy(metrics: Metrics) -> int:
    """Connections whose leaving may free memory: followers, and answers being streamed. Counting the
    downloads keeps the trim out of them: a full collection and malloc_trim stall the loop (220-520 ms each
    at 70-80 MB on a busy machine, bench/README.md), and it ran every TRIM_MIN_S under a run of downloads."""
    return metrics.followers + metrics.answers


async def _trimmer(app: web.Application, trim: Callable[[int], int]) -> None:
    metrics = app[METRICS]
    floor, peak, prev, last = _rss(), _busy(metrics), _busy(metrics), 0.0
    while True:
        await asyncio.sleep(CHECK_S)
        now = _busy(metrics)
        peak = max(peak, now)
        settled, prev = now == prev, now
        if not settled or now > peak * 0.9 or time.monotonic() - last < TRIM_MIN_S:
            continue  # nobody left, or they are still leaving
        rss = _rss()
        if rss - floor < TRIM_GROWTH:
            peak = now
            continue
        t0 = time.monotonic()
        gc.collect()  # a reset connection leaves cycles (exception, traceback, frames) holding its buffers
        await asyncio.to_thread(trim, 0)
        last = time.monotonic()
        floor, peak = _rss(), now
        log.info("gave %.1f MB back to the OS after followers left (%.0f ms; RSS now %.1f MB)",
                 (rss - floor) / 1e6, (last - t0) * 1000, floor / 1e6)
