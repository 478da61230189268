"""The agent's side of the spool: chunks appended to a log's open segment (`N.log.open` + `N.idx.open`),
which is sealed by renaming the index, then the log, to their final names; a sealed segment is immutable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import time
from pathlib import Path

from shipper.format import index, names
from shipper.format.index import RECORD_SIZE

from .files import DIR_FLAGS, NOFOLLOW


def seal(log_dir: Path, seq: int, dir_fd: int | None = None) -> None:
    """Make the open segment `seq` immutable: fsync, rename the index, then the log."""
    own = dir_fd is None
    if dir_fd is None:
        dir_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        idx, log = names.spool_index(log_dir, seq).name, names.spool_segment(log_dir, seq).name
        for name in (idx, log):
            fd = os.open(name + names.OPEN_SUFFIX, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in (idx, log):
            os.replace(name + names.OPEN_SUFFIX, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        if own:
            os.close(dir_fd)


class SegmentWriter:
    """Appends chunks to a log's open segment and rotates it by size and age (the agent's side)."""

    def __init__(self, log_dir: Path, segment_bytes: int, segment_seconds: float, dir_fd: int = -1) -> None:
        self.log_dir = log_dir
        self.dir_fd = dir_fd  # the log directory, opened without following links (spool.make_log_dir)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.seq = 0  # segment number; the first is 1
        self.chunk_seq = 0
        self.offset = 0  # bytes written to the whole log
        self.seg_size = 0
        self.seg_opened = 0.0  # monotonic time the open segment got its first byte
        self._log_fd = -1
        self._idx_fd = -1
        self._sealer: _Sealer | None = None

    @property
    def is_open(self) -> bool:
        return self._log_fd >= 0

    def room(self) -> int:
        """Bytes the open (or next) segment takes before it is sealed by size."""
        return self.segment_bytes - self.seg_size if self.is_open else self.segment_bytes

    def rotate_deadline(self) -> float | None:
        """Monotonic time at which the open segment must be sealed by age, if one is open."""
        return self.seg_opened + self.segment_seconds if self.is_open else None

    def append(self, stream: int, parts: list[bytes | bytearray | memoryview], length: int, lines: int,
               partial: bool) -> None:
        """Append one chunk (the concatenation of `parts`) to the open segment."""
        if not self.is_open:
            self._open()
        try:
            written = os.writev(self._log_fd, parts)
            while written < length:  # a short write (disk nearly full): finish it or raise
                written += os.write(self._log_fd, b"".join(parts)[written:])
            record = index.pack(self.chunk_seq + 1, time.time_ns(), self.offset, length, lines, stream,
                                index.PARTIAL if partial else 0)
            if os.write(self._idx_fd, record) != len(record):
                raise OSError(errno.ENOSPC, "short write of an index record")
        except OSError:
            self.abandon()  # the chunk is not in the log; the next one starts a fresh segment
            raise
        self.chunk_seq += 1
        self.offset += length
        self.seg_size += length
        if self.seg_size >= self.segment_bytes:
            self.seal()

    def seal(self) -> None:
        """Close the open segment and have it sealed in the background.

        fsync takes ~8 ms; done inline, once per segment, it would cost the pump a third of its
        throughput. A segment being sealed keeps its `.open` name until it is on disk.
        """
        if not self.is_open:
            return
        os.close(self._log_fd)
        os.close(self._idx_fd)
        self._log_fd = self._idx_fd = -1
        self._queue_seal()

    def _queue_seal(self) -> None:
        if self._sealer is None:
            self._sealer = _Sealer(self.log_dir, self.dir_fd)
        self._sealer.put(self.seq)

    def close(self) -> None:
        """Seal the open segment and wait until every segment is sealed (raises the sealer's error)."""
        self.seal()
        if self._sealer is not None:
            self._sealer.join()

    def abandon(self) -> None:
        """After a write error: cut the open segment back to its last whole chunk and seal it."""
        if not self.is_open:
            return
        log_fd, idx_fd = self._log_fd, self._idx_fd
        self._log_fd = self._idx_fd = -1
        try:
            os.ftruncate(log_fd, self.seg_size)
            os.ftruncate(idx_fd, os.fstat(idx_fd).st_size // RECORD_SIZE * RECORD_SIZE)
        finally:
            os.close(log_fd)
            os.close(idx_fd)
        if self.seg_size:
            self._queue_seal()
        else:
            for path in (names.spool_segment(self.log_dir, self.seq, open_=True),
                         names.spool_index(self.log_dir, self.seq, open_=True)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.name, dir_fd=self.dir_fd)
            self.seq -= 1

    def _open(self) -> None:
        if self.dir_fd < 0:
            self.dir_fd = os.open(self.log_dir, DIR_FLAGS)
        self.seq += 1
        # O_EXCL never follows a link, and the names are taken in the directory's fd
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | NOFOLLOW
        self._idx_fd = os.open(names.spool_index(self.log_dir, self.seq, open_=True).name, flags, 0o644,
                               dir_fd=self.dir_fd)
        try:
            self._log_fd = os.open(names.spool_segment(self.log_dir, self.seq, open_=True).name, flags, 0o644,
                                   dir_fd=self.dir_fd)
        except OSError:
            os.close(self._idx_fd)
            self._idx_fd = -1
            with contextlib.suppress(OSError):
                os.unlink(names.spool_index(self.log_dir, self.seq, open_=True).name, dir_fd=self.dir_fd)
            self.seq -= 1
            raise
        self.seg_size = 0
        self.seg_opened = time.monotonic()


class _Sealer:
    """A thread that seals closed segments in order, so the agent's pump never waits on fsync."""

    def __init__(self, log_dir: Path, dir_fd: int) -> None:
        self.log_dir = log_dir
        self.dir_fd = dir_fd
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="sealer", daemon=True)
        self.thread.start()

    def put(self, seq: int) -> None:
        self.queue.put(seq)

    def join(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (seq := self.queue.get()) is not None:
            try:
                seal(self.log_dir, seq, self.dir_fd if self.dir_fd >= 0 else None)
            except OSError as exc:  # reported at close; the segment stays `.open` for the watcher
                self.error = exc
