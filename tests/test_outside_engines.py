"""Outside engines see what logship sees: plain DuckDB and pyarrow.dataset, following docs/query.md's recipes
(run from the doc's own text) over the published set, read exactly `logship query`'s lines — after copies,
after compaction, while compaction and gc run — and a garbage snapshot is an error that names it.

Only the writing side (agents, watcher, compaction, gc) and the reference answer (`logship query`'s Database) use
logship's code; the outside readers use duckdb, duckdb_ext and pyarrow alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs  # type: ignore[import-untyped]
import pytest

from shipper.config import Config
from shipper.format import names
from shipper.query.compact import Compactor, Settings
from shipper.query.engine import Database
from shipper.retention.gc import Collector, Policy
from shipper.store import open_store
from shipper.watcher import watch

from .support import ROOT, MakeConfig, agent_env, run_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")

COLS = "task, host, seq, line_no, stream, byte_offset, byte_end, partial, line, date"
DOC = (ROOT / "docs" / "query.md").read_text()


def recipe(name: str) -> str:
    m = re.search(rf"<!-- recipe: {name} -->\n```\w+\n(.*?)```", DOC, re.S)
    assert m, f"docs/query.md has no recipe {name}"
    return m.group(1)


async def ship(cfg: Config, tasks: list[str], lines: int = 30, labels: tuple[str, ...] = ()) -> None:
    script = f'for i in $(seq 1 {lines}); do echo "out $i of $0"; echo "err $i" >&2; done'
    args = [a for label in labels for a in ("--label", label)]
    for task in tasks:
        res = run_agent(cfg.spool_dir, task, ["sh", "-c", script, task], env=agent_env(cfg), args=args)
        assert res.returncode == 0, res.stderr
    await watch(cfg, once=True)


def digest(rows: list[tuple[Any, ...]]) -> tuple[int, str]:
    """Count and content hash of rows (order-free): what two engines must agree on."""
    norm = sorted(tuple(str(v) for v in r) for r in rows)
    return len(norm), hashlib.sha256(json.dumps(norm).encode()).hexdigest()


def logship_rows(cfg: Config) -> tuple[int, str]:
    db = Database(cfg)
    try:
        result = db.execute(f"SELECT {COLS} FROM lines")
        return digest([tuple(json.loads(o).values()) for batch in result.fetch_json() for o in batch])
    finally:
        db.close()


def _root(cfg: Config) -> str:
    if cfg.store.url.startswith("s3://"):
        return cfg.store.url.rstrip("/") + "/"
    return str(Path(cfg.store.url.removeprefix("file://")).absolute()) + "/"


def duckdb_rows(cfg: Config) -> tuple[int, str]:
    """docs/query.md's DuckDB recipe, as written, in a plain DuckDB."""
    root = _root(cfg)
    con = duckdb.connect()
    try:
        if root.startswith("s3://"):
            import duckdb_ext

            duckdb_ext.init(con)
            endpoint = re.sub(r"^https?://", "", cfg.store.endpoint or "").rstrip("/")
            con.execute(recipe("duckdb-connect").replace("ACCESS_KEY", cfg.store.access_key or "")
                        .replace("SECRET_KEY", cfg.store.secret_key or "").replace("ENDPOINT_HOST_PORT", endpoint)
                        .replace("s3://BUCKET/PREFIX/", root))
        con.execute(recipe("duckdb-lines").replace("s3://BUCKET/PREFIX/", root))
        return digest(con.execute(f"SELECT {COLS} FROM lines").fetchall())
    finally:
        con.close()


def pyarrow_rows(cfg: Config) -> tuple[int, str]:
    """docs/query.md's pyarrow.dataset recipe, as written."""
    scope: dict[str, Any] = {}
    exec(compile(recipe("pyarrow"), "docs/query.md", "exec"), scope)  # noqa: S102 - the doc's own code
    root = _root(cfg)
    fs: Any
    if root.startswith("s3://"):
        endpoint = cfg.store.endpoint or ""
        fs = pafs.S3FileSystem(access_key=cfg.store.access_key, secret_key=cfg.store.secret_key,
                               endpoint_override=re.sub(r"^https?://", "", endpoint).rstrip("/"),
                               scheme="https" if endpoint.startswith("https") else "http", region=cfg.store.region)
        root = root.removeprefix("s3://")
    else:
        fs = pafs.LocalFileSystem()
    table = scope["live_lines"](fs, root).to_table(columns=[c.strip() for c in COLS.split(",")])
    return digest(list(zip(*(table[c].to_pylist() for c in table.column_names), strict=True)))


def same_everywhere(cfg: Config) -> tuple[int, str]:
    want = logship_rows(cfg)
    assert duckdb_rows(cfg) == want
    assert pyarrow_rows(cfg) == want
    return want


async def test_outside_engines_read_what_logship_reads(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    await ship(cfg, [f"s{i}" for i in range(6)])
    await ship(cfg, ["big"], lines=2000)  # above small_bytes: stays a copy beside the part
    store = open_store(cfg.store)
    try:
        # Copies only: the first snapshot says "no parts" (nothing is small enough to merge at 1 KiB).
        assert (await Compactor(store, Settings(1 << 10, 32 << 20, 0)).run()).parts_written == 0
        assert same_everywhere(cfg)[0] == 6 * 60 + 4000
        before = logship_rows(cfg)
        # Compaction: the six copies become one part (and are deleted), the glob alone now misses them.
        c = Compactor(store, Settings(16 << 10, 32 << 20, 0))
        stats = await c.run()
        assert stats.parts_written == 1 and stats.objects_deleted == 0
        assert same_everywhere(cfg) == before  # part written, copies still there: hidden, read once
        assert (await c.run(merge=False)).objects_deleted == 6
        assert same_everywhere(cfg) == before
        plain = duckdb.connect().execute(  # what plain DuckDB reading the glob loses: the point of the set
            f"SELECT count(*) FROM read_parquet('{_root(cfg)}lines/**/*.parquet')").fetchone() if not \
            cfg.store.url.startswith("s3://") else (4000,)
        assert plain == (4000,)
        # New copies count at once, with no new snapshot.
        await ship(cfg, ["later"])
        assert same_everywhere(cfg)[0] == before[0] + 60
        # gc: the log leaves every reader's answer whole; its lines in the part are rewritten away.
        await ship(cfg, ["doomed"], labels=("victim=1",))
        c2 = Compactor(store, Settings(16 << 10, 32 << 20, 0))
        await c2.run()
        await c2.run(merge=False)
        with_doomed = same_everywhere(cfg)
        report = await Collector(store, cfg, grace_s=0).run(Policy(0, labels=(("victim", "1"),)))
        assert report.deleted_logs == 1
        assert same_everywhere(cfg)[0] == with_doomed[0] - 60
    finally:
        await store.close()


# Real seconds: readers run all along, so the grace is waited out for real. A compaction drops a plan older than
# half of it (shipper/query/compact.py, PLAN_AGE_SHARE): 1.5 s was less than a listing and a merge took on a
# loaded CI machine, and one of the two racing compactions wrote nothing.
GRACE = 10.0


async def test_outside_engines_while_compaction_and_gc_run(make_config: MakeConfig) -> None:
    """Readers of both engines all along, while two compactions race and gc deletes a log: every answer is the
    archive's, whole, with the doomed log whole or not at all."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS=str(GRACE))
    await ship(cfg, [f"busy{i}" for i in range(8)])
    await ship(cfg, ["doomed"], labels=("victim=1",))
    store = open_store(cfg.store)
    try:
        await Compactor(store, Settings(1 << 10, 32 << 20, GRACE)).run()  # the first snapshot: copies only
        full = same_everywhere(cfg)
        stop = threading.Event()
        answers: dict[str, list[tuple[int, str]]] = {"duckdb": [], "pyarrow": []}
        errors: list[BaseException] = []

        def reader(name: str) -> None:
            fn = duckdb_rows if name == "duckdb" else pyarrow_rows
            while not stop.is_set():
                try:
                    answers[name].append(fn(cfg))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=reader, args=(n,)) for n in answers]
        for t in threads:
            t.start()
        settings = Settings(16 << 10, 32 << 20, GRACE)
        a, b = Compactor(store, settings), Compactor(store, settings)
        runs = await asyncio.gather(a.run(), b.run())
        assert sum(r.parts_written for r in runs) == 2  # both merged the same copies: one part wins
        gc = Collector(store, cfg, grace_s=GRACE)
        report = await gc.run(Policy(0, labels=(("victim", "1"),)))  # waits its grace, rewrites the part
        assert report.deleted_logs == 1
        await asyncio.sleep(2 * GRACE + 0.2)
        await a.run(merge=False)  # whatever gc's own runs left to finish
        await asyncio.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(120)
        assert not errors, errors
        after = same_everywhere(cfg)
        assert after[0] == full[0] - 60
        for name, got in answers.items():
            assert len(got) >= 3, (name, len(got))
            assert set(got) <= {full, after}, name
        assert not [o for o in await store.list("lines/") if names.parse_lines_key(o.key)]  # all compacted
    finally:
        await store.close()


async def test_a_garbage_snapshot_is_an_error_that_names_it(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    await ship(cfg, ["g1", "g2"])
    store = open_store(cfg.store)
    try:
        c = Compactor(store, Settings(16 << 10, 32 << 20, 0))
        await c.run()
        want = same_everywhere(cfg)
        for body in (b"garbage{", b"", b'{"version": 1, "files": 5}', b"[1, 2]",
                     b'{"version":1,"files":[],"hidden":[],"gone":[]}\n{"version":1,"files":[],"hidden":[],"gone":[]}'):
            key = names.live_key(time.time_ns(), "0badc0de")
            await store.put(key, body)
            for fn in (duckdb_rows, pyarrow_rows):
                with pytest.raises((duckdb.Error, ValueError)) as err:
                    fn(cfg)
                assert key in str(err.value), (fn.__name__, body, err.value)
            # The next compaction run reports it and deletes it: readers read the good one again.
            await c.run()
            assert key not in {o.key for o in await store.list(names.LIVE_PREFIX)}
            assert same_everywhere(cfg) == want
    finally:
        await store.close()


async def test_nothing_a_snapshot_in_use_reads_is_deleted(make_config: MakeConfig) -> None:
    """A part whose compaction died before publishing: its copies stay while the older snapshot (which reads them)
    may be in use — until 1.5 grace periods after the listing of the snapshot that hides them."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    await ship(cfg, ["u1", "u2"])
    # The clock below is moved by hand, so a long grace costs no time; and the real time a step may take (a
    # listing older than half of it is not published, shipper/query/published.py) is ample on a loaded machine.
    grace = 60.0
    offset = [0]

    def clock() -> int:
        return time.time_ns() + offset[0]

    store = open_store(cfg.store)
    try:
        c = Compactor(store, Settings(16 << 10, 32 << 20, grace), clock=clock)
        assert await c.publish() is not None  # S0: the copies
        assert (await c.merge(await c.state(), set())).parts_written == 1  # the part, not published
        want = same_everywhere(cfg)
        offset[0] = int(3 * grace * 1e9)  # the part is due by its age...
        assert (await c.finish(await c.state())).waiting == 1  # ...but S0, the newest, reads its copies
        assert await c.publish() is not None  # S1 hides them
        assert (await c.finish(await c.state())).waiting == 1  # a reader may have chosen S0 just before
        offset[0] += int(1.6 * grace * 1e9)
        assert (await c.finish(await c.state())).objects_deleted == 2
        assert same_everywhere(cfg) == want
    finally:
        await store.close()
