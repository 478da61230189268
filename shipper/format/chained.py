"""Reading what delta checkpoints store (docs/checkpoints.md §6): the chain of deltas of a running log's open
segment(s), found by one LIST after the manifest's last segment, and sealed segments stored as their deltas
(parts of kind "frames", read through their frame table).

Every object is checked before a byte of it is served: a chain delta alone (delta.parse: its name, header,
sizes, checksums, index cover, and its size as listed); a frame also against its table row (size, sha256),
the table against the manifest entry (frames_sha256, sizes). A chain delta that fails its checks, or went
away, ends the chain before it: the log is served up to there, and the failure is noted once. A damaged
frame of a sealed segment is an IntegrityError, as a damaged whole segment is.

Deltas are small (one checkpoint interval of output) and immutable (one key, one content): checked ones
are kept in a cache bounded in bytes, so the deltas a view checked are served without a second GET, and
frame tables are kept by what binds them to the manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

from shipper.errors import ObjectNotFound
from shipper.format import delta, frames, index, names
from shipper.format.archive import IntegrityError
from shipper.format.delta import Delta
from shipper.format.manifest import Manifest, Segment
from shipper.format.parts import PIECE, Part, store_parts
from shipper.store import ObjectInfo, Store

AHEAD = 4  # frames requested before their turn (a slow log's segment is ~120 small objects: latency bound)
CHECK_AT_ONCE = 8  # chain deltas a view GETs and checks at once
CACHE_BYTES = 64 << 20  # log bytes of checked deltas kept
CHECKED = 100_000  # (key, size) of deltas known good or bad, kept after their bytes left the cache
TABLES = 4096  # frame tables kept
LIST_PAGE = 1000

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class Chained:
    """The frames and chain deltas of one reader (shipper/format/reader.py), with their caches."""

    def __init__(self, store: Store, note: Callable[[IntegrityError], None]) -> None:
        self.store = store
        self.note = note
        self._cache: OrderedDict[tuple[str, int], tuple[Delta, str]] = OrderedDict()  # -> (delta, sha256)
        self._bytes = 0
        self._fetching: dict[tuple[str, int], asyncio.Future[tuple[Delta, str]]] = {}
        self._verdicts: OrderedDict[tuple[str, int], bool] = OrderedDict()  # chain deltas: passed their checks?
        self._tables: OrderedDict[tuple[str, int, int, int], list[frames.Frame]] = OrderedDict()

    # --- planning: the store's parts of a running log --------------------------------------------

    async def plan(self, doc: Manifest) -> tuple[list[Part], str]:
        """The store's parts of a running log (its segments, then the chain of deltas after them, or a prefix
        checkpoint of an older watcher, whichever reaches further), and the manifest's etag as listed."""
        parts = store_parts(doc)
        last = doc.segments[-1].seq if doc.segments else 0
        listing = await self._listing(doc.task, doc.host, _after_segment(doc))
        pos = max([s.end for s in doc.segments] + [d.end for d in doc.dropped], default=0)
        chain = await self._chain(doc.task, doc.host, listing, pos, last + 1)
        if chain and parts and parts[-1].kind == "checkpoint":
            if chain[-1].end > parts[-1].end:
                parts.pop()
            else:
                chain = []
        return parts + chain, _manifest_tag(doc.task, doc.host, listing)

    async def grown(self, task: str, host: str, doc: Manifest, parts: Sequence[Part]) -> tuple[list[Part], str]:
        """The chain's deltas after `parts` (a view of a running log read from the store alone), from one LIST
        after its last delta, and the manifest's etag as listed (a follower's poll: Reader.refresh)."""
        last = parts[-1] if parts else None
        if last is not None and last.kind == "delta":
            after, min_seq = last.key, last.seq
        else:
            after, min_seq = _after_segment(doc), (doc.segments[-1].seq if doc.segments else 0) + 1
        listing = await self._listing(task, host, after)
        new = await self._chain(task, host, listing, last.end if last is not None else 0, min_seq)
        return new, _manifest_tag(task, host, listing)

    async def _listing(self, task: str, host: str, after: str) -> list[ObjectInfo]:
        prefix, out = names.log_prefix(task, host), []
        while True:
            page = await self.store.list_page(prefix, after, LIST_PAGE)
            out += page
            if len(page) < LIST_PAGE:
                return out
            after = page[-1].key

    async def _chain(self, task: str, host: str, listing: list[ObjectInfo], pos: int, min_seq: int) -> list[Part]:
        """The listed deltas of segments from `min_seq` that continue the log from `pos`, segment after segment
        (across a seal the manifest does not show yet), up to the first that fails its checks."""
        prefix = names.log_prefix(task, host)
        by_seq: dict[int, dict[tuple[int, int], ObjectInfo]] = {}
        for o in listing:
            parsed = names.parse_delta_name(o.key[len(prefix):]) if o.key.startswith(prefix) else None
            if parsed is not None and parsed[0] >= min_seq:
                by_seq.setdefault(parsed[0], {}).setdefault((parsed[1], parsed[2]), o)
        links = []
        for seq in sorted(by_seq):
            spans = by_seq[seq]
            for start, end in frames.chain(spans, pos):
                o = spans[(start, end)]
                links.append(Part(seq, start, end - start, "delta", key=o.key, stored=o.size))
                pos = end
        return await self._checked(links)

    async def _checked(self, links: list[Part]) -> list[Part]:
        gate = asyncio.Semaphore(CHECK_AT_ONCE)

        async def check(p: Part) -> bool:
            known = self._verdicts.get((p.key, p.stored))
            if known is not None:
                return known
            async with gate:
                try:
                    await self.chain_delta(p)
                    ok = True
                except IntegrityError as exc:
                    self.note(exc)
                    ok = False
                except ObjectNotFound:
                    return False  # deleted since the listing (gc): not damaged, just gone
            _remember(self._verdicts, (p.key, p.stored), ok, CHECKED)
            return ok

        results = await asyncio.gather(*map(check, links))
        return links[:results.index(False)] if False in results else links

    # --- the objects -----------------------------------------------------------------------------

    async def chain_delta(self, part: Part) -> Delta:
        """A chain delta, checked alone and against its listed size."""
        return await self._delta(part.key, part.stored, None)

    async def _delta(self, key: str, size: int, sha256: str | None) -> Delta:
        hit = self._cache.get((key, size))
        if hit is None:
            # One GET however many views and readers want it at once (followers that wake together), shielded so
            # that a reader who goes away does not cancel it under the others.
            fetch = self._fetching.get((key, size))
            if fetch is None:
                fetch = self._fetching[(key, size)] = asyncio.ensure_future(self._fetch(key, size))
                fetch.add_done_callback(lambda f: self._fetched(key, size, f))
            hit = await asyncio.shield(fetch)
        else:
            self._cache.move_to_end((key, size))
        if sha256 is not None and hit[1] != sha256:
            raise IntegrityError(key, "not the object its segment's frame table names (sha256)")
        return hit[0]

    def _fetched(self, key: str, size: int, f: asyncio.Future[tuple[Delta, str]]) -> None:
        self._fetching.pop((key, size), None)
        if not f.cancelled():
            f.exception()  # retrieved: its waiters (if any are left) raise it themselves

    async def _fetch(self, key: str, size: int) -> tuple[Delta, str]:
        """A delta from the store, checked alone and against its listed size, and cached."""
        blob = await self.store.get(key)
        if len(blob) != size:
            raise IntegrityError(key, f"{len(blob)} bytes, not the {size} it was listed or tabled with")
        try:
            d = delta.parse(key, blob)
        except delta.DeltaDamaged as exc:
            raise IntegrityError(key, exc.detail.removeprefix(f"{key}: "), exc.hint) from None
        hit = (d, hashlib.sha256(blob).hexdigest())
        self._bytes += len(d.data)
        _remember(self._cache, (key, size), hit, None)
        while self._bytes > CACHE_BYTES and len(self._cache) > 1:
            self._bytes -= len(self._cache.popitem(last=False)[1][0].data)
        return hit

    async def table(self, task: str, host: str, entry: Segment) -> list[frames.Frame]:
        """The frame table of a segment stored as its deltas, checked against its manifest entry."""
        assert entry.frames is not None and entry.frames_sha256 is not None
        ident = (entry.frames_sha256, entry.seq, entry.offset, entry.raw_size)
        hit = self._tables.get(ident)
        if hit is not None:
            return hit
        key = names.frames_key(task, host, entry.seq)
        try:
            table = await frames.read_table(self.store, task, host, entry)
        except frames.FramesDamaged as exc:
            raise IntegrityError(key, exc.detail.removeprefix(f"{key}: "), exc.hint) from None
        except ObjectNotFound:
            raise IntegrityError(key, "missing from the store, though the manifest names it") from None
        if (sum(f.stored_size for f in table), sum(f.data_offset - delta.HEADER_MIN for f in table)) != \
                (entry.stored_size, entry.index_size):
            raise IntegrityError(key, "its frames' sizes are not the manifest's stored_size and index_size")
        _remember(self._tables, ident, table, TABLES)
        return table

    def _frame_key(self, task: str, host: str, entry: Segment, f: frames.Frame) -> str:
        return frames.frame_key(task, host, entry.seq, f, entry.compression)

    async def _frame(self, task: str, host: str, entry: Segment, f: frames.Frame) -> Delta:
        key = self._frame_key(task, host, entry, f)
        try:
            return await self._delta(key, f.stored_size, f.sha256)
        except ObjectNotFound:
            raise IntegrityError(key, "missing from the store, though its segment's frame table names it") from None

    # --- reading ---------------------------------------------------------------------------------

    async def read(self, task: str, host: str, part: Part, a: int, b: int) -> AsyncGenerator[bytes, None]:
        """Bytes [a, b) of a "frames" or "delta" part (offsets within the part): only the frames holding them
        are read, the next ones requested before their turn."""
        if part.kind == "delta":
            d = await self.chain_delta(part)
            for piece in _pieces(d.data, part.skip + a, part.skip + b):
                yield piece
            return
        entry = part.entry
        assert entry is not None
        lo, hi = part.offset + a, part.offset + b
        todo = [f for f in await self.table(task, host, entry) if f.end > lo and f.start < hi]
        async for f, d in _ahead(todo, lambda f: self._frame(task, host, entry, f)):
            for piece in _pieces(d.data, max(lo, f.start) - f.start, min(hi, f.end) - f.start):
                yield piece

    async def chunks(self, task: str, host: str, part: Part) -> list[index.Chunk]:
        if part.kind == "delta":
            return [c for c in (await self.chain_delta(part)).chunks if c.offset >= part.offset]
        entry = part.entry
        assert entry is not None
        out: list[index.Chunk] = []
        async for _, d in _ahead(await self.table(task, host, entry), lambda f: self._frame(task, host, entry, f)):
            out += d.chunks
        return out

    async def zstd(self, task: str, host: str, part: Part) -> AsyncGenerator[bytes, None]:
        """A zstd "frames" part as stored: each frame's zstd data (after its header and index), checked against
        its table row; concatenated they are one zstd stream of the segment (RFC 8878)."""
        entry = part.entry
        assert entry is not None and entry.frames is not None
        table = await self.table(task, host, entry)

        async def blob(f: frames.Frame) -> bytes:
            key = self._frame_key(task, host, entry, f)
            try:
                data = await self.store.get(key)
            except ObjectNotFound:
                raise IntegrityError(key, "missing from the store, though its frame table names it") from None
            if len(data) != f.stored_size or hashlib.sha256(data).hexdigest() != f.sha256:
                raise IntegrityError(key, "not the object its segment's frame table names (size or sha256)")
            return data

        async for f, data in _ahead(table, blob):
            yield data[f.data_offset:]


def zstd_size(entry: Segment) -> int:
    """Bytes of Chained.zstd() of a segment stored as its deltas (Chained.table checks the sums)."""
    assert entry.frames is not None
    return entry.stored_size - entry.index_size - entry.frames * delta.HEADER_MIN


async def _ahead(items: Sequence[frames.Frame], fetch: Callable[[frames.Frame], Awaitable[T]]
                 ) -> AsyncGenerator[tuple[frames.Frame, T], None]:
    """(item, fetch(item)) in order, with up to AHEAD fetches in flight before their turn."""
    pending: deque[tuple[frames.Frame, asyncio.Future[T]]] = deque()
    i = 0
    try:
        while i < len(items) or pending:
            while i < len(items) and len(pending) <= AHEAD:
                pending.append((items[i], asyncio.ensure_future(fetch(items[i]))))
                i += 1
            f, fut = pending.popleft()
            yield f, await fut
    finally:
        for _, fut in pending:
            fut.cancel()
        await asyncio.gather(*(fut for _, fut in pending), return_exceptions=True)


def _pieces(data: bytes, a: int, b: int) -> list[bytes]:
    return [data[i:min(i + PIECE, b)] for i in range(a, b, PIECE)]


def _remember(cache: OrderedDict[K, V], key: K, value: V, bound: int | None) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if bound is not None and len(cache) > bound:
        cache.popitem(last=False)


def _after_segment(doc: Manifest) -> str:
    """Where a LIST for the deltas after the manifest's last segment starts: past every key of that
    segment (`~` sorts after each of its names), or at the log's start."""
    return f"{names.log_prefix(doc.task, doc.host)}{doc.segments[-1].seq:08d}.~" if doc.segments else ""


def _manifest_tag(task: str, host: str, listing: list[ObjectInfo]) -> str:
    key = names.manifest_key(task, host)
    return next((o.etag for o in listing if o.key == key), "")
