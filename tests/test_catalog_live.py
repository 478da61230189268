"""live/ entries (a running run's sealed size, lines and silence: docs/format.md, "Catalog"): compaction
deletes the ones no reader uses, also when killed -9 between any two deletions, and `logship catalog
rebuild` writes them for running logs."""

from __future__ import annotations

import secrets
import subprocess
import time
from typing import Any

from shipper import catalog
from shipper.catalog import Filters, Settings, rows
from shipper.format import manifest, names
from shipper.format.liveness import Liveness
from shipper.format.manifest import Manifest, Segment
from shipper.store import Store, open_store

from .support import LOGSHIP, MakeConfig, agent_env, logship_killed_after_deletes

DAY = 86_400 * 10**9
BASE = (time.time_ns() // DAY - 1) * DAY


def segments(k: int) -> list[Segment]:
    """k sealed segments of 1,000 bytes and 20 lines each."""
    return [Segment(seq=i + 1, offset=1000 * i, raw_size=1000, stored_size=420, index_size=40, sha256="0" * 64,
                    compression="zstd", first_ts=BASE, last_ts=BASE + 1, lines=20, chunks=(i + 1, i + 1))
            for i in range(k)]


def running(i: int, k: int, ago_s: float = 0) -> Manifest:
    run = {"task": f"job-{i:03d}", "host": f"h{i % 3}", "run_id": secrets.token_hex(16),
           "started_ns": BASE + i * 10**9, "command": ["job", str(i)], "labels": {"n": str(i % 2)}}
    return Manifest.build(run, None, manifest.RUNNING, segments(k), None, [], "zstd").replace(
        size=1000 * k + 10, lines=20 * k + 1, updated_ns=time.time_ns() - int(ago_s * 1e9))


async def checkpoint(store: Store, doc: Manifest, k: int, *, restarted: bool = True,
                     writer: catalog.Writer | None = None, ago_s: float = 0) -> Manifest:
    """The watcher stores `doc` with `k` sealed segments and notes it (`ago_s` seconds ago, by the version it
    writes); `restarted`: by a new process, which does not know the live entry the one before wrote (the
    leftovers this file is about)."""
    doc = doc.replace(segments=tuple(segments(k)), size=1000 * k + 10, lines=20 * k + 1,
                      updated_ns=max(time.time_ns() - int(ago_s * 1e9), (doc.updated_ns or 0) + 1))
    await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
    await (catalog.Writer(store) if restarted or writer is None else writer).note(doc)
    return doc


async def finish(store: Store, doc: Manifest, ago_s: float = 0) -> Manifest:
    doc = doc.replace(status=manifest.FINISHED, exit_code=0, ended_ns=doc.started_ns + 10**9,
                      updated_ns=max(time.time_ns() - int(ago_s * 1e9), (doc.updated_ns or 0) + 1))
    await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
    await catalog.Writer(store).note(doc)
    return doc


async def live_keys(store: Store) -> list[str]:
    return [o.key for o in await store.list(names.CATALOG_LIVE)]


def expected(docs: dict[tuple[str, str], Manifest], f: Filters) -> list[dict[str, Any]]:
    got = sorted((rows.from_manifest(d) for d in docs.values()), key=lambda r: r.order)
    return [r.listing() for r in got if f.fixed(r) and f.final(r)]


async def everything(store: Store, f: Filters) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    reader = catalog.Reader(store)  # a fresh one: nothing cached
    while True:
        page, cursor = await reader.page(f, cursor, 1000)
        out += page
        if cursor is None:
            return out


async def test_compaction_deletes_leftover_live_entries(store: Store) -> None:
    """A run that checkpointed k times (a watcher restarted each time) then finished leaves no live entry
    after a compaction past grace; a running run keeps its newest, and its older ones go once that newest
    is older than grace. The listing shows the same rows before and after."""
    done, kept = running(1, 0, ago_s=7300), running(2, 0)
    for k in range(1, 5):
        done = await checkpoint(store, done, k, ago_s=7200 - k)  # two hours ago
        kept = await checkpoint(store, kept, k)
    assert len(await live_keys(store)) == 8
    done = await finish(store, done, ago_s=7000)
    docs = {(d.task, d.host): d for d in (done, kept)}
    before = await everything(store, Filters(status="running"))
    assert before == expected(docs, Filters(status="running")) and before[0]["size"] == 4000

    # grace not yet over for the running run's newest entry: only the finished run's entries go
    st = await catalog.Compactor(store, Settings(grace_s=3600)).run()
    assert st.live_deleted == 4
    assert {rows.parse_live(k[len(names.CATALOG_LIVE):])[0] for k in await live_keys(store)} == {
        rows.from_manifest(kept).run}
    assert await everything(store, Filters(status="running")) == before
    st = await catalog.Compactor(store, Settings(grace_s=0)).run()
    assert st.live_deleted == 3
    assert await live_keys(store) == [names.catalog_live_key(rows.live_name(rows.from_manifest(kept)))]
    for f in (Filters(), Filters(status="running")):
        assert await everything(store, f) == expected(docs, f)
    # nothing left to do: a further compaction lists live/ and running/, deletes nothing
    assert (await catalog.Compactor(store, Settings(grace_s=0)).run()).live_deleted == 0

    # one watcher that never restarts leaves nothing behind either: it deletes its own entry before
    one = catalog.Writer(store)
    solo = running(3, 0)
    for k in range(1, 4):
        solo = await checkpoint(store, solo, k, restarted=False, writer=one)
    assert len(await live_keys(store)) == 2
    solo = solo.replace(status=manifest.FINISHED, exit_code=0, ended_ns=solo.started_ns + 1, updated_ns=time.time_ns())
    await store.put(names.manifest_key(solo.task, solo.host), solo.dump())
    await one.note(solo)
    assert len(await live_keys(store)) == 1


async def test_live_entries_a_reader_may_still_use_are_kept(store: Store) -> None:
    """A running run's newest entry stays whatever its age; a run that finished less than grace ago keeps
    its entries (a reader may have listed its running/ entry just before); a garbage key under live/ is
    reported and left alone."""
    old = await checkpoint(store, running(4, 0, ago_s=7300), 2, ago_s=7200)
    just = await finish(store, await checkpoint(store, running(5, 0, ago_s=7300), 1, ago_s=7200))
    await store.put(names.CATALOG_LIVE + "not-a-live-entry", b"")
    st = await catalog.Compactor(store, Settings(grace_s=60)).run()
    assert st.live_deleted == 0 and names.CATALOG_LIVE + "not-a-live-entry" in st.bad
    assert len(await live_keys(store)) == 3
    assert (await catalog.Compactor(store, Settings(grace_s=60), clock=lambda: time.time_ns() + 61 * 10**9).run()
            ).live_deleted == 1
    assert sorted(await live_keys(store)) == sorted([names.CATALOG_LIVE + "not-a-live-entry", names.catalog_live_key(
        rows.live_name(rows.from_manifest(old)))])
    assert rows.from_manifest(just).status == manifest.FINISHED


def compact(cfg: Any, kill_after: int | None) -> subprocess.CompletedProcess[str]:
    cmd = LOGSHIP if kill_after is None else logship_killed_after_deletes(kill_after)
    return subprocess.run([*cmd, "catalog", "compact"], env=agent_env(cfg), capture_output=True, text=True,
                          timeout=300)


async def test_kill_9_of_compaction_at_every_deletion(make_config: MakeConfig) -> None:
    """Compaction killed -9 at its 1st, 2nd, … deletion (running/ entries, records, live/ entries, before
    and after the summary): every listing in between is the manifests', and the run that ends leaves only
    the live entries of running runs, the newest of each."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    store = open_store(cfg.store)
    try:
        docs: dict[tuple[str, str], Manifest] = {}
        for i in range(6):
            doc = running(10 + i, 0)
            for k in range(1, 3 + i % 2):
                doc = await checkpoint(store, doc, k)
            if i % 2:
                doc = await finish(store, doc)
            docs[(doc.task, doc.host)] = doc
        assert len(await live_keys(store)) == 15
        n = 0
        while (res := compact(cfg, n)).returncode != 0:
            assert res.returncode == -9, res.stderr
            for f in (Filters(), Filters(status="running")):
                assert await everything(store, f) == expected(docs, f), n
            n += 1
        assert n >= 6, "every deletion point was tried"
        assert compact(cfg, None).returncode == 0
        assert sorted(await live_keys(store)) == sorted(
            names.catalog_live_key(rows.live_name(rows.from_manifest(d))) for d in docs.values()
            if d.status == manifest.RUNNING)
        for f in (Filters(), Filters(status="running")):
            assert await everything(store, f) == expected(docs, f)
    finally:
        await store.close()


async def test_rebuild_writes_live_entries_of_running_logs(make_config: MakeConfig) -> None:
    """After `logship catalog rebuild` of an archive the catalog never saw, `status=running` shows running
    logs with their sealed size, lines and silence; a second rebuild writes the same keys."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    store = open_store(cfg.store)
    try:
        docs = {}
        for i in range(5):
            doc = running(20 + i, i)  # 0 … 4 sealed segments; the first has no live entry (nothing sealed)
            if i == 3:  # silent for ten minutes, as the watcher copies the agent's liveness.json
                doc = doc.replace(liveness=silent_liveness())
            await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
            docs[(doc.task, doc.host)] = doc
        res = subprocess.run([*LOGSHIP, "catalog", "rebuild"], env=agent_env(cfg), capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        want = sorted(names.catalog_live_key(rows.live_name(r)) for r in map(rows.from_manifest, docs.values())
                      if r.size)
        assert sorted(await live_keys(store)) == want and len(want) == 4
        got = await everything(store, Filters(status="running"))
        assert got == expected(docs, Filters(status="running"))
        assert sorted(r["size"] for r in got) == [0, 1000, 2000, 3000, 4000]
        assert [r["task"] for r in got if r["silent_since_ns"]] == ["job-023"]
        res = subprocess.run([*LOGSHIP, "catalog", "rebuild", "--fresh"], env=agent_env(cfg), capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert sorted(await live_keys(store)) == want
    finally:
        await store.close()


def silent_liveness() -> Liveness:
    now = time.time_ns()
    return Liveness(written_ns=now, last_output_ns=now - 600 * 10**9, sampled_ns=None, cpu_seconds=None)


async def test_a_log_finished_during_rebuild_keeps_no_running_entry(store: Store) -> None:
    """rebuild reads a running log's manifest, then writes its running/ and live/ entries; a watcher that commits
    the log's end in between (and whose final record a compaction folds, deleting the running/ entry it saw)
    must not leave `status=running` showing it for good: rebuild reads the manifest again after its PUTs and takes
    the entries back. Paused for real: the log is finished, and compacted, at rebuild's first running/ PUT."""
    doc = await checkpoint(store, running(30, 0), 2)  # a sealed segment: a live/ entry too
    other = await checkpoint(store, running(31, 0), 1)  # runs on: its entries stay
    real = store.put
    ended: list[Manifest] = []

    async def put_after_the_end(key: str, data: bytes | memoryview, *, checked: bool = False,
                                sha256: bytes | None = None) -> None:
        if key.startswith(names.CATALOG_RUNNING) and f"~{doc.task}~" in key and not ended:
            ended.append(await finish(store, doc))  # the watcher's commit, record, and DELETE of running/
            for _ in range(2):  # folded into a part, and the record deleted (its running/ DELETE repeated)
                await catalog.Compactor(store, Settings(grace_s=0)).run()
        await real(key, data, checked=checked, sha256=sha256)

    store.put = put_after_the_end  # type: ignore[method-assign]
    try:
        await catalog.rebuild(store, grace_s=0)
    finally:
        store.put = real  # type: ignore[method-assign]
    assert ended, "the rebuild wrote no running/ entry of the log"
    docs = {(d.task, d.host): d for d in (ended[0], other)}
    for f in (Filters(), Filters(status="running")):
        assert await everything(store, f) == expected(docs, f)
    assert [o.key for o in await store.list(names.CATALOG_RUNNING)] == [
        names.catalog_running_key(rows.running_name(rows.from_manifest(other)))]
    await catalog.Compactor(store, Settings(grace_s=0)).run()
    assert await live_keys(store) == [names.catalog_live_key(rows.live_name(rows.from_manifest(other)))]
    assert (await catalog.check(store)).clean
