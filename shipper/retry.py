"""The one retry policy: capped exponential backoff, and logging that does not repeat itself.

botocore retries a request a couple of times within seconds; an outage of the store can last
hours. The watcher keeps its data on disk and retries whole passes with this backoff, forever.
"""

from __future__ import annotations

import logging
import random
import time


class Backoff:
    def __init__(self, initial: float = 0.2, cap: float = 15.0) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt: doubles up to the cap, with 20% jitter."""
        delay = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.attempt = 0


class QuietLog:
    """Logs an event at most once per `every` seconds per key, and says how many were held back."""

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._last[key] = (last, held + 1)
            return
        self._last[key] = (now, 0)
        suffix = f" ({held} more like this held back)" if held else ""
        self.logger.log(level, msg + suffix, *args)
