"""The spool: a log's segments on local disk, written by the agent and read by the watcher and API.

The agent appends to an open segment (`N.log.open` + `N.idx.open`) and seals it by renaming the
index, then the log, to their final names; a sealed segment is immutable. Layout: shipper/format/names.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipper.format import index, names
from shipper.format.index import RECORD_SIZE

from .errors import DamagedObject, SpoolError

# Every spool file is opened without following a symbolic link: the spool is group-writable, and a
# link planted in it must not make the agent write, or the watcher ship or delete, a file elsewhere.
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW
RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
JSON_MAX = 1 << 20  # run.json, exit.json and dropped.json are a few hundred bytes; more is not ours
DAMAGE_HINT = ("the log is set aside, nothing of it is shipped as good bytes: inspect or move its spool "
               "directory, then restart `logship watch`")


class SpoolDamaged(SpoolError, DamagedObject):
    """A spool file that is not what the agent writes (or a symbolic link): its log is set aside."""

    code = "spool_damaged"


def write_json_atomic(path: Path, doc: Any, durable: bool = True, *, dir_fd: int | None = None) -> None:
    """Write, fsync, rename, fsync the directory: a file without its final name does not exist.

    `durable=False` skips the fsyncs, for state that is rewritten often and may be lost in a crash.
    With `dir_fd`, `path`'s name is taken in that directory (no path is followed again). A failed
    write (a full disk) leaves no temporary file behind.
    """
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), durable, dir_fd=dir_fd)


def write_atomic(path: Path, data: bytes, durable: bool = True, *, dir_fd: int | None = None) -> None:
    own = dir_fd is None
    if dir_fd is None:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{path.name}.tmp-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)
    finally:
        if own:
            os.close(dir_fd)


def read_json(path: Path, *, dir_fd: int | None = None) -> Any:
    """A spool JSON file, or None if it does not exist. A symbolic link, a file too large to be ours or
    bytes that are not JSON raise SpoolDamaged naming the file."""
    data = read_file(path, JSON_MAX, dir_fd=dir_fd)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:  # also invalid UTF-8
        raise SpoolDamaged(f"{path} is not JSON ({exc})", DAMAGE_HINT) from None


def read_file(path: Path, limit: int, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of a regular spool file (at most `limit`), None if absent; never through a link."""
    try:
        fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolDamaged(f"{path} is a symbolic link; refusing to follow it out of the spool",
                               DAMAGE_HINT) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpoolDamaged(f"{path} is not a regular file", DAMAGE_HINT)
        if st.st_size > limit:
            raise SpoolDamaged(f"{path} holds {st.st_size} bytes, more than the {limit} such a file can",
                               DAMAGE_HINT)
        data = b""
        while len(data) <= limit and (piece := os.read(fd, limit + 1 - len(data))):
            data += piece
        if len(data) > limit:
            raise SpoolDamaged(f"{path} grew past {limit} bytes", DAMAGE_HINT)
        return data
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_child_dir(parent_fd: int, name: str, where: Path) -> int:
    """An fd of directory `name` in `parent_fd`; SpoolDamaged if it is a symbolic link or no directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolDamaged(f"{where} is a symbolic link or not a directory; refusing to follow it "
                               "out of the spool", "remove it: the spool holds only directories the agent made"
                               ) from None
        raise


def open_log_dir(spool: Path, task: str, host: str) -> int:
    """An fd of the log directory `<spool>/<task>/<host>`, reached without following a link below the
    spool (the spool's own path is the operator's config and is taken as it is)."""
    root = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        task_fd = open_child_dir(root, task, spool / task)
    finally:
        os.close(root)
    try:
        return open_child_dir(task_fd, host, spool / task / host)
    finally:
        os.close(task_fd)


def make_log_dir(spool: Path, task: str, host: str) -> int:
    """Create `<spool>/<task>/<host>` (FileExistsError if the log dir exists) and return its fd.

    Each level is created and opened relative to its parent's fd, so a symbolic link planted in the
    spool (`<spool>/<task>` pointing elsewhere) is refused rather than written through."""
    spool.mkdir(parents=True, exist_ok=True)
    root = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(task, dir_fd=root)
        task_fd = open_child_dir(root, task, spool / task)
    finally:
        os.close(root)
    try:
        try:
            os.mkdir(host, dir_fd=task_fd)
        except FileExistsError:
            if stat.S_ISLNK(os.stat(host, dir_fd=task_fd, follow_symlinks=False).st_mode):
                open_child_dir(task_fd, host, spool / task / host)  # raises: a link is refused, not "exists"
            raise
        return open_child_dir(task_fd, host, spool / task / host)
    finally:
        os.close(task_fd)


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
    """The spool state of one log directory, or None if the agent has not written run.json yet.

    Raises SpoolDamaged when run.json or exit.json is not what the agent writes (or names another
    log than its directory), or a segment is a symbolic link: such a log is set aside, not shipped.
    """
    try:
        fd = open_log_dir(log_dir.parent.parent, log_dir.parent.name, log_dir.name)
    except FileNotFoundError:
        return None
    try:
        run = read_json(log_dir / names.RUN_FILE, dir_fd=fd)
        if run is None:
            return None
        check_run(run, log_dir)
        exit_ = read_json(log_dir / names.EXIT_FILE, dir_fd=fd)
        if exit_ is not None:
            check_exit(exit_, log_dir)
        log = SpoolLog(run["task"], run["host"], log_dir, run, exit_)
        with os.scandir(fd) as it:
            for entry in it:
                n = entry.name
                if len(n) >= 12 and n[8:12] in (".log", ".idx") and n[:8].isdigit():
                    if entry.is_symlink():
                        raise SpoolDamaged(f"{log_dir / n} is a symbolic link; refusing to follow it out of "
                                           "the spool", DAMAGE_HINT)
                    if n[8:12] == ".idx":
                        continue
                    if n[12:] == names.OPEN_SUFFIX:
                        log.sealing.append(int(n[:8]))
                    elif n[12:] == "":
                        log.sealed.append(int(n[:8]))
    finally:
        os.close(fd)
    log.sealed.sort()
    log.sealing = sorted(set(log.sealing) - set(log.sealed))  # renamed while we listed
    if log.sealing:
        log.open = log.sealing.pop()
    return log


def _bad(path: Path, what: str) -> SpoolDamaged:
    return SpoolDamaged(f"{path}: {what}", DAMAGE_HINT)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_run(run: Any, log_dir: Path) -> None:
    """run.json is the agent's: the log's ids (those of its directory), a run id, how it started."""
    path = log_dir / names.RUN_FILE
    if not isinstance(run, dict):
        raise _bad(path, f"not a JSON object but {type(run).__name__}")
    for key in ("task", "host"):
        if not isinstance(run.get(key), str) or not names.ID_RE.fullmatch(run[key]):
            raise _bad(path, f"{key} {run.get(key)!r} is not a valid {key} id ({names.ID_RULE})")
    if (run["task"], run["host"]) != (log_dir.parent.name, log_dir.name):
        raise _bad(path, f"it names the log {run['task']}/{run['host']}, but lies in {log_dir.parent.name}/"
                         f"{log_dir.name}")
    if not isinstance(run.get("run_id"), str) or not RUN_ID_RE.fullmatch(run["run_id"]):
        raise _bad(path, f"run_id {run.get('run_id')!r} is not 32 hex digits")
    if not _is_int(run.get("started_ns")) or run["started_ns"] < 0:
        raise _bad(path, f"started_ns {run.get('started_ns')!r} is not a time in ns")
    if not isinstance(run.get("command"), list) or not all(isinstance(a, str) for a in run["command"]):
        raise _bad(path, "command is not a list of strings")
    labels = run.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise _bad(path, "labels are not an object of strings")
    for key in ("agent_pid", "agent_start_ticks", "child_pid"):
        if run.get(key) is not None and (not _is_int(run[key]) or run[key] < 0):
            raise _bad(path, f"{key} {run[key]!r} is not a process id or tick count")
    if not _is_int(run.get("agent_pid")):
        raise _bad(path, "agent_pid is missing")


def check_exit(doc: Any, log_dir: Path) -> None:
    """exit.json is the agent's (or the watcher's for a dead agent): how the run ended."""
    path = log_dir / names.EXIT_FILE
    if not isinstance(doc, dict):
        raise _bad(path, f"not a JSON object but {type(doc).__name__}")
    if doc.get("status") not in ("finished", "lost"):
        raise _bad(path, f"status {doc.get('status')!r} is neither 'finished' nor 'lost'")
    for key in ("exit_code", "signal"):
        if doc.get(key) is not None and not _is_int(doc[key]):
            raise _bad(path, f"{key} {doc[key]!r} is not a number")
    if not _is_int(doc.get("ended_ns")) or doc["ended_ns"] < 0:
        raise _bad(path, f"ended_ns {doc.get('ended_ns')!r} is not a time in ns")
    if not _is_int(doc.get("dropped_bytes", 0)) or doc.get("dropped_bytes", 0) < 0:
        raise _bad(path, f"dropped_bytes {doc.get('dropped_bytes')!r} is not a byte count")


def iter_logs(spool: Path, refused: list[Path] | None = None) -> list[Path]:
    """Every log directory in the spool (`<spool>/<task>/<host>`).

    A symbolic link in their place is never followed: it is left out, and added to `refused`.
    """
    out = []
    try:
        tasks = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for task in tasks:
        if not names.ID_RE.fullmatch(task.name):
            continue
        if task.is_symlink():
            if refused is not None:
                refused.append(Path(task.path))
            continue
        if not task.is_dir(follow_symlinks=False):
            continue
        try:
            hosts = sorted(os.scandir(task.path), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for host in hosts:
            if not names.ID_RE.fullmatch(host.name):
                continue
            if host.is_symlink():
                if refused is not None:
                    refused.append(Path(host.path))
            elif host.is_dir(follow_symlinks=False):
                out.append(Path(host.path))
    return out


# --- a segment's index against its bytes --------------------------------------------------------

DAMAGED, MISSING, QUOTA = "damaged", "missing", "quota"  # why a range of a log is not in the store



@dataclass
class SegmentCheck:
    """What a segment's index and bytes say together (check_segment)."""

    chunks: list[index.Chunk]  # records of the file's bytes, from its first byte on, contiguous
    start: int  # the log offset of the file's first byte
    size: int  # the file's bytes, all kept
    next_chunk: int  # the chunk number after this segment's last
    problem: str | None = None  # None: the index and the bytes agree
    gap: int = 0  # bytes between where the segment was expected to begin and where it begins: in no segment
    claimed: int = 0  # where the index says the segment ends, when that is past the end of the file
    claimed_lines: int = 0  # lines of the claimed bytes the file does not hold
    claimed_ts: int = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    def raw_index(self) -> bytes:
        return b"".join(index.pack(c.seq, c.ts_ns, c.offset, c.length, c.lines, c.stream, c.flags)
                        for c in self.chunks)


def _record_problem(r: index.Chunk, pos: int, want_seq: int | None, first: bool = False) -> str | None:
    """Why record `r` cannot be the chunk at log offset `pos` numbered `want_seq` (at least, if `first`:
    chunk numbers go on across a range lost between segments), or None."""
    if r.offset != pos:
        return f"offset {r.offset}, where the previous chunk ended at {pos} (chunks not contiguous)"
    if want_seq is not None and (r.seq < want_seq if first else r.seq != want_seq):
        return f"chunk number {r.seq}, expected {want_seq}"
    if r.stream not in index.STREAM_NAMES:
        return f"unknown stream {r.stream}"
    if r.flags & ~(index.PARTIAL | index.RECOVERED):
        return f"unknown flags {r.flags:#x}"
    if r.lines > r.length:
        return f"{r.lines} lines in {r.length} bytes"
    return None


MAX_GAP = 1 << 40  # a range lost between two segments larger than this says the index is not the agent's


# C901: one walk over the index records, each case of damage beside the others
def check_segment(raw_idx: bytes, size: int, start: int | None, next_chunk: int | None,  # noqa: C901
                  read: Callable[[int, int], bytes], name: str, ts_ns: int) -> SegmentCheck:
    """Check a segment's index against its bytes and say how to keep every good byte at its offset.

    `start` and `next_chunk`: where the segment begins at the earliest (the end of the bytes kept of
    the segments before it) and its first chunk's number at least (None if unknown); `read(a, b)`
    gives the file's bytes [a, b). The index is trusted only as far as its records are contiguous,
    numbered in order, of a known stream and within the file. A segment may begin after `start`
    (`gap`: the end of the segment before was lost) only if its records all hold together. Bytes
    past the last trusted record are kept as one chunk of unknown stream (RECOVERED); bytes the index
    claims past the file's end are reported (`claimed`): the caller records what is lost.
    Raises SpoolDamaged when the segment cannot be placed in the log at all.
    """
    recs = list(index.unpack(raw_idx))
    problems = []
    if len(raw_idx) % RECORD_SIZE:
        problems.append(f"its index ends in a torn record ({len(raw_idx) % RECORD_SIZE} bytes)")
    given = start
    if start is None:
        if not recs:
            if size == 0:
                return SegmentCheck([], 0, 0, next_chunk or 1, "; ".join(problems) or None)
            raise SpoolDamaged(f"{name}: its index is empty and no earlier segment says where its {size} bytes "
                               "belong in the log", DAMAGE_HINT)
        start = recs[0].offset
    elif recs and start < recs[0].offset <= start + MAX_GAP and _holds_together(recs, size, next_chunk):
        start, next_chunk = recs[0].offset, None
    pos, want = start, next_chunk
    keep: list[index.Chunk] = []
    cut: index.Chunk | None = None  # the record that runs past the file's end
    claimed, claimed_recs = 0, []  # where the index's records from `cut` on end, and they
    for i, r in enumerate(recs):
        why = _record_problem(r, pos, want, first=i == 0)
        if why is not None:
            problems.append(f"index record {i + 1} is not this segment's: {why}")
            break
        if r.end - start > size:
            cut, claimed, claimed_recs = r, r.end, [r]
            for r2 in recs[i + 1:]:  # how far the index goes on claiming bytes
                if _record_problem(r2, claimed, claimed_recs[-1].seq + 1) is not None:
                    break
                claimed, claimed_recs = r2.end, [*claimed_recs, r2]
            problems.append(f"the file holds {size} bytes, its index {claimed - start} (truncated?)")
            break
        keep.append(r)
        pos, want = r.end, r.seq + 1
    if not recs and size:
        problems.append("its index is empty")
    covered = pos - start
    next_seq = want if want is not None else (keep[-1].seq + 1 if keep else 1)
    partial_lines = 0  # lines of the kept start of the chunk `cut`
    if covered < size:
        data = read(covered, size)
        lines = data.count(b"\n")
        partial = index.PARTIAL if not data.endswith(b"\n") else 0
        if cut is not None:  # the start of a chunk whose end is gone: its stream is known
            keep.append(index.Chunk(next_seq, cut.ts_ns, pos, size - covered, lines, cut.stream, partial))
            partial_lines = lines
        else:
            if not problems:
                problems.append(f"its index covers {covered} of its {size} bytes")
            keep.append(index.Chunk(next_seq, keep[-1].ts_ns if keep else ts_ns, pos, size - covered, lines,
                                    index.UNKNOWN, index.RECOVERED | partial))
        next_seq += 1
    check = SegmentCheck(keep, start, size, next_seq, "; ".join(problems) or None,
                         gap=start - given if given is not None else 0)
    if claimed > check.end:
        check.claimed = claimed
        check.claimed_lines = max(0, sum(r.lines for r in claimed_recs) - partial_lines)
        check.claimed_ts = cut.ts_ns if cut is not None else 0
        check.next_chunk = max(next_seq, claimed_recs[-1].seq + 1)
    return check


def _holds_together(recs: list[index.Chunk], size: int, next_chunk: int | None) -> bool:
    """Whether an index's records are all contiguous, sane and within a file of `size` bytes."""
    pos = recs[0].offset
    for i, r in enumerate(recs):
        if _record_problem(r, pos, next_chunk if i == 0 else recs[i - 1].seq + 1, first=i == 0) is not None:
            return False
        pos = r.end
    return pos - recs[0].offset <= size


def lost_range(offset: int, size: int, lines: int, detail: str, reason: str = DAMAGED, **more: int
               ) -> dict[str, Any]:
    """An entry of dropped.json (and of the manifest's `dropped`) for bytes the store will never have."""
    return {"offset": offset, "raw_size": size, "lines": lines, "reason": reason, "detail": detail, **more}


def recover_open_segment(log_dir: Path, seq: int, prev_end: tuple[int, int] | None = None) -> SegmentCheck:
    """Seal the open segment of a dead agent so that every byte it wrote is kept.

    The agent writes bytes before their index record, so the log may hold bytes no record
    covers (kept, with a RECOVERED record of unknown stream) and the index may end in a torn
    record (dropped). `prev_end` is (offset, chunk seq) at the end of segment seq-1, needed
    only when that segment is no longer in the spool. Returns the check of the segment (its
    `gap` and `claimed` say what a damaged spool lost).
    """
    fd = open_log_dir(log_dir.parent.parent, log_dir.parent.name, log_dir.name)
    try:
        log_name = names.spool_segment(log_dir, seq, open_=True).name
        idx_name = names.spool_index(log_dir, seq, open_=True).name
        log_fd = os.open(log_name, os.O_RDONLY | NOFOLLOW, dir_fd=fd)
        try:
            size = os.fstat(log_fd).st_size
            raw = read_file(log_dir / idx_name, 64 << 20, dir_fd=fd) or b""
            if prev_end is None:
                prev_end = segment_end(log_dir, seq - 1) if seq > 1 else (0, 0)
            start, last_chunk = prev_end
            known = seq == 1 or (start, last_chunk) != (0, 0)  # else its own index places it
            check = check_segment(raw, size, start if known else None, last_chunk + 1 if known else None,
                                  lambda a, b: os.pread(log_fd, b - a, a), str(log_dir / log_name), time.time_ns())
        finally:
            os.close(log_fd)
        write_atomic(log_dir / idx_name, check.raw_index(), dir_fd=fd)
        seal(log_dir, seq, fd)
    finally:
        os.close(fd)
    return check


def segment_end(log_dir: Path, seq: int) -> tuple[int, int]:
    """(offset, chunk seq) at the end of sealed segment `seq` in the spool; (0, 0) before the first."""
    for s in range(seq, 0, -1):
        try:
            raw = read_file(names.spool_index(log_dir, s), 64 << 20)
        except SpoolDamaged:
            raw = None
        chunks = list(index.unpack(raw or b""))
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
