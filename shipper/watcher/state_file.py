"""When the daemon rewrites its state file (`<spool>/.watcher.json`, shipper/watcher_state.py): at once when
what `--check` and `/metrics` act on changed, else at most every `watch.state_seconds`, and at a clean stop.

Writing it after every pass cost ≈ 0.4 ms of CPU a pass (the rename over the old file, the JSON, a thread
hop): for a 10 KB/s log, most of what issue 14's CPU bar leaves a checkpoint (docs/checkpoints.md §12).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ship import Watcher

# Counters that a pass moves when all it does is checkpoint running logs (deltas or prefixes, their liveness
# samples, and the prefix mode's manifest each time): their news waits for the next timed write. Any other
# counter moving (a seal, a drop, a damaged file, a conflict, a retry...) is written at once.
STEADY = frozenset({"passes", "checkpoints", "bytes_uploaded", "deltas", "delta_bytes", "checkpoint_bytes",
                    "manifests", "manifest_bytes", "liveness_puts", "liveness_bytes", "spool_bytes"})


class StateFile:
    """The daemon's writes of its watcher's state. `due` is cheap (on the event loop, every pass); `write` is
    the file's I/O (in a thread)."""

    def __init__(self, w: Watcher, every: float) -> None:
        self.w = w
        self.every = every  # seconds; 0: after every pass
        self.writes = 0
        self._news: tuple[Any, ...] | None = None  # what was written that readers act on
        self._next = 0.0  # monotonic time the next timed write is due
        self._healthy = False
        self.pending = False  # a pass ended since the last write

    def news(self, healthy: bool) -> tuple[Any, ...]:
        """What a reader acts on: health (and why not), the logs set aside, the set of logs shipped (a log
        started or finished: its last counters), and every counter that is not steady."""
        w = self.w
        return (healthy, w.last_error, dict(w.set_aside), len(w.logs),
                {k: v for k, v in w.stats.items() if k not in STEADY})

    def due(self, healthy: bool) -> bool:
        """After a pass, on the event loop: whether to write now; if so, what is written counts as told."""
        self._healthy, self.pending = healthy, True
        news = None
        if self.every > 0 and time.monotonic() < self._next:
            news = self.news(healthy)
            if news == self._news:
                return False
        self._news = self.news(healthy) if news is None else news
        self._next = time.monotonic() + self.every
        self.pending = False
        return True

    def write(self, healthy: bool | None = None) -> None:
        """The file's I/O (in a thread), after `due` said so. None: with the last pass's health (at a stop)."""
        self.writes += 1
        self.w.write_state(self._healthy if healthy is None else healthy)

    async def after_pass(self, healthy: bool) -> None:
        """The daemon, after each pass: the file written if `due` says so (in a thread)."""
        if self.due(healthy):
            await asyncio.to_thread(self.write, healthy)

    def stopped(self) -> None:
        """The daemon, at its stop (or after --once): the last pass's counters, if not written yet. On the loop:
        one small file, once, and no await in the daemon's cleanup."""
        if self.pending:
            self.write()
