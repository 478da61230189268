"""`logship catalog rebuild` and `check`: the catalog made from, or compared with, the manifests (the truth).

rebuild lists logs/ once, GETs manifests in batches and writes each batch's rows straight into parts (and
running/ entries), then saves its position: a kill -9 resumes after the last saved batch, and rows written
twice are one row to readers (a run's highest version wins). A rebuilt row's version is the manifest's
`updated_ns`, so a watcher's newer record wins over it; a running log's entries written after its watcher
committed its end are taken back (_put_running). A bad manifest costs its own row, reported.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from shipper.errors import ObjectNotFound
from shipper.format import manifest, names
from shipper.store import Store

from . import parts, rows
from .compact import Compactor, Settings, day_of
from .reader import Reader, iter_table
from .rows import Row
from .writer import Writer, live_worth

BATCH = 20_000  # manifests per saved position (and per part of a day, at most)
GET_CONCURRENCY = 16  # more is slower on a busy SeaweedFS here (bench/README.md)


@dataclass
class Progress:
    total: int = 0  # manifests listed
    done: int = 0  # manifests read (this run and the runs it resumes)
    rows: int = 0
    bad: list[str] = field(default_factory=list)  # "key: why"
    parts: int = 0
    running: int = 0
    resumed_after: str | None = None
    resumed_count: int = 0  # manifests a resumed run skips (read by an earlier run)
    seconds: float = 0.0


async def manifest_keys(store: Store) -> list[tuple[str, str, str]]:
    """(key, task, host) of every manifest under logs/, in key order (one LIST of logs/)."""
    out = []
    for o in await store.list("logs/"):
        parsed = names.parse_log_prefix(o.key)
        if parsed and o.key == names.manifest_key(*parsed):
            out.append((o.key, *parsed))
    return out


async def read_manifests(store: Store, keys: list[tuple[str, str, str]], bad: list[str]) -> list[Row]:
    sem = asyncio.Semaphore(GET_CONCURRENCY)

    async def one(key: str, task: str, host: str) -> Row | None:
        async with sem:
            try:
                return rows.load_manifest(await store.get(key), task, host)
            except ObjectNotFound:
                return None  # deleted meanwhile
            except manifest.ManifestError as exc:
                bad.append(f"{key}: {exc}")
                return None

    return [r for r in await asyncio.gather(*(one(*k) for k in keys)) if r is not None]


async def _put_running(store: Store, running: list[Row]) -> None:
    """Each running log's running/ entry, then its live/ entry (sealed size and lines, silence: what a
    watcher's newest note would say; the same condition as writer.Writer's), in that order per log as the
    watcher writes them, so the compactor never takes the live entry for a leftover. Keys come from the
    manifest alone: a resumed or repeated rebuild writes the same ones.

    Then the manifest is read again (a GET per running log): a watcher that committed the log's end since the
    batch read it has deleted the running/ entry before our PUT, and a compaction may have folded its final
    record (whose fold deletes the entry again) too, so nothing else would ever delete ours: `status=running`
    would show the log for good. Read after our PUTs, a manifest still running means the end comes later, and
    its watcher deletes the entry then."""
    sem = asyncio.Semaphore(GET_CONCURRENCY)

    async def put(r: Row) -> None:
        async with sem:
            keys = [names.catalog_running_key(rows.running_name(r))]
            await store.put(keys[0], r.body())
            if live_worth(r):
                keys.append(names.catalog_live_key(rows.live_name(r)))
                await store.put(keys[1], b"")
            if not await _runs(store, r):
                await store.delete(keys)

    await asyncio.gather(*map(put, running))


async def _runs(store: Store, r: Row) -> bool:
    """Whether the run of `r` is still running, as its manifest says now (one that became unreadable: left to
    `catalog check`, which reports it)."""
    try:
        now = rows.load_manifest(await store.get(names.manifest_key(r.task, r.host)), r.task, r.host)
    except ObjectNotFound:
        return False  # deleted meanwhile (gc)
    except manifest.ManifestError:
        return True
    return now.run_id == r.run_id and now.phase == 1


async def _load_state(store: Store) -> dict[str, object]:
    try:
        doc = json.loads(await store.get(names.CATALOG_REBUILD_STATE))
        return doc if isinstance(doc, dict) and isinstance(doc.get("after"), str) else {}
    except (ObjectNotFound, ValueError):
        return {}


async def rebuild(store: Store, *, batch: int = BATCH, fresh: bool = False,
                  progress: Callable[[Progress], None] | None = None, grace_s: float = 60.0) -> Progress:
    began = time.monotonic()
    p = Progress()
    state = {} if fresh else await _load_state(store)
    after = str(state["after"]) if state and not state.get("finished") else ""
    p.resumed_after = after or None
    keys = await manifest_keys(store)
    p.total = len(keys)
    todo = [k for k in keys if k[0] > after]
    p.done = p.resumed_count = p.total - len(todo)
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        found = await read_manifests(store, chunk, p.bad)
        by_day: dict[str, list[Row]] = defaultdict(list)
        for r in found:
            by_day[day_of(r.started_ns)].append(r)
        for day, day_rows in sorted(by_day.items()):
            key = names.catalog_part_key(day, time.time_ns(), secrets.token_hex(8))
            await store.put(key, parts.encode_part(key, day_rows, ()))
            p.parts += 1
        running = [r for r in found if r.phase == 1]
        await _put_running(store, running)
        p.running += len(running)
        p.rows += len(found)
        p.done += len(chunk)
        await store.put(names.CATALOG_REBUILD_STATE, json.dumps({"after": chunk[-1][0], "done": p.done}).encode())
        p.seconds = time.monotonic() - began
        if progress:
            progress(p)
    await store.put(names.CATALOG_REBUILD_STATE, json.dumps({"after": "", "finished": True, "done": p.done}).encode())
    # one part per day, and the summary that puts the new parts in force
    await Compactor(store, Settings(grace_s=grace_s)).run(consolidate=True)
    p.seconds = time.monotonic() - began
    if progress:
        progress(p)
    return p


# --- check -----------------------------------------------------------------------------------------


@dataclass
class Report:
    manifests: int = 0
    rows: int = 0
    missing: list[str] = field(default_factory=list)  # a manifest with no visible row of its run
    stale: list[str] = field(default_factory=list)  # the row's status or version is older than the manifest's
    ahead: list[str] = field(default_factory=list)  # a row newer than its manifest (forged, or a clock jump)
    extra: list[str] = field(default_factory=list)  # a visible row with no manifest of its run
    stale_running: list[str] = field(default_factory=list)  # running/ entries of runs that are not running
    bad: list[str] = field(default_factory=list)
    records: int = 0  # uncompacted records (a large number: no compaction runs)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.stale or self.ahead or self.extra or self.stale_running or self.bad)


async def everything(reader: Reader, bad: list[str]) -> tuple[dict[tuple[str, str, str], Row], list[Row]]:
    """Every run's winning row in the whole catalog (records and every part in force), and the running/ entries."""
    head = await reader.head()
    bad += head.bad
    best: dict[tuple[str, str, str], Row] = {}

    def add(r: Row) -> None:
        b = best.get(r.run)
        if b is None or r.rank > b.rank:
            best[r.run] = r

    for r in head.records:
        add(r)
    for p in await reader.summary(head.summaries):
        table = await reader.part(p.key)
        if table is None:
            bad.append(f"{p.key}: named by the summary, unreadable or gone")
            continue
        for r in iter_table(table, None):
            add(r)
    running = await reader.running(bad)
    return best, running


def _same(got: Row, want: Row) -> bool:
    """Equal rows; a row written before rows.VIEW_FIELDS (all null) is not stale for lacking them."""
    return got == want or (all(getattr(got, k) is None for k in rows.VIEW_FIELDS)
                           and got == replace(want, signal=None, segments=None, dropped_bytes=None))


async def check(store: Store, *, repair: bool = False) -> Report:
    rep = Report()
    keys = await manifest_keys(store)
    rep.manifests = len(keys)
    truth = {(r.task, r.host): r for r in await read_manifests(store, keys, rep.bad)}
    reader = Reader(store)
    best, running = await everything(reader, rep.bad)
    rep.records = len((await reader.head()).pairs)
    rep.rows = sum(1 for r in best.values() if r.visible)
    fix: list[Row] = []
    for (task, host), m in sorted(truth.items()):
        got = best.get(m.run)
        if got is None:
            if m.visible:
                rep.missing.append(f"{task}/{host} run {m.run_id}: {m.status}")
                fix.append(m)
        elif got.rank < m.rank or (got.rank == m.rank and not _same(got, m)):
            rep.stale.append(f"{task}/{host}: catalog {got.status} v{got.version_ns}, manifest {m.status} "
                             f"v{m.version_ns}")
            fix.append(m)
        elif got.rank > m.rank:
            rep.ahead.append(f"{task}/{host}: catalog {got.status} v{got.version_ns} is newer than the manifest "
                             f"({m.status} v{m.version_ns})")
    for _, r in sorted(best.items()):
        want = truth.get((r.task, r.host))
        if r.visible and (want is None or want.run_id != r.run_id):
            rep.extra.append(f"{r.task}/{r.host} run {r.run_id}: {r.status}, no manifest of this run")
            fix.append(rows.tombstone(r))
    stale_running = []
    for r in running:
        b = best.get(r.run)
        if b is not None and b.phase >= 2:
            stale_running.append(r)
            rep.stale_running.append(f"{r.task}/{r.host} run {r.run_id}: {b.status}")
    if repair:
        w = Writer(store)
        for r in fix:
            await w.write(r)
        await store.delete(names.catalog_running_key(rows.running_name(r)) for r in stale_running)
    return rep
