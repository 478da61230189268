"""What the followers of a log share: the poller that wakes them, the memo of encoded messages, and the
spool segment reader (the messages' wire shape and the memo: api/messages.py; the route and cursor: api/tail.py).

Followers get no bytes from the hub, only a wake-up: each reads the log itself from its own offset, so a slow
follower holds back nobody but itself and the hub holds no per-client buffers. (The memo is a bounded cache of
recent chunks' messages, shared by whoever is at the same place.) `…/log?follow=true` is a follower too (api/logs.py).

How a change is noticed (DESIGN §7 asks for p50 ≤ 2 ms, p99 ≤ 5 ms write → client):
- spool beside the API: every POLL_S (1 ms) one fstat of the open segment's index (an fd, so a seal's
  rename does not lose it), one open() try of the next segment's index and one stat of exit.json. After
  ACTIVE_S without a change the period doubles up to POLL_IDLE_S (10 ms), so an idle followed log costs
  ~100 wake-ups a second, not 1,000. A 1 ms poller measured 0.8 / 1.5 ms here; watchfiles with
  debounce=1, step=1 ≈ 2 ms plus a thread per watch, and its defaults add 50–100 ms.
- store only (the log runs on another host): every STORE_POLL_S one LIST after the log's last delta
  (Reader.refresh: the manifest is read again only when the listing shows it changed); a follower is at
  most a checkpoint interval and a poll behind. The poller's view is the feed's (`Feed.view`): a woken
  follower finds its next part in it, so the followers of a store-only log cost no request of their own
  but the new deltas' GETs, shared through the API's reader (api/source.py), which the poller uses too.
The poller runs only while its log has followers and is cancelled and awaited when the last one leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shipper.errors import ObjectNotFound, StoreError
from shipper.format import index, names
from shipper.format.archive import IntegrityError
from shipper.format.index import RECORD_SIZE
from shipper.format.parts import SpoolState, open_either, open_spool_file
from shipper.format.reader import LogNotFound, Reader
from shipper.retry import QuietLog

from .messages import Memo
from .source import LogView

if TYPE_CHECKING:
    from .fanout import Fanout

log = logging.getLogger("logship.api.tail")
_quiet = QuietLog(log)

POLL_S = 0.001  # the open segment's index is looked at this often while the log is active
POLL_IDLE_S = 0.01  # ... and at most this rarely when it has been quiet
ACTIVE_S = 1.0  # quiet time after which polling slows down
ENDED_POLL_S = 0.5  # after exit.json nothing changes any more; keep a slow look for safety
BATCH_BYTES = 1 << 20  # bytes read per step before they are sent (backpressure applies between steps)
STORE_POLL_S = 1.0  # a log read from the store alone is listed this often while followed
TICK_S = 1.0  # followers are woken at least this often (a safety net beside the spool; SSE pings)
SCAN_S = 0.5  # how often the directory is listed for the rare jumps the cheap look misses


Key = tuple[str, str, Path | None]  # (task, host, spool log dir or None for store-only)


class Feed:
    """Wake-ups for the followers of one log: a generation number, and an Event replaced at each wake-up.

    The poller wakes followers on a change (`notify`: a new generation) and at least every TICK_S
    without one (`tick`), so a waiter needs no timeout of its own: asyncio.wait_for costs a task and a
    timer per wait, which at 100 followers × 1,000 wake-ups a second was a third of the API's CPU.
    """

    def __init__(self, key: Key) -> None:
        self.key = key
        self.generation = 0
        self.followers = 0
        self.poller: asyncio.Task[None] | None = None
        self.memo = Memo()
        self.spool: tuple[int, int, bool] | None = None  # the spool poller's last look: (newest seq, size, ended)
        self.failed = False  # the poller died: followers end (with an error) and may reconnect
        self.fanout: Fanout | None = None  # one reading for the caught-up followers (api/fanout.py)
        self.view: LogView | None = None  # the store poller's newest view (store-only logs; None: none, or no log)
        self.polled = False  # the store poller has looked once (before that, `view` None says nothing)
        self._wake = asyncio.Event()
        self._state: tuple[int, asyncio.Future[SpoolState | None]] | None = None  # (generation, its read)

    @property
    def local(self) -> bool:
        """True when the log is read from the spool beside us (else from the store only)."""
        return self.key[2] is not None

    def notify(self) -> None:
        self.generation += 1
        self.tick()

    def tick(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def poller_done(self, task: asyncio.Task[None]) -> None:
        """A poller ends only when cancelled; if it failed, its followers must not wait for it forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("tail poller of %s/%s failed", *self.key[:2], exc_info=task.exception())
            self.failed = True
            self.notify()

    async def close(self) -> None:
        """Stop the poller and the fan-out (when the last follower left, or at cleanup)."""
        if self.fanout is not None:
            await _cancel(self.fanout.task)
        await _cancel(self.poller)

    def spool_state(self, read: Callable[[], Awaitable[SpoolState | None]]) -> Awaitable[SpoolState | None]:
        """The log's spool state read after this generation's change: one read for every follower it woke."""
        if self._state is None or self._state[0] < self.generation:
            self._state = (self.generation, asyncio.ensure_future(read()))
        return asyncio.shield(self._state[1])  # a follower that leaves does not cancel the others' read

    async def wait(self, generation: int) -> None:
        """Return once the log changed after `generation` was read (at once if it already has), or at a tick."""
        if self.generation == generation:
            await self._wake.wait()


class Hub:
    """The feeds of every followed log in this API process."""

    def __init__(self, reader: Reader, checkpoint_seconds: float) -> None:
        self.reader = reader  # the API's (api/source.py): its caches of checked deltas and manifests are shared
        self.checkpoint_seconds = checkpoint_seconds
        self._feeds: dict[Key, Feed] = {}

    @contextlib.asynccontextmanager
    async def follow(self, task: str, host: str, spool_dir: Path | None) -> AsyncIterator[Feed]:
        """Be a follower of a log for the duration of the block; its poller runs while it has any."""
        key = (task, host, spool_dir)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(key)
        feed.followers += 1
        if feed.poller is None:
            poll = _poll_spool(feed, spool_dir) if spool_dir is not None else \
                _poll_store(feed, self.reader, task, host, self.checkpoint_seconds)
            feed.poller = asyncio.create_task(poll, name=f"tail-poll {task}/{host}")
            feed.poller.add_done_callback(feed.poller_done)
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                await feed.close()

    def wake_all(self) -> None:
        for feed in self._feeds.values():
            feed.notify()

    async def close(self) -> None:
        """Cancel and await every poller (on app cleanup, after the followers were told to go)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await feed.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _poll_spool(feed: Feed, log_dir: Path) -> None:
    probe = _SpoolProbe(log_dir)
    last: tuple[int, int, bool] | None = None
    delay, changed_at = POLL_S, time.monotonic()
    woke_at = changed_at
    try:
        while True:
            try:
                sig = probe.look()
            except OSError as exc:  # not ours to fix (permissions, a vanished disk): say so, keep looking
                _quiet.log(logging.WARNING, str(log_dir), "tail of %s: cannot look at the spool: %s", log_dir, exc)
                sig = last or (0, 0, False)
            now = time.monotonic()
            if sig != last:
                last, delay, changed_at, woke_at = sig, POLL_S, now, now
                feed.spool = sig
                feed.notify()
            else:
                if now - woke_at >= TICK_S:
                    woke_at = now
                    feed.tick()
                if sig[2]:
                    delay = ENDED_POLL_S
                elif now - changed_at > ACTIVE_S:
                    delay = min(delay * 2, POLL_IDLE_S)
            await asyncio.sleep(delay)
    finally:
        probe.close()


class _SpoolProbe:
    """(newest segment, its index size, exit.json exists) of a spool log, in three cheap syscalls."""

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir
        self.seq = 0
        self.fd = -1
        self.exit_path = str(log_dir / names.EXIT_FILE)  # paths as str, built once: pathlib costs µs per tick
        self.next = _next_index(log_dir, self.seq)
        self.scan_at = 0.0

    def look(self) -> tuple[int, int, bool]:
        now = time.monotonic()
        if now >= self.scan_at:  # at start, then now and then: a segment dropped at the quota before we
            self.scan_at = now + SCAN_S  # saw it, or ours unlinked (given up after a write error) and reused
            newest = _newest_seq(self.dir)
            gone = self.fd >= 0 and os.fstat(self.fd).st_nlink == 0
            if newest > self.seq + 1 or (gone and newest == self.seq):
                self.seq = newest - 1
                self.next = _next_index(self.dir, self.seq)
        while (fd := open_either(*self.next)) >= 0:
            self.close()
            self.fd, self.seq = fd, self.seq + 1
            self.next = _next_index(self.dir, self.seq)
        size = os.fstat(self.fd).st_size if self.fd >= 0 else 0
        return self.seq, size, os.path.exists(self.exit_path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _newest_seq(log_dir: Path) -> int:
    try:
        return max((int(n[:8]) for n in os.listdir(log_dir) if names.SEGMENT_RE.match(n)), default=0)
    except FileNotFoundError:
        return 0


def _next_index(log_dir: Path, seq: int) -> tuple[str, str]:
    """The index paths of the segment after `seq`: open, and sealed."""
    return str(names.spool_index(log_dir, seq + 1, open_=True)), str(names.spool_index(log_dir, seq + 1))


async def _poll_store(feed: Feed, reader: Reader, task: str, host: str, interval: float) -> None:
    last: tuple[int, str] | None = None
    view: LogView | None = None
    while True:
        try:
            view = await (reader.view(task, host) if view is None else reader.refresh(view))
            sig = (view.size, view.status)
        except (ObjectNotFound, LogNotFound):
            sig, view = None, None
        except IntegrityError as exc:  # a damaged manifest: followers look, and each gets the error
            _quiet.log(logging.WARNING, f"{task}/{host}", "tail of %s/%s: %s", task, host, exc)
            sig, view = (-1, "damaged"), None
        except StoreError as exc:  # followers keep what they have; we look again next interval
            _quiet.log(logging.WARNING, f"{task}/{host}", "tail of %s/%s: cannot read the manifest: %s",
                       task, host, exc)
            sig = last
        feed.view, feed.polled = view, True
        if sig != last:
            last = sig
            feed.notify()
        else:
            feed.tick()
        await asyncio.sleep(min(interval, STORE_POLL_S))


class SegmentReader:
    """New index records of one spool segment and their bytes, read through fds opened once.

    The fds survive the seal's rename (.open → sealed name keeps the inode) and the watcher's prune
    (an unlinked file stays readable), so a follower never loses its place in a segment it has opened.
    Only whole 40-byte records are taken; the agent writes a chunk's bytes before its record.
    """

    def __init__(self, log_dir: Path, seq: int, pos: int) -> None:
        """Open segment `seq` to read from log offset `pos` on; FileNotFoundError if it is not in the spool."""
        self.dir = log_dir
        self.seq = seq
        self.idx_fd = open_spool_file(log_dir, seq, "idx", True)
        try:
            self.log_fd = open_spool_file(log_dir, seq, "log", True)
        except FileNotFoundError:
            os.close(self.idx_fd)
            raise
        self.idx_pos = 0  # bytes of the index consumed
        self.ends = (*_next_index(log_dir, seq), str(log_dir / names.EXIT_FILE))  # any of them: no more appends
        self.scan_at = time.monotonic() + SCAN_S
        first = self._record(0)
        self.seg_start = first.offset if first is not None else None  # log offset of the segment's byte 0
        self.seek(pos)

    def _record(self, i: int) -> index.Chunk | None:
        raw = os.pread(self.idx_fd, RECORD_SIZE, i * RECORD_SIZE)
        return next(index.unpack(raw), None)

    def seek(self, pos: int) -> None:
        """Skip the records that end at or before log offset `pos` (binary search: records are in order)."""
        lo, hi = self.idx_pos // RECORD_SIZE, os.fstat(self.idx_fd).st_size // RECORD_SIZE
        while lo < hi:
            mid = (lo + hi) // 2
            rec = self._record(mid)
            if rec is not None and rec.end <= pos:
                lo = mid + 1
            else:
                hi = mid
        self.idx_pos = lo * RECORD_SIZE

    def complete(self, seen: tuple[int, int, bool] | None) -> bool:
        """True once the agent will append no more: a later segment exists or the log has ended.

        `seen` is the feed's last look at the spool (newest seq, size, ended): it lags by a poll at
        most, and the poller wakes us when it moves on, so no syscall of our own is needed. Ask this
        after a read found nothing, then read again: what is read after a True is the rest.
        """
        if seen is not None and (seen[0] > self.seq or seen[2]):
            return True
        now = time.monotonic()
        if now < self.scan_at:
            return False
        self.scan_at = now + SCAN_S
        # rare: the next segment was dropped at the quota before the poller saw it, or ours was
        # unlinked (the agent gave it up after a write error and will reuse its number)
        return (any(os.path.exists(p) for p in self.ends) or _newest_seq(self.dir) > self.seq
                or os.fstat(self.idx_fd).st_nlink == 0)

    async def read(self, max_bytes: int, max_records: int = 1024) -> tuple[list[index.Chunk], bytes, int]:
        """(new records, their bytes, log offset of those bytes); at least one record if any is there."""
        raw = os.pread(self.idx_fd, max_records * RECORD_SIZE, self.idx_pos)
        chunks: list[index.Chunk] = []
        total = 0
        for c in index.unpack(raw):
            if chunks and total + c.length > max_bytes:
                break
            chunks.append(c)
            total += c.length
        if not chunks:
            return [], b"", 0
        if self.seg_start is None:  # from record 0: followers sharing the memo may have moved idx_pos on
            first = self._record(0)
            assert first is not None
            self.seg_start = first.offset
        start = chunks[0].offset
        at = start - self.seg_start
        data = os.pread(self.log_fd, total, at) if total <= 65536 else \
            await asyncio.to_thread(os.pread, self.log_fd, total, at)
        if len(data) < total:  # the agent writes a chunk's bytes before its record: a damaged spool
            raise IntegrityError(f"spool:{self.dir.parent.name}/{self.dir.name}/{self.seq:08d}.log",
                                 f"{len(data)} bytes at {at}, fewer than the {total} its index covers",
                                 "the spool file was truncated or damaged on this host")
        self.idx_pos += len(chunks) * RECORD_SIZE
        return chunks, data, start

    def close(self) -> None:
        for fd in (self.idx_fd, self.log_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.idx_fd = self.log_fd = -1
