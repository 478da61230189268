"""One log, seen whole: its bytes from the store's segments and checkpoint, and from the spool when
the API runs beside it (sealed segments and the open one, newer than any checkpoint).

A `LogView` is a snapshot: a list of parts covering [0, size). Reading follows the parts; a spool file
pruned or renamed under a reader, or a checkpoint replaced, is found again in a fresh view (under its
sealed name, or in the store). Every byte read from the store is checked against the manifest before it
is handed out (shipper/format/archive.py: per-block digests, or a whole-object check for older manifests), and
bytes are always at their offsets: a range the view does not hold raises BytesMissing, never a shift.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from shipper.errors import LogshipError, ObjectNotFound, StoreError, StoreUnavailable
from shipper.format import archive, index, manifest, names
from shipper.format.archive import BytesMissing, IntegrityError
from shipper.format.manifest import Dropped, Manifest, ManifestError, Segment
from shipper.retry import QuietLog
from shipper.spool import SpoolLog, read_json, read_log
from shipper.store import Store

PIECE = 1 << 20  # bytes per read from disk or store, and at most about per write to a client
VIEW_ATTEMPTS = 3
# A finished log's view is reused this long: its bytes never change, and `logship gc` hides a log for
# query.grace_seconds before it deletes anything. Saves the second GET of the manifest in a request (the
# proxy middleware and the handler both ask), and requests in a burst share one parsed manifest.
FINISHED_VIEW_TTL = 0.1
FINISHED_VIEWS = 1000
SEALED_PARTS = 4096  # sealed spool segments whose extent is remembered (each view read every index before)
STORE_KINDS = ("store", "checkpoint")
# Decompression runs on the event loop, in pieces of at most ZSTD_OUT bytes of log (well under a
# millisecond each), whatever the ratio: memory stays flat. Measured with 2 cores (bench/README.md):
# handing pieces to a thread (zstandard releases the GIL) or reading a piece ahead in a task of its own
# cost more CPU than they saved.
ZSTD_OUT = 256 << 10
ZSTD_IN = 128 << 10  # compressed bytes per request from the store, and per read of the decompressor
# A zstd frame of raw blocks (RFC 8878 §3.1.1): magic, a descriptor with no content size and no checksum,
# a window of 128 KiB (= the largest block), then blocks of a 3-byte header and their bytes as they are.
RAW_BLOCK = 128 << 10
RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00" + bytes([(17 - 10) << 3])

log = logging.getLogger("logship.api")
_quiet = QuietLog(log)


class LogNotFound(LogshipError):
    code = "not_found"


class LogMoved(StoreUnavailable):
    """What a view named went away under the reader again and again (pruned, replaced): try again."""

    code = "log_changed"


@dataclass
class Part:
    """A contiguous slice [offset, offset+size) of the log and where its bytes are."""

    seq: int
    offset: int
    size: int
    kind: str  # "spool" (sealed file), "open" (the growing one), "store" (segment), "checkpoint"
    entry: Segment | None = None  # the manifest's entry (store parts)

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
        why = archive.why_missing(next((d for d in self.dropped if d.offset <= a < d.end), None))
        return BytesMissing(self.task, self.host, missing, why)

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


@dataclass
class _SpoolState:
    log: SpoolLog
    parts: list[Part]
    dropped: list[Dropped]


class Source:
    """Builds LogViews and reads their bytes, from a store and (optionally) a local spool."""

    def __init__(self, store: Store, spool: Path | None) -> None:
        self.store = store
        self.spool = spool
        self._finished: dict[tuple[str, str], tuple[float, LogView]] = {}  # recent views of finished logs
        self.integrity_errors = 0  # objects (or spool files) that failed their check: /metrics

    def note(self, exc: IntegrityError) -> None:
        """Count a failed check once, and log it (one line naming the object, rate-limited per object)."""
        if getattr(exc, "noted", False):
            return
        exc.noted = True  # type: ignore[attr-defined]
        self.integrity_errors += 1
        _quiet.log(logging.ERROR, exc.key, "integrity: %s", exc.detail)

    async def view(self, task: str, host: str, *, recent: bool = True) -> LogView:
        """The log as it is now; `recent`: a finished log's view of the last FINISHED_VIEW_TTL will do."""
        names.check_id("task", task)
        names.check_id("host", host)
        now = time.monotonic()
        last = self._finished.get((task, host))
        if recent and last is not None and now - last[0] < FINISHED_VIEW_TTL:
            return last[1]
        for _ in range(VIEW_ATTEMPTS):
            view = await self._view_once(task, host)
            # A segment committed and pruned between our read of the manifest and our listing of the
            # spool is in neither: look again rather than serve a hole that was never dropped.
            if not _unexplained_gap(view):
                break
        if view.finished:
            if len(self._finished) >= FINISHED_VIEWS:
                self._finished = {k: v for k, v in self._finished.items() if now - v[0] < FINISHED_VIEW_TTL}
            self._finished[(task, host)] = (now, view)
        return view

    async def _view_once(self, task: str, host: str) -> LogView:
        # The spool and the store are read at once (the manifest's GET is most of a view's time).
        local = asyncio.ensure_future(asyncio.to_thread(self._spool_state, task, host))
        gone = False
        try:
            doc: Manifest | None = await archive.load_manifest(self.store, task, host)
        except ObjectNotFound:
            doc, gone = None, True
        except IntegrityError as exc:  # a damaged manifest: not "the store is down"
            self.note(exc)
            raise
        except StoreError:
            if await local is None:
                raise
            doc = None  # the store is down, but this spool has the log: serve what it holds
        finally:
            state = await local
        if state is not None and doc is not None and state.log.run["run_id"] != doc.run_id:
            state = None  # another run of this log is held in our spool; the store's is the one served
        if state is not None and gone and (state.log.dir / names.SHIPPED_FILE).exists():
            state = None  # shipped, then deleted from the store (logship gc): the spool's leftovers are not it
        if doc is None and state is None:
            raise LogNotFound(f"no log {task}/{host}", "list logs with GET /api/v1/tasks; ids are case-sensitive")
        dropped = list(doc.dropped) if doc is not None else []
        if state is not None:
            sl = state.log
            parts, run, exit_ = state.parts, sl.run, sl.exit
            status = (sl.exit or {}).get("status", manifest.FINISHED) if sl.finished else manifest.RUNNING
            dropped = dropped + state.dropped
        else:
            assert doc is not None
            parts, run, exit_, status = [], _run_of(doc), _exit_of(doc), doc.status
        if doc is not None:
            parts = _merge(_store_parts(doc), parts)
        return LogView(task, host, run, status, exit_, doc, state.log.dir if state else None, parts, dropped)

    def _spool_state(self, task: str, host: str) -> _SpoolState | None:
        if self.spool is None:
            return None
        d = names.spool_log_dir(self.spool, task, host)
        sl = read_log(d) if d.is_dir() else None
        if sl is None:
            return None
        return _SpoolState(sl, _spool_parts(sl), _spool_dropped(read_json(sl.dir / names.DROPPED_FILE)))

    # --- reading -----------------------------------------------------------------------------

    async def read(self, view: LogView, start: int = 0, end: int | None = None,
                   _depth: int = 0) -> AsyncGenerator[bytes, None]:
        """The bytes [start, end) of the view, in pieces of at most PIECE bytes; BytesMissing where the view
        holds no part (after the bytes before it: nothing after a hole is ever moved to its offset).

        Once a part's first piece is here, the next part's object is requested, so that its GET
        (SeaweedFS takes 2-6 ms to its first byte) overlaps the sending of this part. Requested when
        three quarters of the part were sent instead, a zstd object passed through (4.6 MB, ≈ 3 ms)
        left most of that latency uncovered: 0.72 of a plain GET's speed, 0.87 this way
        (bench/README.md). The price is a second response's buffers (≤ 2 x READ_BUFSIZE) per reader.
        """
        end = view.size if end is None else min(end, view.size)
        jobs = [(p, max(start, p.offset) - p.offset, min(end, p.end) - p.offset) for p in view.parts
                if p.end > start and p.offset < end]
        early: _Early | None = None  # the next job's object, requested before its turn
        pos = start
        try:
            for i, (part, a, b) in enumerate(jobs):
                if part.offset + a > pos:
                    raise view.missing_error(view.missing(pos, end))
                pos = part.offset + b
                opened, early = early, None
                nxt = jobs[i + 1] if i + 1 < len(jobs) and jobs[i + 1][0].kind in STORE_KINDS else None
                pieces = self._read_part(view, part, a, b, opened, _depth)
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        yield piece
                        if nxt is not None and early is None:
                            early = self._open_store(view, *nxt)
            if pos < end:
                raise view.missing_error(view.missing(pos, end))
        finally:
            if early is not None:
                await early.aclose()

    async def read_stream(self, view: LogView, stream: str, start: int = 0,
                          end: int | None = None) -> AsyncGenerator[bytes, None]:
        """The bytes of one stream's chunks within [start, end), in order. Each part is read once and the
        other stream's chunks are cut out of it (chunk by chunk, a zstd segment would be decompressed from
        its start for every chunk)."""
        end = view.size if end is None else min(end, view.size)
        code = index.STREAM_CODES[stream]
        if missing := view.missing(start, end):  # the stream's bytes around a hole would run together
            raise view.missing_error(missing)
        for part in view.parts:
            if part.end <= start or part.offset >= end:
                continue
            ranges = _ranges([c for c in await self.chunks(view, part)
                              if c.stream == code and c.end > start and c.offset < end], start, end)
            if not ranges:
                continue
            pos, i = ranges[0][0], 0
            async for piece in self.read(view, ranges[0][0], ranges[-1][1]):
                stop = pos + len(piece)
                while i < len(ranges) and ranges[i][0] < stop:
                    a, b = max(ranges[i][0], pos), min(ranges[i][1], stop)
                    if a < b:
                        yield piece if (a, b) == (pos, stop) else piece[a - pos:b - pos]
                    if ranges[i][1] > stop:
                        break
                    i += 1
                pos = stop

    def _key(self, view: LogView, part: Part) -> str:
        assert part.entry is not None
        return part.entry.keys(view.task, view.host)[0]

    def _open_store(self, view: LogView, part: Part, a: int, b: int, zstd_chunk: int = ZSTD_IN) -> _Early:
        """The object of a store part, requested now: stored bytes from its start (zstd), or those of
        [a, b) (none). With the entry's block digests, each block is checked before its bytes come out,
        and an uncompressed Range reads from the block that holds its start. Without them (an older
        manifest), the whole object is read and _read_store checks it as a whole."""
        assert part.entry is not None
        key = self._key(view, part)
        entry = part.entry
        try:
            blocks = archive.block_digests(key, entry)
        except IntegrityError as exc:
            self.note(exc)
            raise
        if blocks is None:
            return _Early(self.store.open(key, chunk=zstd_chunk if entry.compression == "zstd" else PIECE))
        if entry.compression == "zstd":
            return _Early(archive.verified(self.store.open(key, chunk=zstd_chunk), key, entry))
        bs = blocks[0]
        lo, hi = a // bs * bs, min(-(-b // bs) * bs, entry.stored_size)
        checked = archive.verified(self.store.open(key, lo, hi, chunk=PIECE), key, entry, lo, hi)
        return _Early(_slice(checked, a - lo, b - a))

    async def _read_part(self, view: LogView, part: Part, a: int, b: int, opened: _Early | None,
                         depth: int = 0) -> AsyncGenerator[bytes, None]:
        """Bytes [a, b) of one part (offsets within it). A spool file pruned or renamed, or a store object
        gone (a checkpoint replaced), is read on from a fresh view; one the fresh view still names is
        missing: IntegrityError."""
        done = 0
        try:
            if part.kind in ("spool", "open"):
                assert view.spool_dir is not None
                try:
                    async for piece in _read_file(view.spool_dir, part, a, b):
                        yield piece
                        done += len(piece)
                    return
                except _ShortFile as exc:
                    raise IntegrityError(f"spool:{view.task}/{view.host}/{part.seq:08d}", str(exc),
                                         "the spool file was truncated or damaged on this host") from None
            async for piece in self._read_store(view, part, a, b, opened):
                yield piece
                done += len(piece)
            return
        except (FileNotFoundError, ObjectNotFound):
            pass  # read on below, outside the handler
        except IntegrityError as exc:
            self.note(exc)
            raise
        async for piece in self._reread(view, part, a + done, b, depth):
            yield piece

    async def _reread(self, view: LogView, part: Part, a: int, b: int, depth: int) -> AsyncGenerator[bytes, None]:
        """[a, b) of a part that went away under the reader, from a fresh view."""
        lo, hi = part.offset + a, part.offset + b
        if depth >= VIEW_ATTEMPTS:
            raise LogMoved(f"segment {part.seq} of {view.task}/{view.host} moved away {depth} times while read",
                           "try again")
        fresh = await self.view(view.task, view.host, recent=False)
        now = next((p for p in fresh.parts if p.offset <= lo < p.end), None)
        if (now is not None and part.kind in STORE_KINDS and now.kind in STORE_KINDS
                and self._key(fresh, now) == self._key(view, part)):
            exc = IntegrityError(self._key(view, part), "missing from the store, though the manifest names it")
            self.note(exc)
            raise exc
        async for piece in self.read(fresh, lo, hi, depth + 1):
            yield piece

    async def _read_store(self, view: LogView, part: Part, a: int, b: int,
                          opened: _Early | None) -> AsyncGenerator[bytes, None]:
        """[a, b) of a store part, checked: by block (see _open_store), else whole, after the fact: an
        older manifest has only the sha256 of the log bytes, so the whole part is read and hashed, and a
        mismatch is raised at its end (the bytes before it may have gone out; the answer then fails)."""
        obj = opened if opened is not None else self._open_store(view, part, a, b)
        entry = part.entry
        assert entry is not None
        zstd = entry.compression == "zstd"
        async with contextlib.aclosing(obj):
            if entry.blocks is not None:
                async for piece in (_decompress(obj, a, b, self._key(view, part)) if zstd else obj):
                    yield piece
                return
            key = self._key(view, part)
            h, pos = hashlib.sha256(), 0
            async for piece in (_decompress(obj, 0, part.size, key) if zstd else obj):
                h.update(piece)
                lo, hi = max(a - pos, 0), min(b - pos, len(piece))
                if lo < hi:
                    yield piece if (lo, hi) == (0, len(piece)) else piece[lo:hi]
                pos += len(piece)
            if pos < part.size or h.hexdigest() != entry.sha256:
                raise IntegrityError(key, "its bytes do not match the sha256 its manifest recorded")

    # --- the zstd representation (Content-Encoding: zstd) --------------------------------------

    @staticmethod
    def zstd_share(view: LogView) -> float:
        """The share of the log's bytes the store holds as zstd: what a zstd-encoded answer sends as stored."""
        return sum(p.size for p in view.parts if _stored_zstd(p)) / view.size if view.size else 0.0

    @staticmethod
    def zstd_size(view: LogView) -> int:
        """Bytes of `read_zstd(view)`."""
        return sum(map(_zstd_part_size, view.parts))

    async def read_zstd(self, view: LogView) -> AsyncGenerator[bytes, None]:
        """The whole log as one zstd stream (RFC 8878: concatenated frames are one stream): each zstd
        object of the store as it is stored, every other part as a frame of raw (uncompressed) blocks.
        Nothing is decompressed or compressed here, so this runs at the store's speed. The next object is
        requested early, as in read()."""
        early: _Early | None = None
        try:
            for i, part in enumerate(view.parts):
                opened, early = early, None
                nxt = view.parts[i + 1] if i + 1 < len(view.parts) and view.parts[i + 1].kind in STORE_KINDS else None
                pieces = self._zstd_part(view, part, opened)
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        yield piece
                        if nxt is not None and early is None:
                            early = self._open_store(view, nxt, 0, nxt.size, PIECE)
        finally:
            if early is not None:
                await early.aclose()

    async def _zstd_part(self, view: LogView, part: Part, opened: _Early | None) -> AsyncGenerator[bytes, None]:
        """One part as zstd: a zstd object as it is stored (each block checked against the manifest, which
        also gave the answer's Content-Length), else its bytes in a frame of raw blocks."""
        if not _stored_zstd(part):
            raw = self._read_part(view, part, 0, part.size, opened)
            async with contextlib.aclosing(raw):
                async for piece in _raw_frame(raw, part.size):
                    yield piece
            return
        obj = opened or self._open_store(view, part, 0, part.size, PIECE)
        try:
            async with contextlib.aclosing(obj):
                async for piece in obj:
                    yield piece
        except ObjectNotFound:
            exc = IntegrityError(self._key(view, part), "missing from the store, though the manifest names it")
            self.note(exc)
            raise exc from None
        except IntegrityError as exc:
            self.note(exc)
            raise

    async def chunks(self, view: LogView, part: Part, _depth: int = 0) -> list[index.Chunk]:
        """The chunk index of one part (a store part's checked against the manifest: shipper/format/archive.py).
        One that went away (pruned, replaced) is read from a fresh view, cut to the part's range."""
        try:
            if part.kind in ("spool", "open"):
                assert view.spool_dir is not None
                return await asyncio.to_thread(_read_spool_index, view.spool_dir, part)
            assert part.entry is not None
            key = part.entry.keys(view.task, view.host)[1]
            return archive.check_index(key, part.entry, await self.store.get(key))
        except IntegrityError as exc:
            self.note(exc)
            raise
        except (FileNotFoundError, ObjectNotFound):
            pass
        if _depth >= VIEW_ATTEMPTS:
            raise LogMoved(f"the index of segment {part.seq} of {view.task}/{view.host} moved away while read",
                           "try again")
        fresh = await self.view(view.task, view.host, recent=False)
        now = next((p for p in fresh.parts if p.offset <= part.offset and p.end >= part.end), None)
        if now is None:
            raise fresh.missing_error(fresh.missing(part.offset, part.end) or [(part.offset, part.end)])
        if now.kind == part.kind and now.kind in STORE_KINDS and now.entry == part.entry:
            assert now.entry is not None
            key = now.entry.keys(view.task, view.host)[1]
            gone = IntegrityError(key, "missing from the store, though the manifest names it")
            self.note(gone)
            raise gone
        return [c for c in await self.chunks(fresh, now, _depth + 1) if c.offset >= part.offset and c.end <= part.end]


def _unexplained_gap(view: LogView) -> bool:
    """True if the parts leave out a range that no record of dropped segments accounts for."""
    pos = 0
    for p in view.parts:
        if p.offset > pos and not any(d.offset <= pos and p.offset <= d.end for d in view.dropped):
            return True
        pos = p.end
    return False


def _store_parts(doc: Manifest) -> list[Part]:
    parts = [Part(s.seq, s.offset, s.raw_size, "store", s) for s in doc.segments]
    if doc.checkpoint is not None:
        c = doc.checkpoint
        parts.append(Part(c.seq, c.offset, c.raw_size, "checkpoint", c))
    return parts


def _run_of(doc: Manifest) -> dict[str, Any]:
    """The run as the spool's run.json says it, from the manifest (a log this API holds no spool of)."""
    return {"task": doc.task, "host": doc.host, "run_id": doc.run_id, "command": list(doc.command),
            "labels": doc.labels, "started_ns": doc.started_ns}


def _exit_of(doc: Manifest) -> dict[str, Any]:
    """How the run ended as the spool's exit.json says it, from the manifest."""
    return {"status": doc.status, "exit_code": doc.exit_code, "signal": doc.signal, "ended_ns": doc.ended_ns,
            "dropped_bytes": doc.dropped_bytes}


def _spool_dropped(doc: Any) -> list[Dropped]:
    """The spool's dropped.json as ranges; one that is not a range (a damaged file, which the watcher sets
    aside) explains no hole, and a hole it would have explained is served as one."""
    out = []
    for i, e in enumerate(doc if isinstance(doc, list) else []):
        with contextlib.suppress(ManifestError):
            out.append(Dropped.parse(e, f"dropped[{i}]"))
    return out


def _spool_parts(sl: SpoolLog) -> list[Part]:
    parts = []
    for seq in sl.sealed:
        p = _sealed_part(sl.dir, sl.run["run_id"], seq)
        if p is not None:
            parts.append(p)
    for seq in [*sl.sealing, *([sl.open] if sl.open is not None else [])]:
        p = _spool_part(sl.dir, seq, "open")
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
                raise _ShortFile(f"the spool file holds {pos} bytes, fewer than the {b} its index covers")
            yield piece
            pos += len(piece)
    finally:
        os.close(fd)


# --- reading helpers ---------------------------------------------------------------------------------


def _ranges(chunks: list[index.Chunk], start: int, end: int) -> list[tuple[int, int]]:
    """[offset, end) of the chunks within [start, end), adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for c in chunks:
        a, b = max(c.offset, start), min(c.end, end)
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        elif a < b:
            out.append((a, b))
    return out


def _zstd_part_size(part: Part) -> int:
    return part.entry.stored_size if part.entry is not None and _stored_zstd(part) else _raw_frame_size(part.size)


def _stored_zstd(part: Part) -> bool:
    """True for a zstd object of the store that can be sent as stored: one with block digests (a part
    of an older manifest is decompressed and checked whole, by read())."""
    return (part.kind in STORE_KINDS and part.entry is not None and part.entry.compression == "zstd"
            and part.entry.blocks is not None)


class _ShortFile(Exception):
    """A spool file ends before the bytes its index covers."""


async def _slice(pieces: AsyncGenerator[bytes, None], skip: int, n: int) -> AsyncGenerator[bytes, None]:
    """`n` bytes of `pieces` after the first `skip`."""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            if skip or len(piece) - skip > n:
                piece = cast(bytes, memoryview(piece)[skip:skip + n])
                skip = 0
            n -= len(piece)
            yield piece
            if n <= 0:
                return


class _Early:
    """A store object's stream whose first piece is being fetched already (a task), so that the GET's
    latency overlaps the sending of what comes before it. Close it (aclose) if it is not read to its end."""

    def __init__(self, gen: AsyncGenerator[bytes, None]) -> None:
        self._gen = gen
        self._first: asyncio.Task[bytes] | None = asyncio.create_task(_first_piece(gen))

    def __aiter__(self) -> _Early:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            piece = await self._first
            self._first = None
        else:
            piece = await anext(self._gen, b"")
        if not piece:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        if self._first is not None:
            self._first.cancel()
            await asyncio.wait([self._first])
            if not self._first.cancelled():
                self._first.exception()  # retrieved: an early GET that failed and was never read is no news
            self._first = None
        await self._gen.aclose()


async def _first_piece(gen: AsyncGenerator[bytes, None]) -> bytes:
    return await anext(gen, b"")


async def _decompress(comp: AsyncIterator[bytes], a: int, b: int, key: str = "a zstd object") -> AsyncIterator[bytes]:
    """Decompress one zstd object from its start, dropping bytes before `a` and stopping at `b`.

    Pieces are at most ZSTD_OUT bytes however well the data compressed (a run of one byte shrinks
    30,000-fold: a whole piece of input must not become one piece of output).
    """
    feed = _Feed()
    # One decompressor per read: readers of one ZstdDecompressor share its context, and two requests
    # interleaving on it corrupt each other's output.
    reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], feed), read_size=ZSTD_IN, closefd=False)
    pos = 0
    while pos < b:
        try:
            raw = reader.read1(ZSTD_OUT)  # reads `feed` only while it has no output yet: _Starved loses nothing
        except _Starved:
            piece = await anext(comp, b"")
            feed.give(piece)
            continue
        except zstandard.ZstdError as exc:
            raise IntegrityError(key, f"not a valid zstd object ({exc})") from None
        if not raw:
            raise IntegrityError(key, f"its log bytes ended at {pos}, short of the {b} its manifest says")
        lo, hi = max(a - pos, 0), min(b - pos, len(raw))
        if lo < hi:
            yield raw[lo:hi] if (lo, hi) != (0, len(raw)) else raw
        pos += len(raw)


class _Starved(Exception):
    """The decompressor wants input that has not arrived yet."""


class _Feed:
    """Compressed bytes as they arrive, as the file zstandard's stream reader reads: read() hands out
    what is here and raises _Starved when nothing is (b"" would mean the end of the object)."""

    def __init__(self) -> None:
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._eof = False

    def give(self, piece: bytes) -> None:
        if piece:
            self._pieces.append(memoryview(piece))
        else:
            self._eof = True

    def read(self, n: int) -> memoryview | bytes:
        if not self._pieces:
            if self._eof:
                return b""
            raise _Starved()
        piece = self._pieces[0]
        if len(piece) <= n:
            return self._pieces.popleft()
        self._pieces[0] = piece[n:]
        return piece[:n]


def _raw_frame_size(n: int) -> int:
    return len(RAW_FRAME_HEADER) + 3 * max(1, -(-n // RAW_BLOCK)) + n


async def _raw_frame(pieces: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    """The `n` bytes of `pieces` as one zstd frame of raw blocks of RAW_BLOCK bytes (the last one shorter)."""
    head = RAW_FRAME_HEADER  # sent with the first block
    carry = b""  # bytes short of a block, waiting for the next piece
    left = n  # bytes not yet sent in a block
    async for piece in pieces:
        data = carry + piece if carry else piece
        if len(data) > left:
            raise StoreError(f"a part of the log holds more than its {n} bytes",
                             "the spool or the store changed under the reader")
        mv, i = memoryview(data), 0
        while len(data) - i >= RAW_BLOCK or (i < len(data) and len(data) - i == left):
            size = min(RAW_BLOCK, len(data) - i)
            left -= size
            yield head + _block_header(size, left == 0) + mv[i:i + size]
            head, i = b"", i + size
        carry = mv[i:].tobytes()
    if left:
        raise StoreError(f"a part of the log held {n - left} bytes, not {n}",
                         "the spool or the store changed under the reader")
    if n == 0:
        yield head + _block_header(0, True)


def _block_header(size: int, last: bool) -> bytes:
    return (int(last) | size << 3).to_bytes(3, "little")  # block type 0: raw
