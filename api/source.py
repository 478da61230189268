"""One log, seen whole: its bytes from the store's segments and checkpoint, and from the spool when
the API runs beside it (sealed segments and the open one, newer than any checkpoint).

A `LogView` is a snapshot: a list of parts covering [0, size). Reading follows the parts; a spool file
pruned or renamed under a reader is found again under its sealed name or in the store.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from shipper import archive, index, manifest, names
from shipper.errors import LogshipError, ObjectNotFound, StoreError
from shipper.quota import DROPPED_FILE
from shipper.spool import SpoolLog, read_json, read_log
from shipper.store import Store

PIECE = 1 << 20  # bytes per read from disk or store, and per write to a client
VIEW_ATTEMPTS = 3
ZSTD_PIECE = 64 << 10


class LogNotFound(LogshipError):
    code = "not_found"


@dataclass
class Part:
    """A contiguous slice [offset, offset+size) of the log and where its bytes are."""

    seq: int
    offset: int
    size: int
    kind: str  # "spool" (sealed file), "open" (the growing one), "store" (segment), "checkpoint"
    entry: dict[str, Any] | None = None  # the manifest's entry (store parts)

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
    doc: dict[str, Any] | None  # the store's manifest
    spool_dir: Path | None
    parts: list[Part] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.parts[-1].end if self.parts else 0

    def covered(self, start: int, end: int) -> int:
        """How many bytes of [start, end) the view holds (less than end-start only across a dropped range)."""
        return sum(max(0, min(end, p.end) - max(start, p.offset)) for p in self.parts)

    @property
    def finished(self) -> bool:
        return self.status != manifest.RUNNING

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


class Source:
    """Builds LogViews and reads their bytes, from a store and (optionally) a local spool."""

    def __init__(self, store: Store, spool: Path | None) -> None:
        self.store = store
        self.spool = spool

    async def view(self, task: str, host: str) -> LogView:
        names.check_id("task", task)
        names.check_id("host", host)
        for _ in range(VIEW_ATTEMPTS):
            view = await self._view_once(task, host)
            # A segment committed and pruned between our read of the manifest and our listing of the
            # spool is in neither: look again rather than serve a hole that was never dropped.
            if not _unexplained_gap(view):
                break
        return view

    async def _view_once(self, task: str, host: str) -> LogView:
        sl = await asyncio.to_thread(self._spool_log, task, host)
        try:
            doc: dict[str, Any] | None = await archive.load_manifest(self.store, task, host)
        except ObjectNotFound:
            doc = None
        except StoreError:
            if sl is None:
                raise
            doc = None  # the store is down, but this spool has the log: serve what it holds
        if sl is not None and doc is not None and sl.run["run_id"] != doc["run_id"]:
            sl = None  # another run of this log is held in our spool; the store's is the one served
        if doc is None and sl is None:
            raise LogNotFound(f"no log {task}/{host}", "list logs with GET /api/v1/tasks; ids are case-sensitive")
        if sl is not None:
            parts = await asyncio.to_thread(_spool_parts, sl)
            run = sl.run
            exit_ = sl.exit
            status = (sl.exit or {}).get("status", manifest.FINISHED) if sl.finished else manifest.RUNNING
        else:
            assert doc is not None
            parts, run, exit_, status = [], doc, doc, doc["status"]
        if doc is not None:
            parts = _merge(_store_parts(doc), parts)
        dropped = (doc or {}).get("dropped", [])
        if sl is not None:
            dropped = dropped + (await asyncio.to_thread(read_json, sl.dir / DROPPED_FILE) or [])
        return LogView(task, host, run, status, exit_, doc, sl.dir if sl else None, parts, dropped)

    def _spool_log(self, task: str, host: str) -> SpoolLog | None:
        if self.spool is None:
            return None
        d = names.spool_log_dir(self.spool, task, host)
        return read_log(d) if d.is_dir() else None

    # --- reading -----------------------------------------------------------------------------

    async def read(self, view: LogView, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of the view, in pieces of about PIECE bytes."""
        end = view.size if end is None else min(end, view.size)
        for part in view.parts:
            if part.end <= start or part.offset >= end:
                continue
            a, b = max(start, part.offset) - part.offset, min(end, part.end) - part.offset
            async for piece in self._read_part(view, part, a, b):
                yield piece

    async def _read_part(self, view: LogView, part: Part, a: int, b: int) -> AsyncIterator[bytes]:
        if part.kind in ("spool", "open"):
            assert view.spool_dir is not None
            try:
                async for piece in _read_file(view.spool_dir, part, a, b):
                    yield piece
                return
            except FileNotFoundError:
                # pruned after the view was taken: by then the store holds it
                fresh = await self.view(view.task, view.host)
                store_part = next((p for p in fresh.parts if p.seq == part.seq and p.kind == "store"), None)
                if store_part is None:
                    raise
                part = store_part
        assert part.entry is not None
        key, _ = archive.entry_keys(view.task, view.host, part.entry, part.kind == "checkpoint")
        if part.entry["compression"] == "zstd":
            async for piece in self._read_zstd(key, a, b):
                yield piece
        else:
            async for piece in self.store.open(key, a, b, chunk=PIECE):
                yield piece

    async def _read_zstd(self, key: str, a: int, b: int) -> AsyncIterator[bytes]:
        """Decompress a segment from its start, dropping bytes before `a` and stopping at `b`."""
        # One decompressor per read: decompressobj()s of one ZstdDecompressor share its context, and two
        # requests interleaving on it corrupt each other's output.
        dobj = zstandard.ZstdDecompressor().decompressobj()
        pos = 0
        # 64 KiB of zstd is ~230 KiB of log: small pieces keep memory flat under many downloads
        async for comp in self.store.open(key, chunk=ZSTD_PIECE):
            raw = await asyncio.to_thread(dobj.decompress, comp) if len(comp) > 65536 else dobj.decompress(comp)
            lo, hi = max(a - pos, 0), min(b - pos, len(raw))
            if lo < hi:
                yield raw[lo:hi] if (lo, hi) != (0, len(raw)) else raw
            pos += len(raw)
            if pos >= b:
                return

    async def chunks(self, view: LogView, part: Part) -> list[index.Chunk]:
        """The chunk index of one part."""
        if part.kind in ("spool", "open"):
            assert view.spool_dir is not None
            return await asyncio.to_thread(_read_spool_index, view.spool_dir, part)
        assert part.entry is not None
        _, key = archive.entry_keys(view.task, view.host, part.entry, part.kind == "checkpoint")
        data = await self.store.get(key)
        if part.entry["compression"] == "zstd":
            data = zstandard.ZstdDecompressor().decompress(data)
        return list(index.unpack(data))


def _unexplained_gap(view: LogView) -> bool:
    """True if the parts leave out a range that no record of dropped segments accounts for."""
    pos = 0
    for p in view.parts:
        if p.offset > pos and not any(d["offset"] <= pos and p.offset <= d["offset"] + d["raw_size"]
                                      for d in view.dropped):
            return True
        pos = p.end
    return False


def _store_parts(doc: dict[str, Any]) -> list[Part]:
    parts = [Part(s["seq"], s["offset"], s["raw_size"], "store", s) for s in doc["segments"]]
    if doc.get("checkpoint"):
        c = doc["checkpoint"]
        parts.append(Part(c["seq"], c["offset"], c["raw_size"], "checkpoint", c))
    return parts


def _spool_parts(sl: SpoolLog) -> list[Part]:
    parts = []
    for seq in sl.sealed:
        p = _spool_part(sl.dir, seq, "spool")
        if p is not None:
            parts.append(p)
    for seq in [*sl.sealing, *([sl.open] if sl.open is not None else [])]:
        p = _spool_part(sl.dir, seq, "open")
        if p is not None:
            parts.append(p)
    return parts


def _spool_part(d: Path, seq: int, kind: str) -> Part | None:
    """A spool segment as a part, sized by its index: the bytes a record covers are complete."""
    try:
        raw = index.read_raw(_path(d, seq, "idx", kind))
    except FileNotFoundError:
        try:
            raw = index.read_raw(names.spool_index(d, seq))  # sealed since we listed
        except FileNotFoundError:
            return None
    if len(raw) < index.RECORD_SIZE:
        return None
    first = next(index.unpack(raw[: index.RECORD_SIZE]))
    last = next(index.unpack(raw[-index.RECORD_SIZE:]))
    return Part(seq, first.offset, last.end - first.offset, kind)


def _merge(store: list[Part], spool: list[Part]) -> list[Part]:
    """Parts covering the log from offset 0: the spool's where it has them (fresher, local), else the store's."""
    out: list[Part] = []
    pos = 0
    candidates = sorted(spool + store, key=lambda p: (p.offset, p.kind not in ("spool", "open"), -p.size))
    for p in candidates:
        if p.end <= pos:
            continue
        # A gap before p is a range dropped at the spool quota: offsets stay true, readers skip it.
        if out and p.offset < pos:
            continue  # overlaps what we have: a checkpoint of a segment the spool holds whole
        out.append(p)
        pos = p.end
    return out


def _path(d: Path, seq: int, what: str, kind: str) -> Path:
    if what == "idx":
        return names.spool_index(d, seq, open_=kind == "open")
    return names.spool_segment(d, seq, open_=kind == "open")


def _read_spool_index(d: Path, part: Part) -> list[index.Chunk]:
    try:
        raw = index.read_raw(_path(d, part.seq, "idx", part.kind))
    except FileNotFoundError:
        raw = index.read_raw(names.spool_index(d, part.seq))
    return [c for c in index.unpack(raw) if c.end <= part.end]


async def _read_file(d: Path, part: Part, a: int, b: int) -> AsyncIterator[bytes]:
    try:
        fd = os.open(_path(d, part.seq, "log", part.kind), os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(names.spool_segment(d, part.seq), os.O_RDONLY)
    try:
        pos = a
        while pos < b:
            n = min(PIECE, b - pos)
            piece = os.pread(fd, n, pos) if n <= 65536 else await asyncio.to_thread(os.pread, fd, n, pos)
            if not piece:
                raise FileNotFoundError(f"segment {part.seq} is shorter than its index says")
            yield piece
            pos += len(piece)
    finally:
        os.close(fd)
