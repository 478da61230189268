"""The /index route's scans (api/logs.py) over the bytes a log holds without a hole (a hole ends every line): back
(`last=N`), the last records before an offset, of one stream or all; forward for one stream (`stream=`). They
answer "where does the line a stream has open at X begin, and end" in one request, however long the stream was
silent around X (the web page's `…?` mark and its counts of a line's bytes outside the window)."""

from __future__ import annotations

from dataclasses import dataclass

from shipper.format.index import Chunk

from .lines import lines_before
from .source import LogView, Part, Source

# records looked at per answer, at most (≈ 4 MB of index, a few segments' worth): a stream silent for longer
# costs another request (`more`, from `from`), not one that reads every index of a large log
SCAN_CHUNKS = 100_000


@dataclass
class Back:
    chunks: list[Chunk]  # in log order
    line: int | None  # lines that end before the first of them (None: none)
    start: int  # back: the scan covered [start, end), ask again with end=start while `more`; forward: [start, this)
    more: bool  # it stopped (N found, or SCAN_CHUNKS looked at) with bytes left to scan


def held_from(view: LogView, start: int, end: int) -> int:
    """The first offset of the bytes held without a hole up to `end`, not before `start`: a hole ends every
    line, so no record before it tells of a line open at `end` (`end` itself in a hole: `end`)."""
    lo = start
    for a, b in view.missing(start, end):
        if a < end:
            lo = max(lo, min(b, end))
    held = max((p.end for p in view.parts), default=0)
    return end if end > held else lo  # a hole at the log's end (a dropped last segment) is not in missing()


async def scan_back(source: Source, view: LogView, start: int, end: int, last: int, stream: int | None) -> Back:
    lo = held_from(view, min(start, end), end)
    found: list[Chunk] = []
    first: tuple[Part, list[Chunk], int] | None = None  # the earliest found: its part, the part's records, its place
    seen = 0
    for part in reversed(view.parts):
        if part.offset >= end:
            continue
        if part.end <= lo:
            break
        chunks = await source.chunks(view, part)
        for i in range(len(chunks) - 1, -1, -1):
            c = chunks[i]
            if c.offset >= end:
                continue
            if c.end <= lo:
                break
            seen += 1
            if stream is None or c.stream == stream:
                found.append(c)
                first = (part, chunks, i)
            if len(found) == last or seen >= SCAN_CHUNKS:
                return await _answer(source, view, found, first, c.offset, c.offset > lo)
    return await _answer(source, view, found, first, lo, False)


async def _answer(source: Source, view: LogView, found: list[Chunk], first: tuple[Part, list[Chunk], int] | None,
                  start: int, more: bool) -> Back:
    found.reverse()
    line = None
    if first is not None:  # as the forward answer counts it (api/logs.py)
        part, chunks, i = first
        line = await lines_before(source, view, part.seq, part.offset) + sum(x.lines for x in chunks[:i])
    return Back(found, line, start, more)


# --- forward, for one stream (`stream=` without `last`) ---------------------------------------------


def held_to(view: LogView, start: int, end: int) -> int:
    """The end of the bytes held without a hole from `start`, not past `end` (`start` itself in a hole: `start`)."""
    for a, b in view.missing(start, end):
        if b > start:
            return max(start, min(a, end))
    held = max((p.end for p in view.parts), default=0)
    return max(start, min(end, held))


async def scan_forward(source: Source, view: LogView, start: int, end: int, limit: int, stream: int) -> Back:
    """The first `limit` records of `stream` from `start`, over the bytes held without a hole from there (where
    the line a stream has open at `start` ends). `Back.start` is where the scan stopped: ask again from there."""
    hi = held_to(view, start, end)
    found: list[Chunk] = []
    first: tuple[Part, list[Chunk], int] | None = None
    seen = 0
    for part in view.parts:
        if part.end <= start:
            continue
        if part.offset >= hi:
            break
        chunks = await source.chunks(view, part)
        for i, c in enumerate(chunks):
            if c.end <= start:
                continue
            if c.offset >= hi:
                break
            seen += 1
            if c.stream == stream:
                first = first or (part, chunks, i)
                found.append(c)
            if len(found) == limit or seen >= SCAN_CHUNKS:
                return await _answer(source, view, found[::-1], first, c.end, c.end < hi)
    return await _answer(source, view, found[::-1], first, hi, False)
