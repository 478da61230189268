"""Line numbers of the /index route (api/logs.py): how many lines of a log end before a part of it."""

from __future__ import annotations

from .source import LogView, Part, Source


async def lines_before(source: Source, view: LogView, seq: int, upto: int = 0) -> int:
    """The lines of segments 1..seq-1: the manifest's counts (dropped segments too), else their index; and
    of the parts of segment `seq` that end by `upto` (the deltas of an open segment before the one read)."""
    known = {s.seq: s.lines for s in view.doc.segments} if view.doc is not None else {}
    # A range dropped at the quota is a whole segment; one lost to damage lies inside a segment the manifest
    # names: its lines add to that segment's. The manifest and the spool may both list the same range.
    for d in {(d.seq, d.offset): d for d in view.dropped}.values():
        known[d.seq] = known.get(d.seq, 0) + d.lines
    parts: dict[int, list[Part]] = {}  # a segment not in the manifest yet may be several deltas
    for p in view.parts:
        parts.setdefault(p.seq, []).append(p)
    total = 0
    for s in range(1, seq):
        if s in known:
            total += known[s]
            continue
        for p in parts.get(s, []):
            total += p.entry.lines if p.entry is not None else sum(c.lines for c in await source.chunks(view, p))
    for p in parts.get(seq, []):
        if p.end <= upto:
            total += sum(c.lines for c in await source.chunks(view, p))
    return total
