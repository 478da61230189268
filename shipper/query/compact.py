"""Compaction: the small query copies of a date merged into fewer, larger parts (docs/query.md).

A run (`logship compact`, or `logship watch` every `compact.every`) first finishes earlier runs — deletes
what their parts replace once no query can still be reading it — then merges, per date, the small copies
of finished logs and the small parts into new parts under `compact/`. Nothing is ever changed in place:
a part is written whole, then counts for every reader at once (shipper/query/lineset.py); what it replaces is
deleted `2 × query.grace_seconds` later. Several compactions may run at once (one per watcher): when two
merge the same object, the newer part wins and the other is dropped whole. Each run ends by publishing what
`lines` reads for outside engines (shipper/query/published.py), and deletes nothing such a reader may still use.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from shipper.config import Config
from shipper.errors import ObjectNotFound
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.query import copies, lineset, published
from shipper.query.lineset import Part, Snapshot
from shipper.store import ObjectInfo, Store

log = logging.getLogger("logship.compact")

FETCH_CONCURRENCY = 16
FOOTER_GUESS = 64 << 10  # one ranged GET of a part's last bytes usually holds its whole footer
# A part is written at most this share of query.grace_seconds after the listing it was planned from:
# a compaction running at the same time can only produce a competing part that early (lineset.resolve).
PLAN_AGE_SHARE = 0.5
# Strings as strings: a part holds thousands of tasks, more than the copies' int8 dictionaries hold.
PART_SCHEMA = pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f
                         for f in copies.SCHEMA])
SORT = [("task", "ascending"), ("host", "ascending"), ("seq", "ascending"), ("line_no", "ascending")]


@dataclass(frozen=True)
class Settings:
    small_bytes: int = 4 << 20  # copies and parts smaller than this are merged
    part_bytes: int = 32 << 20  # a new part holds inputs of about this many bytes
    grace_s: float = 60.0  # query.grace_seconds: the longest a query may go on reading an object

    @classmethod
    def of(cls, cfg: Config) -> Settings:
        return cls(cfg.compact.small_bytes, cfg.compact.part_bytes, cfg.query.grace_seconds)


@dataclass
class Stats:
    dates: int = 0
    parts_written: int = 0
    inputs_merged: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    waiting: int = 0  # parts whose replaced objects wait for the grace period

    def add(self, other: Stats) -> None:
        for k, v in vars(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class State:
    """The store's compaction state from one listing of compact/ and deleting/: parts and the snapshot."""

    parts: dict[str, Part]
    done: set[str]  # parts whose `.done` exists
    orphans: list[str]  # `.done` objects whose part is gone
    snapshot: Snapshot
    listed_at: float  # time.monotonic() of the listing
    sizes: dict[str, int] = field(default_factory=dict)  # key -> size, of everything listed


def placeholder() -> bytes:
    """The rowless copy at names.LINES_PLACEHOLDER (deterministic: the same bytes every time)."""
    sink = io.BytesIO()
    pq.write_table(copies.SCHEMA.empty_table(), sink, compression=copies.CODEC)
    return sink.getvalue()


class Deleter:
    """Deletes objects and counts them (gc hands its own to its Compactor: one count covers both)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._placed = False
        self.objects = 0
        self.bytes = 0

    async def delete(self, keys: Iterable[str], sizes: dict[str, int] | None = None) -> None:
        keys = list(keys)
        if not keys:
            return
        if not self._placed and any(k.startswith(names.LINES_PREFIX) for k in keys):
            await self.store.put(names.LINES_PLACEHOLDER, placeholder())  # lines/ never empties again
            self._placed = True
        await self.store.delete(keys)
        self.objects += len(keys)
        self.bytes += sum((sizes or {}).get(k, 0) for k in keys)


async def read_state(store: Store, cache: dict[str, Part] | None = None) -> State:
    """List compact/ and deleting/, read new parts' footers (`cache` keeps them: parts never change)."""
    cache = {} if cache is None else cache
    listed_at = time.monotonic()
    objects = await store.list(names.COMPACT_PREFIX)
    marker_objs = await store.list(names.DELETING_PREFIX)
    sizes = {o.key: o.size for o in objects}
    part_objs = [o for o in objects if names.parse_compact_key(o.key)]
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def meta(o: ObjectInfo) -> Part | None:
        if o.key in cache:
            return cache[o.key]
        async with sem:
            try:
                part = await read_part_meta(store, o.key, o.size)
            except ObjectNotFound:
                return None  # deleted meanwhile
            except ValueError as exc:
                log.warning("%s is not a logship part, left alone (and never read by queries): %s", o.key, exc)
                return None
        cache[o.key] = part
        return part

    for stale in cache.keys() - {o.key for o in part_objs}:
        del cache[stale]  # deleted parts: forget them
    parts = {p.key: p for p in await asyncio.gather(*map(meta, part_objs)) if p is not None}
    done_keys = {o.key.removesuffix(names.DONE_SUFFIX) for o in objects if o.key.endswith(names.DONE_SUFFIX)}
    done = done_keys & parts.keys()
    orphans = [names.done_key(k) for k in sorted(done_keys - parts.keys())]
    gone = {lineset.log_id(*m) for o in marker_objs if (m := names.parse_deleting_key(o.key))}
    return State(parts, done, orphans, lineset.resolve(parts.values(), done, gone), listed_at, sizes)


async def read_part_meta(store: Store, key: str, size: int) -> Part:
    """A part's footer entry, from its last bytes (one ranged GET, two for a large footer)."""
    tail = await store.get(key, max(0, size - FOOTER_GUESS), size)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise ValueError(f"{key} is not a Parquet file")
    footer = struct.unpack("<I", tail[-8:-4])[0] + 8
    if footer > len(tail):
        tail = await store.get(key, size - footer, size)
    md = pq.read_metadata(io.BytesIO(b"PAR1" + tail[-footer:]))  # the footer alone describes the file
    value = (md.metadata or {}).get(lineset.META_KEY.encode())
    if value is None:
        raise ValueError(f"{key} has no {lineset.META_KEY} entry in its footer")
    return lineset.parse_meta(key, size, value)


class Compactor:
    """Runs compaction over one store. Keeps the footers it read (parts never change)."""

    def __init__(self, store: Store, settings: Settings, deleter: Deleter | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.settings = settings
        self.deleter = deleter or Deleter(store)
        self.clock = clock
        self.parts: dict[str, Part] = {}
        self.publisher = published.Publisher(store, settings.grace_s)

    @property
    def due_after_ns(self) -> int:
        """How long after a part is written what it replaces may be deleted: a competing part appears at
        most one grace period after it, and a query that saw the old objects ends one grace period later."""
        return int(2 * self.settings.grace_s * 1e9)

    async def state(self) -> State:
        return await read_state(self.store, self.parts)

    async def run(self, *, merge: bool = True, purge: Iterable[str] = ()) -> Stats:
        """One run: finish what is due, then merge (and rewrite parts holding the logs in `purge`)."""
        stats = Stats()
        st = await self.state()
        stats.add(await self.finish(st))
        purge = set(purge)
        if merge or purge:
            st = await self.state()
            stats.add(await self.merge(st, purge, small=merge))
        await self.publish()
        return stats

    async def publish(self) -> str | None:
        """Publish what `lines` reads now, for outside engines (shipper/query/published.py); the key written, if
        the newest snapshot did not already say the same."""
        listed_ns = self.clock()
        st = await self.state()
        return await self.publisher.publish(st.snapshot, listed_ns, st.listed_at, self.clock())

    # --- finishing: delete what counting parts replace, once it is safe -----------------------------

    async def finish(self, st: State) -> Stats:
        stats = Stats()
        now = self.clock()
        before = (self.deleter.objects, self.deleter.bytes)
        sizes = dict(st.sizes)
        listed: set[str] = set()
        in_use: list[published.Published] | None = None  # the published snapshots readers may still use

        async def read_by_outside(keys: Iterable[str]) -> bool:
            nonlocal in_use
            if in_use is None:
                in_use = await self.publisher.in_use(now)
            return any(s.reads(k) for s in in_use for k in keys)

        for p in st.snapshot.shown:
            if p.key in st.done:
                continue
            if now - p.created_ns < self.due_after_ns or await read_by_outside(p.inputs | p.covers):
                stats.waiting += 1
                continue
            doomed = p.inputs | p.covers | {names.done_key(k) for k in p.inputs}
            sizes.update(await self._sizes([k for k in doomed if k not in sizes], listed))
            await self.deleter.delete(sorted(k for k in doomed if k in sizes), sizes)
            await self.store.put(names.done_key(p.key), b"")
        # Parts that lost to a competing one, once no query can still read them.
        losers = [p.key for p in st.snapshot.losers
                  if now - p.created_ns >= self.due_after_ns and not await read_by_outside([p.key])]
        await self.deleter.delete([k for p in losers for k in (p, names.done_key(p)) if k in sizes], sizes)
        await self.deleter.delete(st.orphans, sizes)
        stats.objects_deleted = self.deleter.objects - before[0]
        stats.bytes_deleted = self.deleter.bytes - before[1]
        return stats

    async def _sizes(self, keys: list[str], listed: set[str]) -> dict[str, int]:
        """Which of `keys` exist, with their sizes: one listing per date partition (not yet `listed`)."""
        out: dict[str, int] = {}
        for prefix in sorted({"/".join(k.split("/")[:2]) + "/" for k in keys} - listed):
            out.update({o.key: o.size for o in await self.store.list(prefix)})
            listed.add(prefix)
        return out

    # --- merging -------------------------------------------------------------------------------

    async def merge(self, st: State, purge: set[str], *, small: bool = True) -> Stats:
        """Merge each date's small objects into parts (`small`); rewrite parts holding logs in `purge` without
        their lines."""
        stats = Stats()
        snap = st.snapshot
        by_date: dict[str, list[ObjectInfo]] = {}
        if small:
            originals = [o for o in await self.store.list(names.LINES_PREFIX) if names.parse_lines_key(o.key)]
            candidates = [o for o in originals if o.size < self.settings.small_bytes and o.key not in snap.hidden
                          and _log_of(o.key) not in snap.gone]
            complete = await self._complete_logs({_log_of(o.key) for o in candidates})
            for o in candidates:
                if _log_of(o.key) in complete:
                    by_date.setdefault(names.partition_date(o.key), []).append(o)
        purge_parts: dict[str, list[Part]] = {}
        for p in snap.shown:
            if p.logs & purge:
                purge_parts.setdefault(p.date, []).append(p)
            elif small and p.size < self.settings.part_bytes // 2:
                by_date.setdefault(p.date, []).append(ObjectInfo(p.key, p.size))
        for date in sorted(by_date.keys() | purge_parts.keys()):
            inputs = sorted(by_date.get(date, []) + [ObjectInfo(p.key, p.size) for p in purge_parts.get(date, [])],
                            key=lambda o: o.key)
            forced = {p.key for p in purge_parts.get(date, [])}
            groups = _groups(inputs, self.settings.part_bytes, forced)
            if not groups:
                continue
            stats.dates += 1
            for group in groups:
                done = await self._merge_group(date, group, st, purge | snap.gone)
                if done is None:
                    log.info("compaction stops here: its listing is older than %g s (half of query.grace_seconds); "
                             "the next run goes on", PLAN_AGE_SHARE * self.settings.grace_s)
                    return stats
                stats.add(done)
        return stats

    async def _complete_logs(self, logs: set[str]) -> set[str]:
        """Logs whose copies are all written and marked in the manifest: no copy of theirs is written again."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(log_id: str) -> str | None:
            task, host = log_id.split("/")
            async with sem:
                try:
                    doc = Manifest.load(await self.store.get(names.manifest_key(task, host)), task, host)
                except (ObjectNotFound, ValueError):
                    return None
            if doc.status not in (manifest.FINISHED, manifest.LOST):
                return None
            return log_id if all(s.query_copy for s in doc.segments) else None

        return {x for x in await asyncio.gather(*map(one, sorted(logs))) if x is not None}

    async def _merge_group(self, date: str, group: list[ObjectInfo], st: State, drop: set[str]) -> Stats | None:
        """Write one part replacing `group`; None if the plan got too old to write it (see PLAN_AGE_SHARE)."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(o: ObjectInfo) -> bytes | None:
            async with sem:
                try:
                    return await self.store.get(o.key)
                except ObjectNotFound:
                    return None

        blobs = await asyncio.gather(*(fetch(o) for o in group))
        if any(b is None for b in blobs):
            return Stats()  # something was deleted meanwhile: the next run plans again
        covers: set[str] = set()
        for o in group:
            part = st.parts.get(o.key)
            if part is None:
                covers.add(o.key)
            elif part.key not in st.done:
                covers |= part.covers
        covers = {k for k in covers if _log_of(k) not in drop}
        data, rows, logs = await asyncio.to_thread(_build, [b for b in blobs if b is not None], drop,
                                                   [o.key for o in group], covers)
        if self.settings.grace_s and time.monotonic() - st.listed_at > PLAN_AGE_SHARE * self.settings.grace_s:
            return None
        created = self.clock()
        key = names.compact_key(date, created, secrets.token_hex(8))
        await self.store.put(key, data)
        self.parts[key] = Part(key, created, frozenset(o.key for o in group), frozenset(covers), frozenset(logs),
                               len(data))
        log.info("compacted %d objects of %s into %s (%d rows, %d bytes)", len(group), date, key, rows, len(data))
        return Stats(parts_written=1, inputs_merged=len(group), rows_written=rows, bytes_written=len(data))


def _log_of(key: str) -> str:
    parsed = names.parse_lines_key(key)
    return lineset.log_id(parsed[1], parsed[2]) if parsed else ""


def _groups(inputs: list[ObjectInfo], part_bytes: int, forced: set[str]) -> list[list[ObjectInfo]]:
    """Runs of inputs of about part_bytes. A run of one object is left alone, unless it must be rewritten."""
    out: list[list[ObjectInfo]] = []
    run: list[ObjectInfo] = []
    size = 0
    for o in inputs:
        if run and size + o.size > part_bytes:
            out.append(run)
            run, size = [], 0
        run.append(o)
        size += o.size
    if run:
        out.append(run)
    return [g for g in out if len(g) > 1 or g[0].key in forced]


def _build(blobs: list[bytes], drop: set[str], inputs: list[str], covers: set[str]) -> tuple[bytes, int, set[str]]:
    """The new part: the inputs' rows but those of `drop`ped logs, sorted by task, host, seq, line_no."""
    # ≈ 1 ms a small file, mostly fixed costs: ParquetFile.read is ≈ 2x faster than read_table (no dataset
    # discovery), and two threads (it lets go of the GIL) ≈ 1.5x faster again
    with ThreadPoolExecutor(max_workers=2) as pool:
        tables = list(pool.map(_read_part, blobs))
    table = pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table()
    if drop and table.num_rows:
        ids = pc.binary_join_element_wise(table["task"], table["host"], "/")
        table = table.filter(pc.invert(pc.is_in(ids, pa.array(sorted(drop), pa.string()))))
    table = table.sort_by(SORT)
    logs = set()
    if table.num_rows:
        pairs = table.select(["task", "host"]).group_by(["task", "host"]).aggregate([])
        logs = {lineset.log_id(t, h) for t, h in zip(pairs["task"].to_pylist(), pairs["host"].to_pylist(), strict=True)}
    meta = {lineset.META_KEY: lineset.meta_value(inputs, covers, logs)}
    table = table.replace_schema_metadata(meta)
    text = table["line"].nbytes if table.num_rows else 0
    group_rows = max(1024, int(table.num_rows * copies.GROUP_BYTES / text)) if text else 1024
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=copies.CODEC, compression_level=copies.ZSTD_LEVEL,
                   use_dictionary=["task", "host", "stream"], write_statistics=_stats_columns(),
                   row_group_size=group_rows, write_page_index=False)
    return sink.getvalue(), table.num_rows, logs


def _read_part(blob: bytes) -> pa.Table:
    return pq.ParquetFile(pa.BufferReader(blob)).read(use_threads=False).cast(PART_SCHEMA)


def _stats_columns() -> list[str]:
    return [f.name for f in PART_SCHEMA if f.name != "line"]


# --- the command ---------------------------------------------------------------------------------


def main(cfg: Config, args: Any) -> int:
    """`logship compact [--no-wait]`."""
    return asyncio.run(_run(cfg, wait=not args.no_wait))


async def _run(cfg: Config, *, wait: bool) -> int:
    from shipper.store import open_store

    store = open_store(cfg.store)
    try:
        c = Compactor(store, Settings.of(cfg))
        stats = await c.run()
        if wait and stats.parts_written:
            if c.settings.grace_s:
                delay = c.due_after_ns / 1e9
                print(f"wrote {stats.parts_written} parts; waiting {delay:.0f} s (2 x query.grace_seconds) before "
                      "deleting what they replace, so no query in flight loses an object (--no-wait: the next "
                      "run deletes them)", flush=True)
                await asyncio.sleep(delay)
            stats.add(await c.run(merge=False))
    finally:
        await store.close()
    print(f"compacted {stats.inputs_merged} objects of {stats.dates} dates into {stats.parts_written} parts "
          f"({stats.rows_written} rows, {stats.bytes_written} bytes); deleted {stats.objects_deleted} objects "
          f"({stats.bytes_deleted} bytes)" + (f"; {stats.waiting} parts wait for the grace period" if stats.waiting
                                              else ""))
    return 0
