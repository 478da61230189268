"""The catalog against a brute-force scan of the manifests, over random archives (hypothesis), on every
store backend: every filter, pagination with no gap or duplicate while logs are written and deleted, two
writers and two compactors at once, and garbage catalog objects."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper import catalog
from shipper.catalog import Filters, Settings, rows
from shipper.config import StoreConfig
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.store import Store, open_store

DAY = 86_400 * 10**9
HOUR = 3_600 * 10**9
BASE = (time.time_ns() // DAY - 3) * DAY  # three days ago, midnight UTC: runs span day boundaries
TASKS = [f"job-{i}" for i in range(6)]
HOSTS = [f"web-{i}.prod" for i in range(4)]
LABELS = [{}, {"team": "db"}, {"team": "web"}, {"team": "db", "env": "prod"}, {"env": "prod"}]


class Archive:
    """The truth (manifests in the store), and the catalog written as watchers and gc will write it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.docs: dict[tuple[str, str], Manifest] = {}
        self.writer = catalog.Writer(store)
        self.n = 0

    async def put(self, doc: Manifest, note: bool = True) -> None:
        doc = doc.replace(updated_ns=max(time.time_ns(), (doc.updated_ns or 0) + 1))
        await self.store.put(names.manifest_key(doc.task, doc.host), doc.dump())
        self.docs[(doc.task, doc.host)] = doc
        if note:
            await self.writer.note(doc)

    async def start(self, task: str, host: str, started: int, labels: dict[str, str], status: str = "running",
                    note: bool = True) -> None:
        self.n += 1
        run = {"task": task, "host": host, "run_id": secrets.token_hex(16), "started_ns": started,
               "command": ["sh", "-c", f"step {self.n}"], "labels": labels}
        end = None if status == manifest.RUNNING else {"exit_code": self.n % 3, "ended_ns": started + 10**9}
        doc = Manifest.build(run, end, status, [], None, [], "zstd")
        if status != manifest.RUNNING:
            doc = doc.replace(size=self.n * 100, lines=self.n)
        await self.put(doc, note)

    async def end(self, key: tuple[str, str], status: str = manifest.FINISHED) -> None:
        doc = self.docs[key]
        await self.put(doc.replace(status=status, exit_code=1, ended_ns=doc.started_ns + 5, size=4242, lines=42))

    async def delete(self, key: tuple[str, str]) -> None:
        await self.put(self.docs[key].replace(status=manifest.DELETING))
        await self.writer.forget(self.docs[key])
        await self.store.delete([names.manifest_key(*key)])
        del self.docs[key]

    def expected(self, f: Filters) -> list[dict[str, Any]]:
        got = [rows.from_manifest(d) for d in self.docs.values()]
        return [r.listing() for r in sorted(got, key=lambda r: r.order) if f.fixed(r) and f.final(r)]


async def pages(store: Store, f: Filters, limit: int, between: Any = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page, cursor = await catalog.list_logs(store, f, cursor, limit)
        assert len(page) <= limit
        out += page
        if cursor is None:
            return out
        if between is not None:
            await between()
    raise AssertionError("pagination did not end")


def key_of(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["task"], r["host"], r["run_id"]


# --- random archives ---------------------------------------------------------------------------------

logs_st = st.lists(st.tuples(st.sampled_from(TASKS), st.sampled_from(HOSTS), st.integers(0, 4 * 24),
                             st.integers(0, len(LABELS) - 1), st.sampled_from(["running", "finished", "lost"]),
                             st.booleans()), min_size=1, max_size=40)
ops_st = st.lists(st.tuples(st.sampled_from(["end", "lose", "delete", "compact", "new", "new"]),
                            st.integers(0, 10**6)), max_size=20)
filters_st = st.builds(
    Filters,
    since=st.one_of(st.none(), st.integers(0, 4 * 24).map(lambda h: BASE + h * HOUR)),
    until=st.one_of(st.none(), st.integers(0, 4 * 24).map(lambda h: BASE + h * HOUR)),
    status=st.sampled_from([None, "running", "finished", "lost"]),
    host=st.one_of(st.none(), st.sampled_from(HOSTS)),
    task=st.one_of(st.none(), st.sampled_from(TASKS)),
    tasks=st.sampled_from([(), (TASKS[0],), (TASKS[1], TASKS[4])]),
    labels=st.sampled_from([(), (("team", "db"),), (("env", "prod"),), (("team", "db"), ("env", "prod")),
                            (("team", "none"),)]))


async def apply(a: Archive, op: str, n: int, compactor: catalog.Compactor) -> None:
    keys = sorted(a.docs)
    if op == "compact":
        await compactor.run()
    elif op == "new":
        key = (TASKS[n % len(TASKS)], HOSTS[n // 7 % len(HOSTS)])
        if key not in a.docs:
            await a.start(*key, BASE + (n % (4 * 24)) * HOUR + n % 1000, LABELS[n % len(LABELS)])
    elif keys:
        key = keys[n % len(keys)]
        if op == "delete":
            if a.docs[key].status != manifest.RUNNING:
                await a.delete(key)
        elif a.docs[key].status == manifest.RUNNING:
            await a.end(key, manifest.FINISHED if op == "end" else manifest.LOST)


async def build(store: Store, logs: list[Any], ops: list[Any]) -> tuple[Archive, catalog.Compactor]:
    a = Archive(store)
    compactor = catalog.Compactor(store, Settings(grace_s=0, day_parts=2))
    for task, host, hour, label, status, old in logs:
        if (task, host) not in a.docs:  # an "old" log was written before the catalog existed
            await a.start(task, host, BASE + hour * HOUR, LABELS[label], status, note=not old)
    await catalog.rebuild(store, grace_s=0, batch=7)
    for op, n in ops:
        await apply(a, op, n, compactor)
    return a, compactor


@pytest.fixture(params=["file", "s3"])
def store_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh store config per call (hypothesis runs many examples in one test)."""
    base: StoreConfig = request.getfixturevalue(f"{request.param}_store_cfg")
    n = itertools.count()
    return lambda: dataclasses.replace(base, url=f"{base.url.rstrip('/')}/ex{next(n)}-{secrets.token_hex(3)}/")


def run(coro: Any) -> Any:
    return asyncio.new_event_loop().run_until_complete(coro)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logs=logs_st, ops=ops_st, filters=st.lists(filters_st, min_size=1, max_size=4), limit=st.integers(1, 7))
def test_listing_is_the_brute_force_scan(store_cfg: Any, logs: list[Any], ops: list[Any], filters: list[Filters],
                                         limit: int) -> None:
    async def go() -> None:
        store = open_store(store_cfg())
        try:
            a, _ = await build(store, logs, ops)
            for f in filters:
                assert await pages(store, f, limit) == a.expected(f), f
            rep = await catalog.check(store)
            assert rep.clean, rep
        finally:
            await store.close()

    run(go())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logs=logs_st, ops=ops_st, during=ops_st, limit=st.integers(1, 4))
def test_pagination_while_logs_change(store_cfg: Any, logs: list[Any], ops: list[Any], during: list[Any],
                                      limit: int) -> None:
    """No row twice; every run visible before and after the pagination (it may change status) exactly once."""
    async def go() -> None:
        store = open_store(store_cfg())
        try:
            a, compactor = await build(store, logs, ops)
            before = {key_of(r) for r in a.expected(Filters())}
            todo = list(during)

            async def step() -> None:
                if todo:
                    op, n = todo.pop(0)
                    await apply(a, op, n, compactor)

            seen = [key_of(r) for r in await pages(store, Filters(), limit, step)]
            after = {key_of(r) for r in a.expected(Filters())}
            assert len(seen) == len(set(seen)), "a row came twice"
            assert before & after <= set(seen), "a row that stayed was skipped"
        finally:
            await store.close()

    run(go())


# --- writers and compactors at once --------------------------------------------------------------------


async def test_two_writers_and_two_compactors_at_once(store_cfg: Any) -> None:
    """Two watchers (their own store clients) note logs while two compactors run with a short grace: every
    listing holds every run noted before it began, and in the end the catalog agrees with the manifests."""
    cfg = store_cfg()
    stores = [open_store(cfg) for _ in range(4)]
    grace = 0.3
    try:
        writers = [Archive(stores[0]), Archive(stores[1])]
        done = asyncio.Event()
        noted: set[tuple[str, str, str]] = set()
        lost: list[str] = []

        async def write(a: Archive, who: int) -> None:
            r = random.Random(who)
            for i in range(60):
                key = (f"w{who}-{i}", HOSTS[i % len(HOSTS)])
                await a.start(*key, BASE + r.randrange(3 * DAY), LABELS[i % len(LABELS)])
                noted.add((*key, a.docs[key].run_id))
                if i % 3 == 0:
                    k2 = (f"w{who}-{i // 2}", HOSTS[i // 2 % len(HOSTS)])
                    if a.docs[k2].status == manifest.RUNNING:
                        await a.end(k2)

        async def compact(store: Store) -> None:
            c = catalog.Compactor(store, Settings(grace_s=grace, day_parts=3))
            while not done.is_set():
                await c.run()
                await asyncio.sleep(0.05)

        async def read(store: Store) -> None:
            while not done.is_set():
                want = set(noted)
                got = {key_of(r) for r in (await catalog.Reader(store).page(Filters(), None, 1000))[0]}
                lost.extend(f"{k}" for k in want - got)
                await asyncio.sleep(0.02)

        bg = [asyncio.create_task(compact(stores[2])), asyncio.create_task(compact(stores[3])),
              asyncio.create_task(read(stores[2]))]
        await asyncio.gather(write(writers[0], 0), write(writers[1], 1))
        await asyncio.sleep(2 * grace)
        done.set()
        await asyncio.gather(*bg)
        assert not lost, f"rows missing from a listing: {lost[:5]}"
        c = catalog.Compactor(stores[0], Settings(grace_s=grace))
        await c.run()
        await asyncio.sleep(2 * grace)
        await c.run()
        truth = Archive(stores[0])
        truth.docs = {**writers[0].docs, **writers[1].docs}
        assert await pages(stores[0], Filters(), 50) == truth.expected(Filters())
        assert await pages(stores[0], Filters(status="running"), 50) == truth.expected(Filters(status="running"))
        rep = await catalog.check(stores[0])
        assert rep.clean, rep
        head = await catalog.Reader(stores[0]).head()
        assert not head.pairs, "every record is compacted and deleted once its grace is over"
    finally:
        for s in stores:
            await s.close()


# --- garbage ---------------------------------------------------------------------------------------


async def test_garbage_catalog_objects_cost_only_themselves(store_cfg: Any) -> None:
    store = open_store(store_cfg())
    try:
        a = Archive(store)
        for i in range(12):
            await a.start(TASKS[i % 6], HOSTS[i % 4], BASE + i * HOUR, LABELS[i % 5],
                          "running" if i % 4 == 0 else "finished", note=i % 2 == 0)
        await catalog.rebuild(store, grace_s=0)
        await a.start("fresh", "h", BASE + 50 * HOUR, {})  # a record not yet compacted
        good = a.expected(Filters())
        inv = f"{rows.MAX64 - BASE:016x}"
        garbage = {
            names.CATALOG_HEAD + "r-nonsense": b"x",
            names.CATALOG_HEAD + f"r-{inv}~t~h~1{'0' * 16}~!!notbase64": b"",
            names.CATALOG_HEAD + f"r-{inv}~t~h~1{'0' * 16}~W10": b"",  # base64 of []
            names.CATALOG_HEAD + f"r-{inv}~t~h~2{'0' * 16}~-": b"{not json",  # the body is the row: bad
            names.CATALOG_HEAD + f"r-{inv}~t~h~2{'0' * 16}~-x": b"{}",
            names.CATALOG_HEAD + "s-0000000000000000-deadbeef.parquet": b"PAR1 not a summary PAR1",  # sorts first
            names.CATALOG_HEAD + "zz": b"",
            names.CATALOG_RUNNING + f"{inv}~t~h~-": b"[1,2]",
            names.CATALOG_RUNNING + "what": b"",
            names.catalog_part_key("2026-01-01", 1, "0" * 16): b"PAR1garbagePAR1",
            names.CATALOG_PARTS + "day=2026-01-01/other.bin": b"\x00" * 100,
        }
        for k, v in garbage.items():
            await store.put(k, v)
        reader = catalog.Reader(store)
        assert (await reader.page(Filters(), None, 1000))[0] == good
        assert (await reader.page(Filters(status="running"), None, 1000))[0] == a.expected(Filters(status="running"))
        assert reader.bad_objects >= 8
        for _ in range(2):
            st_ = await catalog.Compactor(store, Settings(grace_s=0)).run()
            assert st_.bad
        assert await pages(store, Filters(), 5) == good
        rep = await catalog.check(store)
        assert rep.bad and not (rep.missing or rep.stale or rep.extra)
        for k in garbage:  # garbage is reported, never deleted by logship: it may be someone's
            assert await store.head(k)
    finally:
        await store.close()


async def test_long_rows_keep_their_fields_in_the_body(store_cfg: Any) -> None:
    """A row too long for a key (a long command, many labels) is read from the record's body."""
    store = open_store(store_cfg())
    try:
        a = Archive(store)
        labels = {f"k{i}": "v" * 20 for i in range(8)}
        await a.start("long", "h", BASE, labels)
        await a.start("short", "h", BASE + 1, {})
        head = await catalog.Reader(store).head()
        assert any(k.endswith("~-") for k, _ in head.pairs)
        assert await pages(store, Filters(), 10) == a.expected(Filters())
        assert await pages(store, Filters(status="running"), 10) == a.expected(Filters(status="running"))
        await a.end(("long", "h"))
        await catalog.Compactor(store, Settings(grace_s=0)).run()
        await catalog.Compactor(store, Settings(grace_s=0)).run()
        assert await pages(store, Filters(), 10) == a.expected(Filters())
        assert await pages(store, Filters(status="running"), 10) == a.expected(Filters(status="running"))
        assert not (await catalog.Reader(store).head()).pairs
    finally:
        await store.close()


async def test_requests_of_a_page_do_not_grow_with_the_archive(store_cfg: Any) -> None:
    """The same pages cost the same requests, from a fresh process, over 2 days of history and over 5 (300
    logs a day: an archive grows by its history, not by its density; the bench measures 100,000 logs)."""
    costs = []
    for days in (2, 5):
        store = open_store(store_cfg())
        try:
            a = Archive(store)
            n = 300 * days
            end = BASE + 3 * DAY
            for i in range(n):
                await a.start(f"t{i}", HOSTS[i % 4], end - (i + 1) * (days * DAY // n), LABELS[i % 5],
                              "running" if i % 100 == 0 else "finished", note=False)
            await catalog.rebuild(store, grace_s=0)
            cost: list[int] = []
            first: list[int] = []
            for f in (Filters(), Filters(status="running"), Filters(since=end - HOUR),
                      Filters(host=HOSTS[1]), Filters(labels=(("team", "db"),))):
                fresh = open_store(dataclasses.replace(store_cfg(), url=store.url))
                try:
                    page, cursor = await catalog.list_logs(fresh, f, None, 50)
                    assert page == a.expected(f)[:50]
                    first.append(sum(fresh.stats.requests.values()))
                    if cursor is not None:  # page 2
                        page, _ = await catalog.list_logs(fresh, f, cursor, 50)
                        assert page == a.expected(f)[50:100]
                    cost.append(sum(fresh.stats.requests.values()))
                finally:
                    await fresh.close()
            costs.append((first, cost))
        finally:
            await store.close()
    assert costs[0] == costs[1], costs
    assert max(costs[0][0]) <= 3, costs  # a first page from a cold process: LIST head/, GET summary, GET part


# --- plain DuckDB ----------------------------------------------------------------------------------

# What docs/format.md gives outside engines: the newest summary names the parts in force; records not yet
# compacted are JSON objects; of each run the highest (phase, version_ns) row counts; phase 3-4 are hidden.
DUCKDB_RECIPE = """
SET VARIABLE summary = (SELECT min(file) FROM glob(getvariable('root') || 'catalog/v1/head/s-*.parquet'));
SET VARIABLE parts = (SELECT list(getvariable('root') || path) FROM read_parquet(getvariable('summary')));
CREATE VIEW catalog_rows AS
  SELECT task, host, run_id, status, phase, version_ns, exit_code, started_ns, ended_ns, size, lines, labels,
         command FROM read_parquet(getvariable('parts'), hive_partitioning = true) {records};
CREATE VIEW logs AS SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (PARTITION BY task, host, run_id ORDER BY phase DESC, version_ns DESC) AS rn
  FROM catalog_rows) WHERE rn = 1 AND phase < 3;
"""
RECORDS = """UNION ALL BY NAME SELECT * REPLACE (CAST(labels AS MAP(VARCHAR, VARCHAR)) AS labels) FROM read_json(
  getvariable('root') || 'catalog/v1/head/r-*', columns = {task: 'VARCHAR', host: 'VARCHAR', run_id: 'VARCHAR',
  status: 'VARCHAR', phase: 'TINYINT', version_ns: 'BIGINT', exit_code: 'BIGINT', started_ns: 'BIGINT',
  ended_ns: 'BIGINT', size: 'BIGINT', lines: 'BIGINT', labels: 'MAP(VARCHAR, VARCHAR)', command: 'VARCHAR[]'})"""


async def test_plain_duckdb_reads_what_the_listing_shows(file_store_cfg: StoreConfig) -> None:
    import duckdb

    store = open_store(file_store_cfg)
    try:
        a = Archive(store)
        for i in range(40):
            await a.start(TASKS[i % 6] + f"-{i}", HOSTS[i % 4], BASE + i * 2 * HOUR, LABELS[i % 5],
                          "running" if i % 5 == 0 else "finished", note=i % 2 == 0)
        await catalog.rebuild(store, grace_s=0)
        await a.end(next(k for k, d in a.docs.items() if d.status == "running"))
        await a.delete(next(k for k, d in a.docs.items() if d.status == "finished"))
        await a.start("late", "h", BASE + HOUR, {"team": "db"})  # records not compacted yet
        root = file_store_cfg.url.removeprefix("file://").rstrip("/") + "/"
        for compacted in (False, True):
            if compacted:
                for _ in range(2):
                    await catalog.Compactor(store, Settings(grace_s=0)).run()
            con = duckdb.connect()
            con.execute("SET VARIABLE root = ?", [root])
            has_records = bool((await catalog.Reader(store).head()).pairs)
            for stmt in DUCKDB_RECIPE.format(records=RECORDS if has_records else "").split(";"):
                if stmt.strip():
                    con.execute(stmt)
            got = con.execute("SELECT task, host, run_id, status, exit_code, started_ns, ended_ns, size, lines, "
                              "list_sort(list_transform(map_entries(labels), e -> e.key || '=' || e.value)), command "
                              "FROM logs ORDER BY started_ns DESC, task, host").fetchall()
            want = [(r["task"], r["host"], r["run_id"], r["status"], r["exit_code"], r["started_ns"], r["ended_ns"],
                     r["size"], r["lines"], sorted(f"{k}={v}" for k, v in r["labels"].items()), r["command"])
                    for r in a.expected(Filters())]
            assert got == want, compacted
            assert has_records != compacted
    finally:
        await store.close()


async def test_store_list_page(store: Store) -> None:
    """The one-page LIST the running listing uses, on every backend: after a key, at most N, in key order."""
    keys = [f"catalog/v1/running/{i:03d}" for i in range(12)] + ["catalog/v1/runningx", "other/1"]
    for k in keys:
        await store.put(k, b"")
    prefix = names.CATALOG_RUNNING
    assert [o.key for o in await store.list_page(prefix, "", 5)] == keys[:5]
    assert [o.key for o in await store.list_page(prefix, keys[4], 5)] == keys[5:10]
    assert [o.key for o in await store.list_page(prefix, keys[9], 5)] == keys[10:12]
    assert [o.key for o in await store.list_page(prefix, "catalog/v1/running/005x", 1000)] == keys[6:12]
    assert await store.list_page(prefix, keys[11]) == []
