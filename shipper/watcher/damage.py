"""Damage: one log's bad files never stop the others (DESIGN §6.6).

A sealed segment's index is checked against its bytes before it is uploaded, and repaired in the spool
if it lies; what is lost is recorded (dropped.json, then the manifest's `dropped`). A log whose files
cannot be read or trusted is set aside (said once, and in the state file) and looked at again later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from shipper.format import index, names

from ..open_index import Records, open_index_fault, sealed_ok
from ..quota import read_dropped, record_dropped
from ..retry import QuietLog
from ..spool import (
    MISSING,
    NOFOLLOW,
    SegmentCheck,
    SpoolDamaged,
    SpoolLog,
    check_segment,
    lost_range,
    open_log_dir,
    read_file,
    write_atomic,
)
from .state import INDEX_MAX, SET_ASIDE_RETRY_SECONDS, LogState

log = logging.getLogger("logship.watcher")


class Damage:
    """The watcher's damage handling; it shares the watcher's `logs`, `stats` and `aside` (its `set_aside`)."""

    def __init__(self, spool: Path, logs: dict[Path, LogState], stats: dict[str, int], aside: dict[str, str],
                 quiet: QuietLog) -> None:
        self.spool = spool
        self.logs = logs
        self.stats = stats
        self.aside = aside  # "task/host" (spool dir) -> why it is not shipped: the state file says
        self.quiet = quiet
        self.refused: set[Path] = set()

    def set_aside(self, d: Path, reason: str) -> None:
        """Stop shipping one log, say why once (and in the state file), and look at it again later."""
        st = self.logs.setdefault(d, LogState())
        name = f"{d.parent.name}/{d.name}"
        if st.set_aside != reason:
            if st.set_aside is None:
                self.stats["logs_set_aside"] += 1
            self.quiet.event(logging.ERROR, f"aside {name} {reason}", "log_set_aside", "{task}/{host}: log set aside, "
                             "not shipped: {reason} (hint: {hint})", task=d.parent.name, host=d.name, reason=reason,
                             hint="inspect or move its spool directory, or the store object named; the watcher "
                             f"looks again every {SET_ASIDE_RETRY_SECONDS}s")
        st.set_aside = reason
        st.set_aside_at = time.monotonic()
        st.loaded = False  # its manifest is read again when it is looked at again
        self.aside[name] = reason

    def restore(self, d: Path, st: LogState) -> None:
        name = f"{d.parent.name}/{d.name}"
        log.warning("%s: shipping again (was set aside: %s)", name, st.set_aside)
        st.set_aside = None
        self.aside.pop(name, None)

    def spool_error(self, d: Path, exc: OSError) -> None:
        """A disk error on one log's files (a full disk, permissions): this log waits for the next pass."""
        self.stats["spool_errors"] += 1
        self.quiet.log(logging.WARNING, f"spool {d}", "%s/%s: spool error, retrying on the next pass: %s",
                       d.parent.name, d.name, exc)

    def refuse_link(self, path: Path) -> None:
        if path not in self.refused:
            self.refused.add(path)
            self.stats["refused_links"] += 1
        self.quiet.log(logging.ERROR, f"link {path}", "%s is a symbolic link in the spool; refusing to follow it: "
                       "nothing is shipped or deleted through it (hint: remove it; the spool holds only "
                       "directories the agent made)", path)

    def verify(self, sl: SpoolLog, st: LogState, todo: list[int]) -> list[int]:
        """Check each sealed segment's index against its bytes before it is uploaded (in order).

        A damaged one is repaired in the spool so that the index describes exactly the bytes kept, each
        at its offset: bytes no valid record covers are kept as one chunk of unknown stream, bytes the
        index claims past the file's end are recorded as lost (dropped.json, then the manifest's
        `dropped`, reason `damaged`). Returns the segments to upload (one that keeps nothing is removed).
        """
        fd = open_log_dir(self.spool, sl.dir.parent.name, sl.dir.name)
        out = []
        try:
            for seq in sorted(todo):
                if seq in st.verified:
                    out.append(seq)
                    continue
                dropped = read_dropped(sl.dir)
                start, nxt = segment_start(sl.dir, st, seq, dropped)
                log_name, idx_name = names.spool_segment(sl.dir, seq).name, names.spool_index(sl.dir, seq).name
                try:
                    log_fd = os.open(log_name, os.O_RDONLY | NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    continue  # dropped at the quota or pruned meanwhile
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise SpoolDamaged(f"{sl.dir / log_name} is a symbolic link; refusing to follow it",
                                           "remove it") from None
                    raise
                try:
                    info = os.fstat(log_fd)
                    if not stat.S_ISREG(info.st_mode):
                        raise SpoolDamaged(f"{sl.dir / log_name} is not a regular file", "remove it")
                    raw = read_file(sl.dir / idx_name, INDEX_MAX, dir_fd=fd) or b""
                    if sealed_ok(raw, info.st_size, start, nxt):  # the usual case, without a Chunk per record
                        st.verified.add(seq)
                        out.append(seq)
                        continue
                    # B023: check_segment calls read() before it returns, in this iteration
                    check = check_segment(raw, info.st_size, start, nxt, lambda a, b: os.pread(log_fd, b - a, a),  # noqa: B023
                                          str(sl.dir / log_name), info.st_mtime_ns)
                finally:
                    os.close(log_fd)
                if check.problem is not None:
                    write_atomic(sl.dir / idx_name, check.raw_index(), dir_fd=fd)
                last = sl.finished and sl.open is None and not sl.sealing and seq == max(sl.sealed)
                self.check_done(sl.dir, seq, start, check, last)
                if not check.chunks:  # nothing of it to keep: it must not hold the log back
                    for name in (log_name, idx_name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=fd)
                    continue
                st.verified.add(seq)
                out.append(seq)
        finally:
            os.close(fd)
        return out

    def check_done(self, d: Path, seq: int, start: int | None, check: SegmentCheck, last: bool) -> None:
        """Count, report and record (dropped.json) what the check of segment `seq` found lost.

        Bytes its index claims past the end of its file are lost only if nothing follows it (`last`):
        otherwise the next segment's start says how many are (its `gap`), whatever a damaged
        length field claimed."""
        path = names.spool_segment(d, seq)
        lost = []
        if check.gap and start is not None:  # lost at the end of the segment before (cut with its index)
            lost.append(lost_range(start, check.gap, 0, f"{path}: the {check.gap} bytes before it are in no segment"))
        if check.claimed and last:
            lost.append(lost_range(check.end, check.claimed - check.end, check.claimed_lines,
                                   f"{path}: the file holds {check.size} bytes, its index "
                                   f"{check.claimed - check.start}: the rest is lost", first_ts=check.claimed_ts))
        if check.problem is None and not lost:
            return
        st = self.logs.setdefault(d, LogState())
        for s in ([seq] if check.problem or check.claimed else []) + ([seq - 1] if check.gap else []):
            if s not in st.damaged:
                st.damaged.add(s)
                self.stats["damaged_segments"] += 1
        self.quiet.log(logging.ERROR, f"damaged {path}", "%s: damaged spool segment (%s): its %d bytes kept at "
                       "offset %d, %d lost (recorded in the manifest's dropped list)", path,
                       check.problem or "bytes before it missing", check.size, check.start,
                       sum(e["raw_size"] for e in lost))
        if lost:
            self.record_lost(d, seq - 1, lost[:1] if check.gap else [], str(path))
            self.record_lost(d, seq, lost[1:] if check.gap else lost, str(path))

    def record_lost(self, d: Path, seq: int, lost: list[dict[str, Any]], what: str) -> None:
        new = record_dropped(d, [{"seq": seq, **e} for e in lost])
        for e in new:
            key = "missing_bytes" if e.get("reason") == MISSING else "damaged_bytes"
            self.stats[key] += e["raw_size"]
        if new:
            self.logs.setdefault(d, LogState()).dirty = True

    def open_index_ok(self, sl: SpoolLog, st: LogState, dropped: list[dict[str, Any]]) -> bool:
        """Whether the open segment's index is one to checkpoint: contiguous from where the segment
        begins and within its bytes. A damaged one is left to the check at sealing (_verify)."""
        assert sl.open is not None
        seq = sl.open
        path = names.spool_segment(sl.dir, seq, open_=True)
        try:
            raw = read_file(names.spool_index(sl.dir, seq, open_=True), INDEX_MAX)
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return True  # sealed meanwhile: _checkpoint sees it
        if raw is None:
            return True
        start, nxt = segment_start(sl.dir, st, seq, dropped)
        recs = Records.of(raw)  # columns, not a Chunk per record (≈ 2 µs each)
        if recs.seq and (start is None or recs.offset[0] > start):  # begins after a range lost with the one before
            start = recs.offset[0]
        pos = start if start is not None else 0
        problem = None
        bad = open_index_fault(recs, pos, nxt)
        if bad is not None:
            problem = f"record {bad + 1} is not contiguous with what comes before it"
        elif recs.seq:
            pos = recs.end[-1]
        if problem is None and start is not None and pos - start > size:
            problem = f"it claims {pos - start} bytes of a {size}-byte file"
        if problem is None:
            return True
        self.quiet.log(logging.ERROR, f"open {path}", "%s: damaged index of the open segment (%s): no checkpoint "
                       "of it; it is checked and repaired when sealed", path, problem)
        return False


def segment_start(d: Path, st: LogState, seq: int, dropped: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(log offset, chunk number) where segment `seq` must begin, from what came before it; Nones if unknown."""
    if seq == 1:
        return 0, 1
    end: int | None = None
    nxt: int | None = None
    prev = st.segments.get(seq - 1)
    if prev is not None:
        end, nxt = prev.end, prev.chunks[1] + 1
    else:  # in the spool, checked already (segments are checked in order)
        try:
            raw = read_file(names.spool_index(d, seq - 1), INDEX_MAX)
        except SpoolDamaged:
            raw = None
        whole = len(raw or b"") // index.RECORD_SIZE * index.RECORD_SIZE  # its last whole record alone
        chunks = list(index.unpack((raw or b"")[whole - index.RECORD_SIZE:whole])) if whole else []
        if chunks:
            end, nxt = chunks[-1].end, chunks[-1].seq + 1
    for e in dropped:  # dropped at the quota, or a range lost at its end
        if e["seq"] == seq - 1:
            end = max(end, e["offset"] + e["raw_size"]) if end is not None else e["offset"] + e["raw_size"]
    return end, nxt
