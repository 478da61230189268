"""A segment's index checked against its bytes, before the watcher ships it (check_segment), and a dead
agent's open segment sealed with every byte it wrote (recover_open_segment).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipper.format import index, names
from shipper.format.index import RECORD_SIZE

from .files import DAMAGE_HINT, NOFOLLOW, SpoolDamaged, open_log_dir, read_file, write_atomic
from .writer import seal

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
