"""Reading a stored log back, for `logship cat` and the API: a view of the log planned from its manifest and
(when a spool is at hand) the spool's files (shipper/format/parts.py), and its bytes read from the spool and the
store, checked against the manifest on the way (a part stored as one object: shipper/format/whole.py; as frames
or deltas: chained.py). Bytes are always at their offsets: a range the view does not hold raises BytesMissing,
never a shift. A spool file pruned or renamed under a reader, or a checkpoint replaced, is found again in a fresh
view (under its sealed name, or in the store). The next part's object is requested before its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable

from shipper.errors import LogshipError, ObjectNotFound, StoreError, StoreUnavailable
from shipper.format import archive, chained, index, names, spoolview, whole
from shipper.format.archive import IntegrityError
from shipper.format.manifest import FINISHED, Manifest
from shipper.format.parts import (
    PIECE,
    STORE_KINDS,
    WHOLE_KINDS,
    LogView,
    Part,
    ShortFile,
    SpoolState,
    exit_of,
    merge,
    read_spool_file,
    run_of,
    spool_chunks,
    store_parts,
    unexplained_gap,
)
from shipper.format.zstdio import Early, raw_frame, raw_frame_size
from shipper.store import Store

VIEW_ATTEMPTS = 3
# read() asks for the next part's object once this many log bytes of a decompressed part are left: ≥ 5 ms of
# a core's decompression (0.8 GB/s), over a GET's 2-6 ms to its first byte; asked at a 16 MiB part's start, its
# answer sat buffered through the whole part, in every download (bench/README.md, "memory").
EARLY_LEFT = 4 << 20


class LogNotFound(LogshipError):
    code = "not_found"


class LogMoved(StoreUnavailable):
    """What a view named went away under the reader again and again (pruned, replaced): try again."""

    code = "log_changed"


class Reader:
    """Builds LogViews of logs and reads their bytes, from a store and a local spool (api/source.py)."""

    def __init__(self, store: Store, *, hold_unchecked: bool = False) -> None:
        self.store = store
        # A part of a manifest older than the block digests is checked only at its end. An answer over HTTP
        # that fails there is cut, and its client knows; a file written by `logship cat` is not: cat holds
        # such a part until it matched (in memory, as big as a segment).
        self.hold_unchecked = hold_unchecked
        self.chained = chained.Chained(store, self.note)  # frames and chain deltas (issue 14)
        self.whole = whole.Whole(store, self.note)  # segments and checkpoints stored whole
        self.manifests: archive.ManifestCache | None = None  # a long-lived reader keeps one (api/source.py)

    def note(self, exc: IntegrityError) -> None:
        """Called with each failed check before it is raised (the API counts and logs them)."""

    def spool_state(self, task: str, host: str) -> SpoolState | None:
        """What the local spool holds of the log (run in a thread); None: no spool, or not this log."""
        return None

    async def view(self, task: str, host: str, *, recent: bool = True) -> LogView:
        """The log as it is now (`recent`: a subclass may hand out a view it made a moment ago)."""
        names.check_id("task", task)
        names.check_id("host", host)
        return await self._view(task, host, "")

    async def refresh(self, view: LogView, spool: Awaitable[SpoolState | None] | None = None) -> LogView:
        """The next look at a running log. Beside the spool, from the spool alone (`spool`: its state, read
        once for several followers; else read now), keeping the view's manifest unless the spool shows what
        it cannot explain (shipper/format/spoolview.py). Followed from the store alone: one LIST from its
        last delta for the chain's new deltas; the manifest is read again (a whole new view) only when that
        LIST shows it changed (a seal, the end). Other views are taken again."""
        if view.spool_dir is not None and not view.finished:
            state = await (spool if spool is not None else asyncio.to_thread(self.spool_state, view.task, view.host))
            if (fresh := spoolview.refreshed(view, state)) is not None:
                return fresh
        if view.spool_dir is not None or view.doc is None or view.finished:
            return await self.view(view.task, view.host, recent=False)
        new, tag = await self.chained.grown(view.task, view.host, view.doc, view.parts)
        if not tag or tag != view.manifest_tag:
            return await self._view(view.task, view.host, tag)  # `tag` was listed before this read of it
        return dataclasses.replace(view, parts=view.parts + new) if new else view

    async def _view(self, task: str, host: str, tag: str) -> LogView:
        for _ in range(VIEW_ATTEMPTS):
            view = await self._view_once(task, host, tag)
            # A segment committed and pruned between our read of the manifest and our listing of the
            # spool is in neither: look again rather than serve a hole that was never dropped.
            if not unexplained_gap(view):
                break
        return view

    async def _view_once(self, task: str, host: str, tag: str) -> LogView:
        # The spool and the store are read at once (the manifest's GET is most of a view's time).
        local = asyncio.ensure_future(asyncio.to_thread(self.spool_state, task, host))
        doc: Manifest | None = None
        gone, data = False, b""
        try:
            doc, data = await archive.fetch_manifest(self.store, task, host, self.manifests)
        except ObjectNotFound:
            gone = True
        except IntegrityError as exc:  # a damaged manifest: not "the store is down"
            self.note(exc)
            raise
        except StoreError:
            if await local is None:
                raise  # else the store is down, but this spool has the log: serve what it holds (doc None)
        finally:
            state = await local
        state = spoolview.usable(doc, state, gone)
        if state is not None:
            return spoolview.of_state(task, host, doc, state, archive.listed_tag(data, "") or tag)
        if doc is None:
            raise LogNotFound(f"no log {task}/{host}", "list logs with GET /api/v1/tasks; ids are case-sensitive")
        # an open segment is in the store as deltas, found by listing
        ours, listed = await self.chained.plan(doc) if doc.status != FINISHED else (store_parts(doc), "")
        return LogView(task, host, run_of(doc), doc.status, exit_of(doc), doc, None, merge(ours, []),
                       list(doc.dropped), archive.listed_tag(data, listed) or tag)

    # --- reading -----------------------------------------------------------------------------

    async def read(self, view: LogView, start: int = 0, end: int | None = None,
                   _depth: int = 0) -> AsyncGenerator[bytes, None]:
        """The bytes [start, end) of the view, in pieces of at most PIECE bytes; BytesMissing where the view
        holds no part (after the bytes before it: nothing after a hole is ever moved to its offset).

        The next part's object is requested before its turn, so that its GET (2-6 ms to a first byte) overlaps
        the sending of this part: at the part's first piece, or with EARLY_LEFT bytes left of a part decompressed
        on the fly. Meanwhile its answer's buffer (≈ 2 x the pieces it is read in) is held.
        """
        end = view.size if end is None else min(end, view.size)
        jobs = [(p, max(start, p.offset) - p.offset, min(end, p.end) - p.offset) for p in view.parts
                if p.end > start and p.offset < end]
        early: Early | None = None  # the next job's object, requested before its turn
        pos = start
        try:
            for i, (part, a, b) in enumerate(jobs):
                if part.offset + a > pos:
                    raise view.missing_error(view.missing(pos, end))
                pos = part.offset + b
                opened, early = early, None
                nxt = jobs[i + 1] if i + 1 < len(jobs) and jobs[i + 1][0].kind in WHOLE_KINDS else None
                zstd = part.kind in WHOLE_KINDS and part.entry is not None and part.entry.compression == "zstd"
                left, ask_at = b - a, EARLY_LEFT if zstd else b - a  # the next is asked for once `left` <= ask_at
                pieces = self._read_part(view, part, a, b, opened, _depth)
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        yield piece
                        left -= len(piece)
                        if nxt is not None and early is None and left <= ask_at:
                            early = self.whole.open(view.task, view.host, *nxt)
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
        if part.kind == "delta":
            return part.key
        if part.kind == "frames":
            return names.frames_key(view.task, view.host, part.seq)
        return whole.object_key(view.task, view.host, part)

    async def _read_part(self, view: LogView, part: Part, a: int, b: int, opened: Early | None,
                         depth: int = 0) -> AsyncGenerator[bytes, None]:
        """Bytes [a, b) of one part (offsets within it). A spool file pruned or renamed, or a store object
        gone (a checkpoint replaced), is read on from a fresh view; one the fresh view still names is
        missing: IntegrityError."""
        done = 0
        try:
            if part.kind in ("spool", "open"):
                assert view.spool_dir is not None
                try:
                    async for piece in read_spool_file(view.spool_dir, part, a, b):
                        yield piece
                        done += len(piece)
                    return
                except ShortFile as exc:
                    raise IntegrityError(f"spool:{view.task}/{view.host}/{part.seq:08d}", str(exc),
                                         "the spool file was truncated or damaged on this host") from None
            if part.kind in WHOLE_KINDS:
                pieces = self.whole.read(view.task, view.host, part, a, b, opened, self.hold_unchecked)
            else:
                pieces = self.chained.read(view.task, view.host, part, a, b)
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
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
        early: Early | None = None
        try:
            for i, part in enumerate(view.parts):
                opened, early = early, None
                nxt = view.parts[i + 1] if i + 1 < len(view.parts) and view.parts[i + 1].kind in WHOLE_KINDS else None
                pieces = self._zstd_part(view, part, opened)
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        yield piece
                        if nxt is not None and early is None:
                            early = self.whole.open(view.task, view.host, nxt, 0, nxt.size, PIECE)
        finally:
            if early is not None:
                await early.aclose()

    async def _zstd_part(self, view: LogView, part: Part, opened: Early | None) -> AsyncGenerator[bytes, None]:
        """One part as zstd: a zstd object as it is stored (each block checked against the manifest, which
        also gave the answer's Content-Length), else its bytes in a frame of raw blocks."""
        if not _stored_zstd(part):
            raw = self._read_part(view, part, 0, part.size, opened)
            async with contextlib.aclosing(raw):
                async for piece in raw_frame(raw, part.size):
                    yield piece
            return
        obj = opened or (self.whole.open(view.task, view.host, part, 0, part.size, PIECE)
                         if part.kind in WHOLE_KINDS else self.chained.zstd(view.task, view.host, part))
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

    async def read_whole(self, view: LogView, stream: str | None = None) -> AsyncGenerator[bytes, None]:
        """The whole log (`logship cat`), or one stream's chunks of it, up to its first hole, then BytesMissing:
        what comes after a hole keeps its offsets only in the API's Range answers, so it is not run together
        with what comes before."""
        holes: list[tuple[int, int]] = []
        if stream is None:
            pieces = self.read(view)
        else:
            holes = view.missing(0, view.size)
            pieces = self.read_stream(view, stream, 0, holes[0][0] if holes else view.size)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece
        if holes:
            raise view.missing_error(holes)

    async def chunks(self, view: LogView, part: Part, _depth: int = 0) -> list[index.Chunk]:
        """The chunk index of one part (a store part's checked against the manifest: shipper/format/archive.py).
        One that went away (pruned, replaced) is read from a fresh view, cut to the part's range."""
        try:
            if part.kind in ("spool", "open"):
                assert view.spool_dir is not None
                return await asyncio.to_thread(spool_chunks, view.spool_dir, part)
            if part.kind not in WHOLE_KINDS:
                return await self.chained.chunks(view.task, view.host, part)
            return await self.whole.chunks(view.task, view.host, part)
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
        if now.kind == part.kind and now.kind in STORE_KINDS and self._key(fresh, now) == self._key(view, part):
            key = whole.index_key(view.task, view.host, part) if part.kind in WHOLE_KINDS else self._key(view, part)
            gone = IntegrityError(key, "missing from the store, though the manifest names it")
            self.note(gone)
            raise gone
        return [c for c in await self.chunks(fresh, now, _depth + 1) if c.offset >= part.offset and c.end <= part.end]


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
    if part.entry is None or not _stored_zstd(part):
        return raw_frame_size(part.size)
    return part.entry.stored_size if part.kind in WHOLE_KINDS else chained.zstd_size(part.entry)


def _stored_zstd(part: Part) -> bool:
    """True for a zstd object of the store that can be sent as stored: one with block digests (a part
    of an older manifest is decompressed and checked whole, by read())."""
    return (part.kind in STORE_KINDS and part.entry is not None and part.entry.compression == "zstd"
            and (part.entry.blocks is not None or part.kind == "frames"))


async def read_all(store: Store, task: str, host: str, stream: str | None = None) -> bytes:
    """A whole log from the store, checked (tests and scripts)."""
    reader = Reader(store, hold_unchecked=True)
    view = await reader.view(task, host)
    return b"".join([bytes(p) async for p in reader.read_whole(view, stream)])
