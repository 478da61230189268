"""Reading the catalog: one page of the listing, in requests that grow with the page, not the archive.

A page is the union of the records under head/ (one LIST, which also names the newest summary), the
summary's parts that may hold matching rows (newest start first, read only until the page is full), and
for `status=running` the running/ entries instead of the parts. Of each run the highest (phase, version)
row wins. Parts and summaries never change, so a long-lived reader (the API) keeps them: a warm page is
one LIST. A bad object costs only its own rows (counted in `bad`, logged once), never the listing.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from shipper.errors import ObjectNotFound
from shipper.format import manifest, names
from shipper.retry import QuietLog
from shipper.store import Store

from . import parts, rows
from .filters import Cursor, Filters, fixed_filter, later
from .parts import BadPart, PartFile, PartMeta
from .rows import BadRow, Row

log = logging.getLogger("logship.catalog")
_quiet = QuietLog(log)
FETCH_CONCURRENCY = 16
# Parts' Parquet bytes kept by a long-lived reader (a fleet's day of 20,000 runs is ≈ 0.5 MB: a month of
# days); a page decodes only the row groups and columns it needs (parts.PartFile) and keeps none of it.
CACHE_BYTES = 16 << 20
CHUNK = 256  # rows turned into Python objects at a time, in listing order
PARSED_KEYS = 20_000  # record and running keys whose rows a long-lived reader keeps (≈ 1,000 running in a fleet)


@dataclass
class Head:
    """One LIST of head/: the records (rows parsed) and the newest summary."""

    pairs: list[tuple[str, Row]]  # (record key, its row)
    summaries: list[str]  # every summary key, newest first
    bad: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[Row]:
        return [r for _, r in self.pairs]


class Reader:
    """Reads pages of one store's catalog; keeps immutable objects (parts, summaries, record bodies)."""

    def __init__(self, store: Store, cache_bytes: int = CACHE_BYTES) -> None:
        self.store = store
        self.cache_bytes = cache_bytes
        self._parts: OrderedDict[str, PartFile] = OrderedDict()
        self._summary: tuple[str, list[PartMeta]] | None = None
        self._bodies: OrderedDict[str, Row] = OrderedDict()
        self._parsed: OrderedDict[str, Row] = OrderedDict()  # key -> its row: a warm LIST parses nothing again
        self.bad_objects = 0
        # for /metrics (api/metrics.py): pages answered, their time, the store requests they cost, and the
        # records the last head/ LIST found (pending compaction: each costs every listing a little)
        self.pages = 0
        self.page_seconds = 0.0
        self.requests = 0
        self.head_records = 0

    def metrics(self) -> dict[str, float]:
        parts_in_force = len(self._summary[1]) if self._summary is not None else 0
        return {"listings": self.pages, "listing_seconds": self.page_seconds, "requests": self.requests,
                "head_records": self.head_records, "parts_in_force": parts_in_force,
                "cache_bytes": sum(p.nbytes for p in self._parts.values()), "bad_objects": self.bad_objects}

    def _listed(self, objs: Sequence[Any]) -> None:
        self.requests += max(1, -(-len(objs) // 1000))  # a LIST request per 1,000 keys

    # --- objects ------------------------------------------------------------------------------------

    def _bad(self, key: str, why: object) -> None:
        self.bad_objects += 1
        _quiet.log(logging.WARNING, key, "catalog: %s is left out (%s)", key, why)

    async def _rows_of_keys(self, keys: Sequence[str], prefix: str, running: bool,
                            bad: list[str]) -> list[tuple[str, Row]]:
        out: list[tuple[str, Row]] = []
        need: list[tuple[str, str, str]] = []
        for key in keys:
            name = key[len(prefix):]
            row = self._parsed.get(key)
            if row is None:
                try:
                    row = rows.parse_name(name, running=running)
                except BadRow as exc:
                    bad.append(key)
                    self._bad(key, exc)
                    continue
                if row is not None:
                    self._parsed[key] = row
                    if len(self._parsed) > PARSED_KEYS:
                        self._parsed.popitem(last=False)
            if row is not None:
                out.append((key, row))
            elif key in self._bodies:
                out.append((key, self._bodies[key]))
            else:
                _, task, host = name.split("~")[:3]
                need.append((key, task, host))
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def body(key: str, task: str, host: str) -> tuple[str, Row] | None:
            async with sem:
                self.requests += 1
                try:
                    row = rows.from_body(await self.store.get(key), task, host)
                except ObjectNotFound:
                    return None  # compacted meanwhile: its row is in a part the next page reads
                except BadRow as exc:
                    bad.append(key)
                    self._bad(key, exc)
                    return None
            self._bodies[key] = row
            while len(self._bodies) > 10_000:
                self._bodies.popitem(last=False)
            return key, row

        out += [r for r in await asyncio.gather(*(body(*n) for n in need)) if r is not None]
        return out

    async def head(self) -> Head:
        objs = await self.store.list(names.CATALOG_HEAD)
        self._listed(objs)
        rec_keys = [o.key for o in objs if names.parse_catalog_record_key(o.key) is not None]
        summaries = sorted(o.key for o in objs if names.parse_catalog_summary_key(o.key) is not None)
        known = set(rec_keys) | set(summaries)
        bad = [o.key for o in objs if o.key not in known]
        for k in bad:
            self._bad(k, "not a catalog key")
        recs = await self._rows_of_keys(rec_keys, names.CATALOG_HEAD + "r-", False, bad)
        self.head_records = len(recs)
        return Head(recs, summaries, bad)

    async def running(self, bad: list[str]) -> list[Row]:
        objs = await self.store.list(names.CATALOG_RUNNING)
        self._listed(objs)
        return [r for _, r in await self._rows_of_keys([o.key for o in objs], names.CATALOG_RUNNING, True, bad)]

    async def summary(self, keys: Sequence[str]) -> list[PartMeta]:
        """The parts in force per the newest readable summary of `keys` (newest first)."""
        for key in keys:
            if self._summary is not None and self._summary[0] == key:
                return self._summary[1]
            self.requests += 1
            try:
                entries = parts.decode_summary(key, await self.store.get(key))
            except ObjectNotFound:
                continue  # deleted meanwhile (it was old): the next one is as good
            except BadPart as exc:
                self._bad(key, exc)
                continue
            self._summary = (key, entries)
            return entries
        return []

    async def part_file(self, key: str) -> PartFile | None:
        if key in self._parts:
            self._parts.move_to_end(key)
            return self._parts[key]
        self.requests += 1
        try:
            pf = parts.open_part(key, await self.store.get(key))
        except ObjectNotFound:
            self._bad(key, "named by the summary but gone: run `logship catalog rebuild`")
            return None
        except BadPart as exc:
            self._bad(key, exc)
            return None
        self._parts[key] = pf
        while sum(p.nbytes for p in self._parts.values()) > self.cache_bytes and len(self._parts) > 1:
            self._parts.popitem(last=False)
        return pf

    async def part(self, key: str) -> pa.Table | None:
        """A part's rows, all of them (compaction, check); None if gone or unreadable (counted as bad)."""
        pf = await self.part_file(key)
        if pf is None:
            return None
        try:
            return pf.read()
        except BadPart as exc:
            self._bad(key, exc)
            return None

    @staticmethod
    def _groups(pf: PartFile, filters: Filters, cursor: Cursor | None) -> list[int]:
        """The row groups of a part whose start range may hold rows of the page (since/until, the cursor)."""
        high = cursor[0] if cursor else None
        if filters.until is not None:
            high = filters.until - 1 if high is None else min(high, filters.until - 1)
        return pf.groups(filters.since, high)

    def _page_rows(self, pf: PartFile, filters: Filters, cursor: Cursor | None,
                   groups: list[int]) -> pa.Table | None:
        """The rows of a part's `groups` that pass the fixed filters at or after `cursor`: with task=,
        tasks= or label=, their filter columns decoded first, then every column only of the row groups
        with a match."""
        try:
            if not groups:
                return None
            # a task's or a label's rows may sit in few row groups (an ibex task: in one), a host's are
            # spread over the day (≈ 20 a day in a fleet): there this first pass would only add work
            if filters.task is not None or filters.tasks or filters.labels:
                keys = ["started_ns"] + (["task"] if cursor or filters.task or filters.tasks else []) + (
                    ["host"] if cursor or filters.host else []) + (["labels"] if filters.labels else [])
                t = pf.read(groups, keys)  # one decode of the filter columns; then which groups matched
                t = t.append_column("group", pa.array([g for g in groups for _ in range(pf.sizes[g])], pa.int32()))
                groups = sorted(pc.unique(later(fixed_filter(t, filters), cursor)["group"]).to_pylist())
            return later(fixed_filter(pf.read(groups), filters), cursor) if groups else None
        except (BadPart, ValueError, pa.ArrowException) as exc:  # e.g. row counts that are not its rows'
            self._bad(pf.key, exc)
            return None

    # --- a page ------------------------------------------------------------------------------------

    async def page(self, filters: Filters, cursor: Cursor | None, limit: int) -> tuple[list[dict[str, Any]],
                                                                                       Cursor | None]:
        page, more = await self.rows(filters, cursor, limit)
        return [r.listing() for r in page], more

    async def rows(self, filters: Filters, cursor: Cursor | None, limit: int) -> tuple[list[Row], Cursor | None]:
        """One page as the winning rows themselves (gc needs their versions), and the next page's cursor."""
        began = time.perf_counter()
        try:
            return await self._rows(filters, cursor, limit)
        finally:
            self.pages += 1
            self.page_seconds += time.perf_counter() - began

    async def _rows(self, filters: Filters, cursor: Cursor | None, limit: int) -> tuple[list[Row], Cursor | None]:
        head = await self.head()
        if filters.status == manifest.RUNNING or filters.silent_since is not None:  # only running logs are silent
            found = await self._running_page(head, filters, cursor, limit + 1)
        else:
            entries = sorted((p for p in await self.summary(head.summaries) if filters.may_hold(p, cursor)),
                             key=lambda p: -p.max_started_ns)
            found = await self._walk(head.records, entries, filters, cursor, limit + 1)
        page = found[:limit]
        more = len(found) > limit
        return page, ((page[-1].started_ns, page[-1].task, page[-1].host) if more else None)

    async def _running_page(self, head: Head, filters: Filters, cursor: Cursor | None, want: int) -> list[Row]:
        """`status=running`: running/ entries from the cursor on, a LIST page at a time (their keys are in
        start order), with every record, until `want` rows are certain."""
        prefix = names.CATALOG_RUNNING
        after = f"{prefix}{rows.MAX64 - cursor[0]:016x}" if cursor else ""  # every entry started at or before it
        got: list[Row] = []
        size = min(1000, want + 16)
        while True:
            objs = await self.store.list_page(prefix, after, size)
            self.requests += 1
            new = [r for _, r in await self._rows_of_keys([o.key for o in objs], prefix, True, head.bad)]
            got += await self._overlay(new, after)
            more = len(objs) >= size
            # entries of one start time are adjacent: the last one's may go on in the next page
            starts = [t for o in objs if (t := _start_of(o.key[len(prefix):])) is not None]
            floor = (min(starts) if starts else rows.MAX64) if more else None
            found = _merge([iter(sorted(head.records + got, key=lambda r: r.order))], filters, cursor, want, floor)
            if len(found) >= want or not more:
                return found
            after, size = objs[-1].key, 1000

    async def _live(self, after: str, oldest: int) -> dict[tuple[str, str, str], tuple[int, int | None, int | None,
                                                                                     int | None]]:
        """live/ entries (rows.live_name) from `after` on, down to runs started at `oldest`, the newest per
        run: (version_ns, size, lines, silent_since_ns)."""
        prefix = names.CATALOG_LIVE
        out: dict[tuple[str, str, str], tuple[int, int | None, int | None, int | None]] = {}
        after = after.replace(names.CATALOG_RUNNING, prefix, 1) if after else ""
        while True:
            objs = await self.store.list_page(prefix, after, 1000)
            for o in objs:
                try:
                    run, version, size, lines, silent = rows.parse_live(o.key[len(prefix):])
                except BadRow as exc:
                    self._bad(o.key, exc)
                    continue
                if run not in out or version > out[run][0]:
                    out[run] = (version, size, lines, silent)
            start = _start_of(objs[-1].key[len(prefix):]) if objs else None
            if len(objs) < 1000 or start is None or start < oldest:
                return out
            after = objs[-1].key

    async def _overlay(self, entries: list[Row], after: str) -> list[Row]:
        """Running/ entries (fields fixed at the start) with what their newest live/ entry says; a run with
        none has no sealed segment noted (size and lines 0)."""
        if not entries:
            return entries
        live = await self._live(after, min(r.started_ns for r in entries))
        out = []
        for r in entries:
            v = live.get(r.run)
            out.append(replace(r, size=0, lines=0) if v is None else replace(
                r, version_ns=v[0], size=v[1], lines=v[2], silent_since_ns=v[3]))
        return out

    async def _walk(self, records: list[Row], entries: list[PartMeta], filters: Filters, cursor: Cursor | None,
                    want: int) -> list[Row]:
        """Read row groups newest start first until `want` rows are certain: a row is final once no unread
        row group can hold a row of the same run (all of a run's rows have its start time). A part is
        fetched once its newest start is the newest unread one; its row groups are then decoded in the
        order of their own newest start (`started_ns` statistics, at most the part's), a few at a time, so
        a page decodes the groups it needs, not whole parts (a host's rows are in every group:
        docs/catalog.md §5)."""
        recs = sorted((r for r in records if filters.fixed(r)), key=lambda r: r.order)
        tables: list[tuple[pa.Table, tuple[int, str, str]]] = []  # decoded, with their last row's order
        out: list[Row] = []
        # the unread, newest first: (-newest start, tie-break, a part not fetched | (its file, a row group))
        unread: list[tuple[int, int, PartMeta | tuple[PartFile, int]]] = [
            (-e.max_started_ns, n, e) for n, e in enumerate(entries)]
        heapq.heapify(unread)
        n = len(entries)
        budget, decoded = 1, 0  # row groups to decode in the next step; decoded so far
        while True:
            decode: dict[str, tuple[PartFile, list[int]]] = {}
            while unread and sum(len(gs) for _, gs in decode.values()) < budget:
                if isinstance(item := unread[0][2], tuple):
                    heapq.heappop(unread)
                    decode.setdefault(item[0].key, (item[0], []))[1].append(item[1])
                    continue
                if decode:  # a part is fetched (a GET) only once the groups before it did not settle the page
                    break
                heapq.heappop(unread)
                got = await self.part_file(item.key)  # its groups go in the queue by their own newest start
                if got is None:
                    continue
                for g in self._groups(got, filters, cursor):
                    r = got.starts[g]
                    n += 1
                    newest = min(r[1], item.max_started_ns) if r else item.max_started_ns
                    heapq.heappush(unread, (-newest, n, (got, g)))
            for pf, gs in decode.values():
                decoded += len(gs)
                if t := self._page_rows(pf, filters, cursor, sorted(gs)):
                    last = t.slice(t.num_rows - 1).select(["started_ns", "task", "host"]).to_pylist()[0]
                    tables.append((t, (-last["started_ns"], last["task"], last["host"])))
            floor = -unread[0][0] if unread else None
            pos = cursor if not out else (out[-1].started_ns, out[-1].task, out[-1].host)
            sources = [_after(recs, pos)] + [iter_table(t, pos) for t, _ in tables]
            out += _merge(sources, filters, None, want - len(out), floor)
            if len(out) >= want or floor is None:
                return out
            # the next step decodes as many groups as the rows found so far per group say the page needs
            # (one call per part, not per group: each costs ≈ 1 ms beyond its rows), else twice as many
            budget = -(-(want - len(out)) * decoded // len(out)) if out else 2 * budget
            if out:  # drop the tables whose rows are all listed: each step would filter them again
                at = (-out[-1].started_ns, out[-1].task, out[-1].host)
                tables = [(t, last) for t, last in tables if last > at]


def _start_of(name: str) -> int | None:
    """The start time a row key begins with (None for a key that does not)."""
    try:
        return rows.MAX64 - int(name[:16], 16) if len(name) > 16 and name[16] == "~" else None
    except ValueError:
        return None


def _after(recs: list[Row], pos: Cursor | None) -> Iterator[Row]:
    return (r for r in recs if rows.after(r, pos))


def _merge(sources: list[Iterator[Row]], filters: Filters, cursor: Cursor | None, want: int,
           floor: int | None) -> list[Row]:
    """Rows of runs in listing order, the winner of each run, up to `want`, stopping before a run whose
    start is at or below `floor` (an unread part may hold rows of it)."""
    out: list[Row] = []
    best: Row | None = None
    for r in heapq.merge(*sources, key=lambda r: r.order):
        if best is not None and r.run == best.run:
            best = r if r.rank > best.rank else best
            continue
        if best is not None and filters.final(best):
            out.append(best)
            if len(out) >= want:
                return out
        if floor is not None and r.started_ns <= floor:
            return out
        best = r if filters.fixed(r) and rows.after(r, cursor) else None
        if best is None:
            continue
    if best is not None and filters.final(best) and len(out) < want:
        out.append(best)
    return out


def iter_table(t: pa.Table, pos: Cursor | None) -> Iterator[Row]:
    t = later(t, pos)
    for start in range(0, t.num_rows, CHUNK):
        chunk = t.slice(start, CHUNK).to_pylist()
        for d in chunk:
            d["labels"] = dict(d["labels"] or ())
            d["command"] = d["command"] or []
            yield Row(**d)


_readers: dict[int, tuple[Store, Reader]] = {}


def reader(store: Store) -> Reader:
    """The process's reader of `store` (caches kept while the store object lives)."""
    entry = _readers.get(id(store))
    if entry is None or entry[0] is not store:
        for k in [k for k, (s, _) in _readers.items() if s is store or len(_readers) > 16]:
            del _readers[k]
        entry = _readers[id(store)] = (store, Reader(store))
    return entry[1]


def metrics(store: Store) -> dict[str, float]:
    """The process's catalog reader's counters for `store` (api/metrics.py)."""
    return reader(store).metrics()


async def list_logs(store: Store, filters: Filters, cursor: Cursor | None = None,
                    limit: int = 100) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of the listing: rows newest first (the fields GET /api/v1/tasks returns), and the cursor of
    the next page (None: this is the last)."""
    return await reader(store).page(filters, cursor, limit)


async def list_rows(store: Store, filters: Filters, cursor: Cursor | None = None,
                    limit: int = 100) -> tuple[list[Row], Cursor | None]:
    """list_logs's page as the winning rows themselves (with their versions: gc's selection)."""
    return await reader(store).rows(filters, cursor, limit)
