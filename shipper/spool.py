"""The spool: a log's segments on local disk, written by the agent and read by the watcher and API.

The agent appends to an open segment (`N.log.open` + `N.idx.open`) and seals it by renaming the
index, then the log, to their final names; a sealed segment is immutable. Layout: shipper/names.py.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import index, names
from .index import RECORD_SIZE


def write_json_atomic(path: Path, doc: Any, durable: bool = True) -> None:
    """Write, fsync, rename, fsync the directory: a file without its final name does not exist.

    `durable=False` skips the fsyncs, for state that is rewritten often and may be lost in a crash.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.urandom(4).hex()}")
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(log_dir: Path, seq: int) -> None:
    """Make the open segment `seq` immutable: fsync, rename the index, then the log."""
    for path in (names.spool_index(log_dir, seq, open_=True), names.spool_segment(log_dir, seq, open_=True)):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(names.spool_index(log_dir, seq, open_=True), names.spool_index(log_dir, seq))
    os.replace(names.spool_segment(log_dir, seq, open_=True), names.spool_segment(log_dir, seq))
    fsync_dir(log_dir)


class SegmentWriter:
    """Appends chunks to a log's open segment and rotates it by size and age (the agent's side)."""

    def __init__(self, log_dir: Path, segment_bytes: int, segment_seconds: float) -> None:
        self.log_dir = log_dir
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

    def append(self, stream: int, parts: list[bytes | bytearray | memoryview], length: int, lines: int, partial: bool) -> None:
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
            self._sealer = _Sealer(self.log_dir)
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
            names.spool_segment(self.log_dir, self.seq, open_=True).unlink(missing_ok=True)
            names.spool_index(self.log_dir, self.seq, open_=True).unlink(missing_ok=True)
            self.seq -= 1

    def _open(self) -> None:
        self.seq += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        self._idx_fd = os.open(names.spool_index(self.log_dir, self.seq, open_=True), flags, 0o644)
        self._log_fd = os.open(names.spool_segment(self.log_dir, self.seq, open_=True), flags, 0o644)
        self.seg_size = 0
        self.seg_opened = time.monotonic()


class _Sealer:
    """A thread that seals closed segments in order, so the agent's pump never waits on fsync."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
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
                seal(self.log_dir, seq)
            except OSError as exc:  # reported at close; the segment stays `.open` for the watcher
                self.error = exc


# --- reading the spool (watcher and API) --------------------------------------------------


@dataclass
class SpoolLog:
    """What the spool holds of one log, read in one pass over its directory."""

    task: str
    host: str
    dir: Path
    run: dict[str, Any]
    exit: dict[str, Any] | None
    sealed: list[int] = field(default_factory=list)
    open: int | None = None  # the segment the agent appends to
    sealing: list[int] = field(default_factory=list)  # closed by the agent, not yet renamed

    @property
    def finished(self) -> bool:
        return self.exit is not None


def read_log(log_dir: Path) -> SpoolLog | None:
    """The spool state of one log directory, or None if the agent has not written run.json yet."""
    run = read_json(log_dir / names.RUN_FILE)
    if run is None:
        return None
    log = SpoolLog(run["task"], run["host"], log_dir, run, read_json(log_dir / names.EXIT_FILE))
    with os.scandir(log_dir) as it:
        for entry in it:
            n = entry.name
            if len(n) >= 12 and n[8:12] == ".log" and n[:8].isdigit():
                if n[12:] == names.OPEN_SUFFIX:
                    log.sealing.append(int(n[:8]))
                elif n[12:] == "":
                    log.sealed.append(int(n[:8]))
    log.sealed.sort()
    log.sealing = sorted(set(log.sealing) - set(log.sealed))  # renamed while we listed
    if log.sealing:
        log.open = log.sealing.pop()
    return log


def iter_logs(spool: Path) -> list[Path]:
    """Every log directory in the spool (`<spool>/<task>/<host>`)."""
    out = []
    try:
        tasks = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for task in tasks:
        if task.is_dir() and names.ID_RE.fullmatch(task.name):
            for host in sorted(os.scandir(task.path), key=lambda e: e.name):
                if host.is_dir() and names.ID_RE.fullmatch(host.name):
                    out.append(Path(host.path))
    return out


def recover_open_segment(log_dir: Path, seq: int, prev_end: tuple[int, int] | None = None) -> None:
    """Seal the open segment of a dead agent so that every byte it wrote is kept.

    The agent writes bytes before their index record, so the log may hold bytes no record
    covers (kept, with a RECOVERED record of unknown stream) and the index may end in a torn
    record (dropped). `prev_end` is (offset, chunk seq) at the end of segment seq-1, needed
    only when that segment is no longer in the spool and this one has no record at all.
    """
    log_path = names.spool_segment(log_dir, seq, open_=True)
    idx_path = names.spool_index(log_dir, seq, open_=True)
    size = log_path.stat().st_size
    chunks = index.read(str(idx_path), missing_ok=True)
    if chunks:
        seg_start, next_chunk = chunks[0].offset, chunks[0].seq
    else:
        seg_start, next_chunk = prev_end or segment_end(log_dir, seq - 1)
        next_chunk += 1
    covered = keep = 0
    for c in chunks:
        if c.end - seg_start > size:
            break
        covered, keep, next_chunk = c.end - seg_start, keep + 1, c.seq + 1
    with open(idx_path, "r+b" if idx_path.exists() else "wb") as f:
        f.truncate(keep * RECORD_SIZE)
        f.seek(keep * RECORD_SIZE)
        if size > covered:
            data = _read_range(log_path, covered, size)
            f.write(index.pack(next_chunk, time.time_ns(), seg_start + covered, size - covered,
                               data.count(b"\n"), index.UNKNOWN, index.RECOVERED))
    seal(log_dir, seq)


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def segment_end(log_dir: Path, seq: int) -> tuple[int, int]:
    """(offset, chunk seq) at the end of sealed segment `seq` in the spool; (0, 0) before the first."""
    for s in range(seq, 0, -1):
        chunks = index.read(str(names.spool_index(log_dir, s)), missing_ok=True)
        if chunks:
            return chunks[-1].end, chunks[-1].seq
    return 0, 0


def pid_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks (/proc), to tell a live agent from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces or ')': split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def agent_alive(run: dict[str, Any]) -> bool:
    ticks = pid_start_ticks(int(run["agent_pid"]))
    return ticks is not None and ticks == run.get("agent_start_ticks")
