"""The one retry policy: capped exponential backoff, and logging that does not repeat itself.

botocore retries a request a couple of times within seconds; an outage of the store can last
hours. The watcher keeps its data on disk and retries whole passes with this backoff, forever.
Each retry is one log event (`retrying`: what, attempt, delay, error), rate-limited while an outage
lasts, and the first success after failures is one more (`recovered`).
"""

from __future__ import annotations

import logging
import random
import time

from .logs import event


class Backoff:
    def __init__(self, initial: float = 0.2, cap: float = 15.0) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._failing_since: float | None = None

    def next(self) -> float:
        """Seconds to wait before the next attempt: doubles up to the cap, with 20% jitter."""
        delay = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.attempt = 0

    def failed(self, quiet: QuietLog, what: str, error: BaseException) -> float:
        """An attempt at `what` failed: the delay before the next one, said (at most every `quiet.every` s)."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        delay = self.next()
        quiet.event(logging.WARNING, f"retry {what}", "retrying", "{what} failed, retrying in {delay:.1f} s "
                    "(attempt {attempt}): {error}", what=what, attempt=self.attempt, delay=round(delay, 3),
                    error=str(error))
        return delay

    def succeeded(self, logger: logging.Logger, what: str) -> None:
        """An attempt at `what` worked: after failures, say so once, with how long it took."""
        if self._failing_since is not None:
            event(logger, "recovered", "{what} works again after {attempts} failed attempts ({seconds:.1f} s)",
                  what=what, attempts=self.attempt, seconds=time.monotonic() - self._failing_since)
        self._failing_since = None
        self.reset()


class QuietLog:
    """Logs an event at most once per `every` seconds per key, and says how many were held back."""

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        held = self._held(key)
        if held is not None:
            suffix = f" ({held} more like this held back)" if held else ""
            self.logger.log(level, msg + suffix, *args)

    def event(self, level: int, key: str, name: str, template: str, **fields: object) -> None:
        """logs.event(), held back as log() is; `held_back` counts the ones not said since the last."""
        held = self._held(key)
        if held is not None:
            event(self.logger, name, template + (" ({held_back} more like this held back)" if held else ""),
                  level=level, held_back=held, **fields)

    def _held(self, key: str) -> int | None:
        """None if an event under `key` is to be held back now, else how many were since the last said."""
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._last[key] = (last, held + 1)
            return None
        self._last[key] = (now, 0)
        return held
