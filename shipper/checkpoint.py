"""What the watcher uploads of one segment: checkpoints while it is open, the segment when it is sealed.

Two ways to checkpoint (`watch.checkpoint_deltas`):
- **deltas** (issue 14, docs/checkpoints.md): a checkpoint is one PUT of the bytes new since the last one
  (shipper/format/delta.py); no manifest names them, a restarted watcher finds the chain's end by LIST. A
  sealed segment that has deltas is stored as them plus a frame table (shipper/format/frames.py): no byte
  goes up twice.
- **prefix** (before issue 14; the default until every reader follows delta chains): the whole open
  segment each time, named by the manifest; the one before is deleted once the manifest moved on.
A segment sealed before its first checkpoint goes up whole either way (`.log.zst` + `.idx.zst`).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import zstandard

from shipper.format import delta, frames, index, names
from shipper.format.manifest import Checkpoint, Segment

from .logs import event
from .open_index import OpenChain as OpenChain
from .open_index import Records as Records
from .open_index import follows, read_records
from .retry import QuietLog
from .segment_read import read_at, read_prefix, read_whole, sha256_file
from .spool import SpoolLog
from .store import ObjectInfo, Store

if TYPE_CHECKING:
    from .watcher import LogState

log = logging.getLogger("logship.watcher")

DELTA_PIECE = 16 << 20  # a checkpoint with more new bytes than this goes up as several deltas (memory bound)
# Liveness in the store while a task is silent (issue 15) is a small object of its own, PUT by
# shipper/liveness_ship.py beside the deltas, never inside them — a silent task has no new bytes, so no
# delta, and a delta must stay "exactly these bytes" to be checked alone.


_follows = follows  # the name tests/test_checkpoint_delta.py checks it by

# (the record after the delta, its object, its frame-table row, the segment's running sha256 after it or None)
Encoded = tuple[int, bytes, frames.Frame, "hashlib._Hash | None"]


class Prepared(NamedTuple):
    """A checkpoint read, checked and encoded ahead (Uploads.prepare, in the watcher's local pass), for the
    chain as it was then: the records after its end, why they are not ones to send (or None), the first delta."""

    chain: OpenChain
    records: int
    new: Records
    problem: str | None
    first: Encoded | None


@dataclass
class Deltas:
    """Per log: deltas the store holds (from the listing at start and from our PUTs), and the open chain."""

    held: dict[int, dict[tuple[int, int], int]] = field(default_factory=dict)  # seq -> {(start, end): size}
    chain: OpenChain | None = None
    # Deltas of sealed segments that their seal's frame table does not name (or whole segments: all of
    # them): deleted after the manifest naming the segment is PUT (docs/checkpoints.md §7).
    off_chain: list[str] = field(default_factory=list)


class Uploads:
    """Checkpoints and seals of one watcher; counters go into the watcher's `stats`."""

    def __init__(self, store: Store, compression: str, stats: dict[str, int], *, deltas: bool, quiet: QuietLog
                 ) -> None:
        self.store = store
        self.compression = compression
        self.stats = stats
        self.deltas = deltas
        self._quiet = quiet
        for k in ("deltas", "delta_bytes", "checkpoint_bytes", "segment_bytes", "frames_bytes", "manifest_bytes",
                  "off_chain_deltas", "off_chain_deltas_deleted", "deltas_repaired"):
            stats.setdefault(k, 0)

    def _sent(self, kind: str, n: int) -> None:
        """Every body byte the watcher sends but query copies (query_copy_bytes) is in `bytes_uploaded`."""
        self.stats[kind] += n
        self.stats["bytes_uploaded"] += n

    async def put_manifest(self, key: str, data: bytes) -> None:
        await self.store.put(key, data)
        self._sent("manifest_bytes", len(data))

    # --- what the store holds, at start ------------------------------------------------------

    def learn(self, sl: SpoolLog, st: LogState, listing: list[ObjectInfo]) -> None:
        """Deltas of segments the manifest does not name yet: a chain to continue, or a segment to seal."""
        prefix = names.log_prefix(sl.task, sl.host)
        for o in listing:
            parsed = names.parse_delta_name(o.key[len(prefix):]) if o.key.startswith(prefix) else None
            if parsed is None or parsed[0] in st.segments or parsed[3] != self.compression:
                continue
            seq, start, end, _ = parsed
            st.deltas.held.setdefault(seq, {})[(start, end)] = o.size

    def continues(self, st: LogState, seq: int) -> bool:
        """Whether the open segment's index was checked up to the chain's end already (only new records
        need checking); otherwise the watcher checks it whole first (shipper/watcher/damage.py, open_index_ok)."""
        return self.deltas and st.deltas.chain is not None and st.deltas.chain.seq == seq

    # --- checkpoints --------------------------------------------------------------------------

    async def checkpoint(self, sl: SpoolLog, st: LogState, prepared: Prepared | None = None) -> None:
        """Upload what the open segment gained, so a dead host loses at most one interval; `prepared`: read
        ahead by `prepare` in this pass (used if the chain has not moved since)."""
        if self.deltas:
            await self._checkpoint_delta(sl, st, prepared)
        else:
            await self._checkpoint_prefix(sl, st)

    def prepare(self, sl: SpoolLog, st: LogState) -> Prepared | None:
        """In a thread: the usual checkpoint's read, check and encode (a chain this process continues), so
        that the watcher's pass over a running log is one thread hop (docs/checkpoints.md §12)."""
        chain = st.deltas.chain
        if not self.deltas or chain is None or sl.open != chain.seq:
            return None
        try:
            new, problem, first = self._next(names.spool_index(sl.dir, chain.seq, open_=True),
                                             names.spool_segment(sl.dir, chain.seq, open_=True), chain)
        except FileNotFoundError:
            return None  # sealed meanwhile: the checkpoint finds out again
        return Prepared(chain, chain.records, new, problem, first)

    async def _checkpoint_delta(self, sl: SpoolLog, st: LogState, prepared: Prepared | None) -> None:
        assert sl.open is not None
        seq = sl.open
        idx_path = names.spool_index(sl.dir, seq, open_=True)
        st.last_checkpoint = time.monotonic()
        chain = st.deltas.chain
        path = names.spool_segment(sl.dir, seq, open_=True)
        first: Encoded | None = None
        try:
            if chain is None or chain.seq != seq:
                recs = await asyncio.to_thread(read_records, idx_path, 0)
                if not recs.seq:
                    return
                chain = st.deltas.chain = self._continue(st, seq, recs)
                new = recs.after(chain.records)
                problem = follows(new, chain) if new.seq else None
            elif prepared is not None and prepared.chain is chain and prepared.records == chain.records:
                new, problem, first = prepared.new, prepared.problem, prepared.first  # read in the local pass
            else:  # the usual checkpoint: one thread hop (≈ 0.1 ms of CPU each) reads, checks and encodes
                new, problem, first = await asyncio.to_thread(self._next, idx_path, path, chain)
        except FileNotFoundError:
            return  # sealed meanwhile: the seal takes it from here
        if not new.seq:
            return
        if problem is not None:
            self._quiet.log(logging.ERROR, f"open {idx_path}", "%s: damaged index of the open segment (%s): no "
                            "checkpoint of it; it is checked and repaired when sealed", idx_path, problem)
            return
        sent = self.stats["delta_bytes"]
        try:
            await self._put_deltas(sl, st, seq, chain, new, path, first)
        except FileNotFoundError:
            return
        self.stats["checkpoints"] += 1
        event(log, "checkpoint", "{task}/{host}: checkpoint of open segment {seq} at {bytes} bytes ({stored_bytes} "
              "stored)", level=logging.DEBUG, task=sl.task, host=sl.host, seq=seq, bytes=chain.pos - chain.start,
              stored_bytes=self.stats["delta_bytes"] - sent)

    def _continue(self, st: LogState, seq: int, recs: Records) -> OpenChain:
        """Where the store's chain of segment `seq` ends, on chunk ends of our index (anything else the
        store holds under those names is not ours to continue)."""
        start, ends = recs.offset[0], recs.end
        offsets = set(recs.offset) | {ends[-1]}
        spans = [s for s in st.deltas.held.get(seq, {}) if s[0] in offsets and s[1] in offsets]
        links = frames.chain(spans, start)
        pos = links[-1][1] if links else start
        records = bisect.bisect_right(ends, pos) if links else 0
        # A chain from the segment's first byte hashes its bytes as they go: its seal reads none of them again.
        return OpenChain(seq, start, pos, records, recs.seq[records - 1] if records else 0,
                         sha=None if links else hashlib.sha256())

    def _next(self, idx_path: Path, path: Path, chain: OpenChain) -> tuple[Records, str | None, Encoded | None]:
        """The records after the chain's end, why they are not ones to checkpoint (or None), and their
        first delta when they are."""
        new = read_records(idx_path, chain.records)
        problem = follows(new, chain) if new.seq else None
        if not new.seq or problem is not None:
            return new, problem, None
        j = _cut(new, 0)
        return new, None, (j, *self._encode(path, chain.start, new, 0, j, chain.sha))

    async def _put_deltas(self, sl: SpoolLog, st: LogState, seq: int, chain: OpenChain, new: Records,
                          path: Path, first: Encoded | None = None) -> None:
        """PUT the records `new` (from the chain's end) as deltas of at most DELTA_PIECE bytes each (or of
        one record, when it alone is larger); `first`: the first of them, encoded already."""
        i, n = 0, len(new.seq)
        while i < n:
            if i == 0 and first is not None:
                j, blob, frame, sha = first
            else:
                j = _cut(new, i)
                blob, frame, sha = await asyncio.to_thread(self._encode, path, chain.start, new, i, j, chain.sha)
            key = names.delta_key(sl.task, sl.host, seq, frame.start, frame.end, self.compression)
            # found by LIST: never a cut body (docs/checkpoints.md §8); checked by the row's sha256 where it can be
            await self.store.put(key, blob, checked=True, sha256=bytes.fromhex(frame.sha256))
            st.deltas.held.setdefault(seq, {})[(frame.start, frame.end)] = len(blob)
            chain.frames.append(frame)
            chain.pos, chain.records, chain.last_chunk = frame.end, chain.records + j - i, new.seq[j - 1]
            chain.sha = sha
            self.stats["deltas"] += 1
            self._sent("delta_bytes", len(blob))
            i = j

    def _encode(self, path: Path, seg_start: int, recs: Records, i: int, j: int, sha: hashlib._Hash | None = None
                ) -> tuple[bytes, frames.Frame, hashlib._Hash | None]:
        """The delta of records [i, j) of `recs`: their bytes of the log at `path`, their index as read; and
        `sha` (the segment's bytes before them) with them (a copy: the chain takes it once the delta is PUT)."""
        start, end = recs.offset[i], recs.end[j - 1]
        with open(path, "rb") as f:
            data = read_at(f.fileno(), end - start, start - seg_start)  # this thread's buffer: used before we return
        if len(data) < end - start:
            raise FileNotFoundError(path)  # cannot happen with an intact spool; skip this round
        raw_index = recs.raw[i * index.RECORD_SIZE:j * index.RECORD_SIZE]
        blob = delta.encode(start, raw_index, data, self.compression)
        head = delta.parse_header(path.name, blob)
        if sha is not None:
            sha = sha.copy()
            sha.update(data)
        return blob, frames.Frame(start, end, len(blob), head.data_offset, sum(recs.lines[i:j]),
                                  hashlib.sha256(blob).hexdigest()), sha

    async def _checkpoint_prefix(self, sl: SpoolLog, st: LogState) -> None:
        assert sl.open is not None
        seq = sl.open
        try:
            raw_idx = await asyncio.to_thread(index.read_raw, names.spool_index(sl.dir, seq, open_=True))
        except FileNotFoundError:
            return  # sealed meanwhile: the next pass uploads it whole
        st.last_checkpoint = time.monotonic()
        chunks = list(index.unpack(raw_idx))
        if not chunks:
            return
        raw_size = chunks[-1].end - chunks[0].offset
        if st.checkpoint and (st.checkpoint.seq, st.checkpoint.raw_size) == (seq, raw_size):
            return
        log_path = names.spool_segment(sl.dir, seq, open_=True)
        try:
            sha, blob, stored = await asyncio.to_thread(read_prefix, log_path, raw_size, self.compression)
        except FileNotFoundError:
            return
        idx_blob = raw_idx
        if self.compression == "zstd":
            idx_blob = zstandard.ZstdCompressor(level=3).compress(raw_idx)
        key, idx_key = names.checkpoint_keys(sl.task, sl.host, seq, raw_size, self.compression)
        await self.store.put(key, blob)
        await self.store.put(idx_key, idx_blob)
        self._sent("checkpoint_bytes", len(blob) + len(idx_blob))
        if st.checkpoint:
            st.stale_keys += prefix_keys(sl, st.checkpoint)
        st.checkpoint = Checkpoint.build(seq, chunks, len(blob), len(idx_blob), sha, self.compression,
                                         stored=stored, index_sha256=hashlib.sha256(idx_blob).hexdigest())
        st.dirty = True
        self.stats["checkpoints"] += 1
        event(log, "checkpoint", "{task}/{host}: checkpoint of open segment {seq} at {bytes} bytes ({stored_bytes} "
              "stored)", level=logging.DEBUG, task=sl.task, host=sl.host, seq=seq, bytes=raw_size,
              stored_bytes=len(blob) + len(idx_blob))

    # --- the seal -----------------------------------------------------------------------------

    async def seal(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        """Upload sealed segment `seq`: as the rest of its deltas plus a frame table when the store holds
        deltas of it, else whole. Records its manifest entry in `st.segments` (committed later)."""
        t0 = time.monotonic()
        log_path, idx_path = names.spool_segment(sl.dir, seq), names.spool_index(sl.dir, seq)
        listed: list[tuple[tuple[int, int] | None, str]] = []
        if self.deltas:
            listed = await self._list_deltas(sl, st, seq)
        if self.deltas and st.deltas.held.get(seq):
            entry, kept = await self._seal_frames(sl, st, seq, log_path, idx_path)
            if entry is not None:
                self._off_chain(st, listed, kept)
                self._sealed(sl, st, seq, entry, t0)
                return
        prepared = await asyncio.to_thread(read_whole, log_path, idx_path, self.compression)
        if prepared is None:  # an empty segment (an agent that died before writing): nothing to keep
            return
        chunks, sha, blob, idx_blob, stored = prepared
        key = names.segment_key(sl.task, sl.host, seq, self.compression)
        if blob is None:
            await self.store.put_file(key, log_path)
        else:
            await self.store.put(key, blob)
        await self.store.put(names.index_key(sl.task, sl.host, seq, self.compression), idx_blob)
        entry = Segment.build(seq, chunks, len(blob) if blob is not None else stored.size, len(idx_blob), sha,
                              self.compression, stored=stored.fields(),
                              index_sha256=hashlib.sha256(idx_blob).hexdigest())
        self._sent("segment_bytes", entry.stored_size + entry.index_size)
        self._off_chain(st, listed, set())
        self._sealed(sl, st, seq, entry, t0)

    async def _list_deltas(self, sl: SpoolLog, st: LogState, seq: int) -> list[tuple[tuple[int, int] | None, str]]:
        """The deltas of segment `seq` the store holds now, by span (one LIST at its seal): those this
        process never saw (a dead watcher's PUT that landed after our listing at start) join the chain's
        candidates, and whatever the seal does not keep is deleted after its commit (§7)."""
        listed: list[tuple[tuple[int, int] | None, str]] = []  # (span, key); None: never on our chain
        held = st.deltas.held.setdefault(seq, {})
        prefix = names.log_prefix(sl.task, sl.host)
        for o in await self.store.list(names.delta_prefix(sl.task, sl.host, seq)):
            parsed = names.parse_delta_name(o.key[len(prefix):]) if o.key.startswith(prefix) else None
            if parsed is None or parsed[0] != seq:
                continue
            ours = parsed[3] == self.compression  # else a restart with another store.compression left it
            listed.append(((parsed[1], parsed[2]) if ours else None, o.key))
            if ours:
                held.setdefault((parsed[1], parsed[2]), o.size)
        if not held:
            del st.deltas.held[seq]
        return listed

    def _off_chain(self, st: LogState, listed: list[tuple[tuple[int, int] | None, str]],
                   kept: set[tuple[int, int]]) -> None:
        """Note the listed deltas the sealed segment does not keep, for the commit to delete."""
        gone = [k for span, k in listed if span not in kept]
        self.stats["off_chain_deltas"] += len(gone)
        st.deltas.off_chain += gone

    def _sealed(self, sl: SpoolLog, st: LogState, seq: int, entry: Segment, t0: float) -> None:
        st.segments[seq] = entry
        st.dirty = True
        self.stats["segments_uploaded"] += 1
        self.stats["raw_bytes_uploaded"] += entry.raw_size
        # stored_bytes: for a segment stored as its deltas, most went up with its checkpoints (`frames` of them)
        event(log, "segment_shipped", "{task}/{host}: segment {seq} shipped, {bytes} bytes ({stored_bytes} "
              "stored) in {seconds:.3f} s", task=sl.task, host=sl.host, seq=seq, bytes=entry.raw_size,
              stored_bytes=entry.stored_size + entry.index_size, seconds=round(time.monotonic() - t0, 3),
              frames=entry.frames or 0)
        if st.deltas.chain is not None and st.deltas.chain.seq == seq:
            st.deltas.chain = None

    async def _seal_frames(self, sl: SpoolLog, st: LogState, seq: int, log_path: Path, idx_path: Path
                           ) -> tuple[Segment | None, set[tuple[int, int]]]:
        """The segment as its chain of deltas: the deltas after the chain's end, then the frame table.
        Deltas this process did not PUT (a restart) are encoded again from the spool — deterministic, so
        the same bytes as the store's; one whose size differs is damaged and PUT again. None: no chain."""
        # columns: a Chunk per record costs ≈ 2 µs (12 ms a 16 MiB segment of 300 KB/s); made in the thread that
        # reads them, as they are ≈ 0.17 µs a record still (10 ms of the event loop for a 600 s segment of 10 KB/s)
        recs = await asyncio.to_thread(read_records, idx_path, 0)
        raw = recs.raw
        if not recs.seq:
            return None, set()
        held = st.deltas.held.get(seq, {})
        chain = st.deltas.chain if st.deltas.chain is not None and st.deltas.chain.seq == seq else None
        known = {(f.start, f.end): f for f in (chain.frames if chain else [])}
        start, ends = recs.offset[0], recs.end
        offsets = set(recs.offset) | {ends[-1]}
        links = frames.chain([s for s in held if s[0] in offsets and s[1] in offsets], start)
        if not links:
            return None, set()
        out: list[frames.Frame] = []
        for span in links:
            f = known.get(span)
            if f is None:
                a, b = bisect.bisect_right(ends, span[0]), bisect.bisect_right(ends, span[1])
                blob, again, _ = await asyncio.to_thread(self._encode, log_path, start, recs, a, b)
                f = again
                if len(blob) != held[span]:  # not what we would write: damaged, or cut by a crash
                    await self.store.put(names.delta_key(sl.task, sl.host, seq, *span, self.compression), blob,
                                         checked=True, sha256=bytes.fromhex(f.sha256))
                    self.stats["deltas_repaired"] += 1
                    self._sent("delta_bytes", len(blob))
            out.append(f)
        rest = recs.after(bisect.bisect_right(ends, links[-1][1]))
        if rest.seq:
            tail = OpenChain(seq, start, links[-1][1], 0, 0, sha=_hashed(chain, links[-1][1]))
            await self._put_deltas(sl, st, seq, tail, rest, log_path)
            out += tail.frames
            chain = tail
        table = frames.dumps(seq, out)
        await self.store.put(names.frames_key(sl.task, sl.host, seq), table, checked=True)
        self._sent("frames_bytes", len(table))
        hashed = _hashed(chain, ends[-1])
        sha = (hashed.hexdigest() if hashed is not None
               else await asyncio.to_thread(sha256_file, log_path, ends[-1] - start))
        # The entry needs the first and last records and the lines of all: not a Chunk per record.
        first, last = (index.Chunk(*index.RECORD.unpack_from(raw, at)) for at in (0, len(recs.raw) - index.RECORD_SIZE))
        entry = Segment.build(seq, [first, last], sum(f.stored_size for f in out),
                              sum(f.data_offset - delta.HEADER_MIN for f in out), sha, self.compression,
                              frames=len(out), frames_sha256=hashlib.sha256(table).hexdigest())
        return dataclasses.replace(entry, lines=sum(recs.lines)), {(f.start, f.end) for f in out}


def prefix_keys(sl: SpoolLog, ckpt: Checkpoint) -> list[str]:
    """The objects of a prefix checkpoint named by a manifest entry."""
    return list(ckpt.keys(sl.task, sl.host))


def _cut(new: Records, i: int) -> int:
    """Where the delta of `new` from record i ends: at most DELTA_PIECE bytes, at least one record (the
    ends rise: checked by follows, or by the seal's check of a sealed index)."""
    return bisect.bisect_right(new.end, new.offset[i] + DELTA_PIECE, i + 1)


def _hashed(chain: OpenChain | None, pos: int) -> hashlib._Hash | None:
    """The sha256 of a segment's bytes up to `pos`, when this process's chain hashed them all as it sent them."""
    return chain.sha if chain is not None and chain.sha is not None and chain.pos == pos else None

