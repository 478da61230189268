"""Compaction: small query copies merged into parts; every query sees each line once, before, during and after."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from shipper.config import Config
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.query.compact import Compactor, Settings
from shipper.query.engine import Database
from shipper.store import ObjectInfo, open_store
from shipper.watcher import watch

from .support import LOGSHIP, MakeConfig, agent_env, logship_killed_after_deletes, run_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = {"LOGSHIP_QUERY_GRACE_SECONDS": "0", "LOGSHIP_COMPACT_SMALL_BYTES": "16KiB"}
ROWS = ("SELECT task, host, seq, line_no, ts, stream, byte_offset, byte_end, partial, truncated, line, date "
        "FROM lines ORDER BY task, host, seq, line_no, stream")


async def ship(cfg: Config, tasks: list[str], lines: int = 40) -> None:
    """Small logs through real agents and one watcher pass: one copy each, both streams."""
    script = f'for i in $(seq 1 {lines}); do echo "out $i of $0"; echo "err $i" >&2; done'
    for task in tasks:
        assert run_agent(cfg.spool_dir, task, ["sh", "-c", script, task], env=agent_env(cfg)).returncode == 0
    await watch(cfg, once=True)


def table(cfg: Config, sql: str = ROWS) -> list[tuple[Any, ...]]:
    db = Database(cfg)
    try:
        result = db.execute(sql)
        return [tuple(json.loads(o).values()) for batch in result.fetch_json() for o in batch]
    finally:
        db.close()


def files_read(cfg: Config, sql: str) -> int:
    """How many objects DuckDB opens to answer `sql` (its own profile says)."""
    db = Database(cfg)
    try:
        cur = db.cursor()
        profile = cur.sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchall()[0][1]
        cur.close()
    finally:
        db.close()
    return sum(int(n) for n in re.findall(r'"Total Files Read": "(\d+)"', profile))


async def listing(cfg: Config, prefix: str) -> list[ObjectInfo]:
    store = open_store(cfg.store)
    try:
        return await store.list(prefix)
    finally:
        await store.close()


async def copies(cfg: Config) -> list[str]:
    """Keys of the query copies under lines/ (not the rowless placeholder)."""
    return [o.key for o in await listing(cfg, "lines/") if names.parse_lines_key(o.key)]


def compact_cli(cfg: Config, kill_after_deletes: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = LOGSHIP if kill_after_deletes is None else logship_killed_after_deletes(kill_after_deletes)
    return subprocess.run([*cmd, "compact"], env=agent_env(cfg), capture_output=True, text=True, timeout=120)


async def test_compaction_keeps_every_line_and_queries_read_fewer_objects(make_config: MakeConfig) -> None:
    cfg = make_config(**NOW)
    tasks = [f"small{i}" for i in range(8)]
    await ship(cfg, tasks)
    await ship(cfg, ["large"], lines=3000)  # its copy is above compact.small_bytes: it stays as it is
    before = table(cfg)
    search = "SELECT count(*) FROM lines WHERE contains(line, 'out 7 ')"
    assert len(before) == 8 * 80 + 6000 and table(cfg, search) == [(9,)]
    assert files_read(cfg, search) == 9 and len(await copies(cfg)) == 9

    res = compact_cli(cfg)
    assert res.returncode == 0, res.stderr
    assert "compacted 8 objects of 1 dates into 1 parts (640 rows" in res.stdout and "deleted 8 objects" in res.stdout
    assert table(cfg) == before and table(cfg, search) == [(9,)]
    assert files_read(cfg, search) == 2  # the part and the large log's copy
    assert await copies(cfg) == [k for k in _keys(before) if "task=large" in k]
    parts = [o.key for o in await listing(cfg, "compact/")]
    assert len(parts) == 2 and parts[1] == names.done_key(parts[0])
    # A filter on task still reads only what holds it.
    assert files_read(cfg, "SELECT count(*) FROM lines WHERE task = 'large'") == 1

    again = compact_cli(cfg)  # nothing left to merge: nothing changes
    assert again.returncode == 0 and "into 0 parts" in again.stdout
    assert [o.key for o in await listing(cfg, "compact/")] == parts and table(cfg) == before


def _keys(rows: list[tuple[Any, ...]]) -> list[str]:
    return sorted({names.lines_key(str(r[11]), r[0], r[1], r[2]) for r in rows})


GRACE = 3.0  # a compaction's plan may be GRACE / 2 old when it writes its part: a loaded machine needs that


async def test_queries_during_compaction_see_every_line_once(make_config: MakeConfig) -> None:
    """Two compactions at once, queries all along: every answer is the archive's, whole and once."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS=str(GRACE), LOGSHIP_COMPACT_SMALL_BYTES="16KiB")
    await ship(cfg, [f"busy{i}" for i in range(10)])
    expected = table(cfg)
    stop = threading.Event()
    answers: list[bool] = []
    errors: list[tuple[BaseException, float]] = []

    def reader() -> None:
        db = Database(cfg)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result = db.execute(ROWS)
                    got = [tuple(json.loads(o).values()) for batch in result.fetch_json() for o in batch]
                except BaseException as exc:
                    errors.append((exc, time.monotonic() - started))
                    return
                answers.append(got == expected)
        finally:
            db.close()

    thread = threading.Thread(target=reader)
    thread.start()
    store = open_store(cfg.store)
    try:
        settings = Settings(16 << 10, 32 << 20, GRACE)
        a, b = Compactor(store, settings), Compactor(store, settings)
        written = 0
        for _ in range(5):  # a compaction whose plan got older than GRACE / 2 writes nothing (a loaded machine)
            runs = await asyncio.gather(a.run(), b.run())
            written = sum(r.parts_written for r in runs)
            if written:
                break
        assert written in (1, 2)  # both merged the same copies (one part wins), or one gave its stale plan up
        st = await a.state()
        assert len(st.snapshot.shown) == 1 and len(st.snapshot.losers) == written - 1
        await asyncio.sleep(2 * GRACE + 0.2)
        done = await a.run(merge=False)
        assert done.objects_deleted == 10 + written - 1  # the copies, and the part that lost
    finally:
        await store.close()
        await asyncio.sleep(0.5)
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(answers) >= 5 and all(answers), answers
    assert not await copies(cfg) and table(cfg) == expected


async def test_a_compaction_killed_half_way_is_finished_by_the_next_run(make_config: MakeConfig) -> None:
    cfg = make_config(**NOW)
    await ship(cfg, [f"k{i}" for i in range(6)])
    expected = table(cfg)
    res = compact_cli(cfg, kill_after_deletes=3)
    assert res.returncode == -signal.SIGKILL, (res.stdout, res.stderr)
    assert len(await copies(cfg)) == 3  # three of the six copies were deleted
    assert table(cfg) == expected
    res = compact_cli(cfg)
    assert res.returncode == 0 and "deleted 3 objects" in res.stdout, res.stdout
    assert not await copies(cfg) and table(cfg) == expected
    assert len([o for o in await listing(cfg, "compact/") if o.key.endswith(names.DONE_SUFFIX)]) == 1


async def test_only_logs_whose_copies_are_all_written_are_compacted(make_config: MakeConfig) -> None:
    """A running log, or one whose copy the watcher may still (re)write, keeps its copies as they are."""
    cfg = make_config(**NOW)
    await ship(cfg, ["done1", "done2", "running", "pending"])
    store = open_store(cfg.store)
    try:
        for task, change in (("running", {"status": manifest.RUNNING}), ("pending", None)):
            doc = Manifest.load(await store.get(names.manifest_key(task, "h1")))
            if change:
                doc = doc.replace(**change)
            else:
                doc = doc.replace(segments=(dataclasses.replace(doc.segments[0], query_copy=False), *doc.segments[1:]))
            await store.put(names.manifest_key(task, "h1"), doc.dump())
    finally:
        await store.close()
    expected = table(cfg)
    assert compact_cli(cfg).returncode == 0
    assert sorted(k.split("/")[2] for k in await copies(cfg)) == ["task=pending", "task=running"]
    assert table(cfg) == expected
