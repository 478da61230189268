"""A log as parts: which stretch of its bytes lies where (a store segment, the checkpoint, a sealed spool file,
the open one), planned from the manifest and what the spool holds; and the spool's files read back.

A `LogView` is a snapshot: parts covering [0, size) in order, with holes only where bytes were dropped or
lost (their offsets are kept: a range no part holds is BytesMissing, never a shift). shipper/format/reader.py
reads views.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipper.format import index, names
from shipper.format.archive import BytesMissing, why_missing
from shipper.format.manifest import RUNNING, Dropped, Manifest, Segment

PIECE = 1 << 20  # bytes per read from disk or store, and at most about per write to a client
SEALED_PARTS = 4096  # sealed spool segments whose extent is remembered (each view read every index before)
STORE_KINDS = ("store", "checkpoint", "frames", "delta")
WHOLE_KINDS = ("store", "checkpoint")  # one object per part (frames and deltas: shipper/format/chained.py)
SPOOL_KINDS = ("spool", "open")


@dataclass
class Part:
    """A contiguous slice [offset, offset+size) of the log and where its bytes are."""

    seq: int
    offset: int
    size: int
    # "spool" (sealed file), "open" (the growing one), "store" (segment), "checkpoint" (of prefix), "frames" (a
    # segment stored as its deltas), "delta" (one of the open segment's chain, found by listing)
    kind: str
    entry: Segment | None = None  # the manifest's entry (store parts but deltas)
    key: str = ""  # a delta's key
    stored: int = 0  # a delta's size as listed
    skip: int = 0  # a delta's bytes before `offset` (its start is held by a spool part: merge())

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class LogView:
    task: str
    host: str
    run: dict[str, Any]  # run_id, command, labels, started_ns
    status: str  # running | finished | lost
    exit: dict[str, Any] | None
    doc: Manifest | None  # the store's manifest
    spool_dir: Path | None
    parts: list[Part] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    # the manifest's etag as a LIST showed it before the manifest was read, or after it for the same bytes
    # (archive.listed_tag; "": unknown), so that a follower's next LIST tells whether it changed (Reader.refresh)
    manifest_tag: str = ""

    @property
    def size(self) -> int:
        return self.parts[-1].end if self.parts else 0

    def covered(self, start: int, end: int) -> int:
        """How many bytes of [start, end) the view holds (less than end-start only across a dropped range)."""
        return sum(max(0, min(end, p.end) - max(start, p.offset)) for p in self.parts)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The holes of the view (ranges no part holds: dropped at the spool quota, or lost) that overlap
        [start, end), each whole."""
        out, pos = [], 0
        for p in self.parts:
            if pos >= end:
                break
            if p.offset > pos and p.offset > start:
                out.append((pos, p.offset))
            pos = max(pos, p.end)
        return out

    def missing_error(self, missing: list[tuple[int, int]]) -> BytesMissing:
        a = missing[0][0]
        why = why_missing(next((d for d in self.dropped if d.offset <= a < d.end), None))
        return BytesMissing(self.task, self.host, missing, why)

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    @property
    def etag(self) -> str:
        return f'"{self.run["run_id"]}-{self.size}"'

    def etag_matches(self, tag: str) -> bool:
        """True if `tag` names this run at a size we still hold unchanged: logs only grow."""
        tag = tag.strip()
        if tag.startswith("W/"):
            return False  # If-Range needs a strong validator
        run_id, _, size = tag.strip('"').rpartition("-")
        return run_id == self.run["run_id"] and size.isdigit() and int(size) <= self.size


@dataclass
class SpoolState:
    """What the local spool holds of a log: its run.json and exit.json, parts and dropped ranges."""

    dir: Path
    run: dict[str, Any]
    exit: dict[str, Any] | None
    finished: bool
    parts: list[Part]
    dropped: list[Dropped]


# --- planning ----------------------------------------------------------------------------------------------


def store_parts(doc: Manifest) -> list[Part]:
    parts = [Part(s.seq, s.offset, s.raw_size, "store" if s.frames is None else "frames", s) for s in doc.segments]
    if doc.checkpoint is not None:
        c = doc.checkpoint
        parts.append(Part(c.seq, c.offset, c.raw_size, "checkpoint", c))
    return parts


def run_of(doc: Manifest) -> dict[str, Any]:
    """The run as the spool's run.json says it, from the manifest (a log this reader holds no spool of)."""
    return {"task": doc.task, "host": doc.host, "run_id": doc.run_id, "command": list(doc.command),
            "labels": doc.labels, "started_ns": doc.started_ns}


def exit_of(doc: Manifest) -> dict[str, Any]:
    """How the run ended as the spool's exit.json says it, from the manifest."""
    return {"status": doc.status, "exit_code": doc.exit_code, "signal": doc.signal, "ended_ns": doc.ended_ns,
            "dropped_bytes": doc.dropped_bytes}


def spool_parts(d: Path, run_id: str, sealed: list[int], growing: list[int]) -> list[Part]:
    """Parts of the spool's sealed segments, then of those still growing (being sealed, or open)."""
    parts = []
    for seq in sealed:
        p = _sealed_part(d, run_id, seq)
        if p is not None:
            parts.append(p)
    for seq in growing:
        p = _spool_part(d, seq, "open")
        if p is not None:
            parts.append(p)
    return parts


@functools.lru_cache(maxsize=SEALED_PARTS)
def _sealed_part(d: Path, run_id: str, seq: int) -> Part | None:
    """A sealed spool segment never changes (nor comes back once pruned): read its index once per run."""
    return _spool_part(d, seq, "spool")


def _spool_part(d: Path, seq: int, kind: str) -> Part | None:
    """A spool segment as a part, sized by its index: the bytes a record covers are complete."""
    try:
        raw = read_spool_index(d, seq, kind == "open")
    except FileNotFoundError:
        return None
    if len(raw) < index.RECORD_SIZE:
        return None
    first = next(index.unpack(raw[: index.RECORD_SIZE]))
    last = next(index.unpack(raw[-index.RECORD_SIZE:]))
    return Part(seq, first.offset, last.end - first.offset, kind)


def merge(store: list[Part], spool: list[Part]) -> list[Part]:
    """Parts covering the log from offset 0: the spool's where it has them (fresher, local), else the store's."""
    out: list[Part] = []
    pos = 0
    candidates = sorted(spool + store, key=lambda p: (p.offset, p.kind not in SPOOL_KINDS, -p.size))
    for p in candidates:
        if p.end <= pos:
            continue
        # A gap before p is a range dropped at the spool quota: offsets stay true, readers skip it.
        if out and p.offset < pos:
            if p.kind != "delta":
                continue  # overlaps what we have: a checkpoint of a segment the spool holds whole
            # a delta the spool's part holds the start of (the spool was read before the listing): its rest
            p = dataclasses.replace(p, offset=pos, size=p.end - pos, skip=p.skip + pos - p.offset)
        out.append(p)
        pos = p.end
    return out


def unexplained_gap(view: LogView) -> bool:
    """True if the parts leave out a range that no record of dropped segments accounts for."""
    pos = 0
    for p in view.parts:
        if p.offset > pos and not any(d.offset <= pos and p.offset <= d.end for d in view.dropped):
            return True
        pos = p.end
    return False


# --- the spool's files: the `.open` one while it grows, else the sealed one (renamed meanwhile) ------------


def open_either(*paths: str | Path) -> int:
    """An fd of the first of `paths` that exists (a file renamed between two opens is found under the
    next name), else -1."""
    for path in paths:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
    return -1


def open_spool_file(d: Path, seq: int, what: str, open_: bool) -> int:
    """An fd of segment `seq`'s log (`what` "log") or index ("idx") file: the growing one if `open_` and it is
    still there, else the sealed one. FileNotFoundError if neither is (pruned)."""
    name = names.spool_index if what == "idx" else names.spool_segment
    fd = open_either(*([name(d, seq, open_=True)] if open_ else []), name(d, seq))
    if fd < 0:
        raise FileNotFoundError(name(d, seq))
    return fd


def read_spool_index(d: Path, seq: int, open_: bool) -> bytes:
    """The whole records of segment `seq`'s index (a torn last record is left out)."""
    fd = open_spool_file(d, seq, "idx", open_)
    with open(fd, "rb") as f:
        data = f.read()
    return data[: len(data) - len(data) % index.RECORD_SIZE]


def spool_chunks(d: Path, part: Part) -> list[index.Chunk]:
    """The chunk index of a spool part, within the part (the open file may have grown since)."""
    return [c for c in index.unpack(read_spool_index(d, part.seq, part.kind == "open")) if c.end <= part.end]


class ShortFile(Exception):
    """A spool file ends before the bytes its index covers."""


async def read_spool_file(d: Path, part: Part, a: int, b: int) -> AsyncIterator[bytes]:
    """Bytes [a, b) of a spool part's file (offsets within it), in pieces of at most PIECE."""
    fd = open_spool_file(d, part.seq, "log", part.kind == "open")
    try:
        pos = a
        while pos < b:
            n = min(PIECE, b - pos)
            piece = os.pread(fd, n, pos) if n <= 65536 else await asyncio.to_thread(os.pread, fd, n, pos)
            if not piece:
                raise ShortFile(f"the spool file holds {pos} bytes, fewer than the {b} its index covers")
            yield piece
            pos += len(piece)
    finally:
        os.close(fd)
