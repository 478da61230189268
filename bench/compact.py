"""Small objects: 10,000 logs of 1 KB each, before and after `logship compact` (docs/query.md).

`python -m bench.compact [--logs N] [--runs R] [--only file,s3]` (from the repo root). Each log's query
copy is built by the watcher's own code (shipper.query.copies.build) and stored with a finished manifest
that marks it copied — straight into a file store and into a local SeaweedFS, without running 10,000
agents. Then, before and after one compaction (query.grace_seconds = 0: nothing else reads meanwhile):
- objects under lines/ and compact/, and their bytes;
- listing: the store's listing of lines/ and compact/ (what the `lines` view's globs list per query);
- query: a fresh sandboxed Database, as `logship query` opens one, answering a search over every line
  (open + query, and the same query again warm), and how many objects DuckDB opened for it;
- the compaction itself (merge, then delete what the parts replace).
On SeaweedFS, "after" waits until the folders the deletions emptied are gone (it removes them lazily,
and walks them when listing until then).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from ._util import DEFAULT_WORKDIR, ROOT, Series, rmtree, say

NEEDLE = "rollback snapshot"
HOST = "bench"
PUT_CONCURRENCY = 32
SEARCH = f"SELECT count(*) FROM lines WHERE contains(line, '{NEEDLE}')"
WORDS = ["the", "of", "connection", "request", "retry", "timeout", "chunk", "segment", "table", "index", "user",
         "session", "token", "replica", "shard", "batch", "commit", "rollback", "snapshot", "volume", "block", "file",
         "record", "cursor", "page", "lease", "heartbeat"]


def log_text(r: random.Random, i: int, size: int) -> bytes:
    """About `size` bytes of log lines; one log in ten says NEEDLE once."""
    lines: list[str] = []
    n = 0
    while sum(map(len, lines)) < size - 100:
        words = " ".join(r.choice(WORDS) for _ in range(9))
        if words.find(NEEDLE) >= 0 and i % 10:
            words = words.replace(NEEDLE, "rollback")  # keep the count of hits exact
        lines.append(f"2026-11-27T03:{n % 60:02d}:00Z INFO job {i} step {n}: {words}\n")
        n += 1
    if i % 10 == 0:
        lines.append(f"2026-11-27T03:59:59Z WARN job {i}: {NEEDLE} failed, retrying\n")
    return "".join(lines).encode()


async def fill(store: Any, logs: int, size: int) -> tuple[int, int]:
    """Write `logs` finished logs of ~`size` bytes: their query copies and manifests. Returns (copies, bytes)."""
    from shipper.format import manifest, names
    from shipper.format.index import STDOUT, Chunk
    from shipper.query import copies

    r = random.Random(7)
    t0 = time.time_ns() - 3600 * 10**9
    sem = asyncio.Semaphore(PUT_CONCURRENCY)
    total = 0

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await store.put(key, data)

    pending: list[asyncio.Task[None]] = []
    for i in range(logs):
        task = f"job-{i:05d}"
        data = log_text(r, i, size)
        ts = t0 + i * 10**6
        chunks = [Chunk(1, ts, 0, len(data), data.count(b"\n"), STDOUT, 0)]
        copy = copies.build(data, chunks, task, HOST, 1, 1)
        entry = dataclasses.replace(manifest.Segment.build(1, chunks, len(data), 40, hashlib.sha256(data).hexdigest(),
                                                           "none"), query_copy=True)
        run = {"task": task, "host": HOST, "run_id": f"bench-{i}", "started_ns": ts, "command": ["bench"]}
        doc = manifest.Manifest.build(run, {"exit_code": 0, "ended_ns": ts + 10**9}, manifest.FINISHED, [entry], None,
                                      [], "none")
        total += len(copy.data)
        pending.append(asyncio.create_task(put(copy.key, copy.data)))
        pending.append(asyncio.create_task(put(names.manifest_key(task, HOST), doc.dump())))
        if len(pending) >= 4 * PUT_CONCURRENCY:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return logs, total


async def settle(store: Any, limit_s: float = 300.0) -> float:
    """Wait until the store lists lines/ quickly again. SeaweedFS removes the folders that deletions
    emptied lazily (within ≈ 2 minutes here), and walks them when it lists until then; S3 has no folders."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit_s:
        t = time.perf_counter()
        await store.list("lines/")
        if time.perf_counter() - t < 0.05:
            break
        await asyncio.sleep(5)
    waited = time.perf_counter() - began
    say(f"compact: waited {waited:.0f} s for the store to drop emptied folders")
    return waited


async def count(store: Any) -> dict[str, float]:
    """Objects and bytes a query of `lines` may list, and the time to list them."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    lines = await store.list("lines/")
    parts = await store.list("compact/")
    out["list_s"] = time.perf_counter() - t
    out["objects"] = len(lines) + len(parts)
    out["bytes"] = sum(o.size for o in lines + parts)
    return out


def query(cfg: Any) -> dict[str, float]:
    """A fresh Database answering SEARCH (open + query; then warm), and the objects DuckDB opened."""
    from shipper.query.engine import Database

    t = time.perf_counter()
    db = Database(cfg)
    try:
        hits = [b for b in db.execute(SEARCH).fetch_text()][0][0][0]
        cold = time.perf_counter() - t
        t = time.perf_counter()  # again, warm: profiled, which also counts the objects opened
        cur = db.cursor()
        profile = cur.sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {SEARCH}").fetchall()[0][1]
        cur.close()
        warm = time.perf_counter() - t
    finally:
        db.close()
    read = sum(int(n) for n in re.findall(r'"Total Files Read": "(\d+)"', profile))
    return {"cold_s": cold, "warm_s": warm, "files_read": read, "hits": float(hits or 0)}


async def bench_store(name: str, cfg: Any, logs: int, size: int, runs: int) -> dict[str, Any]:
    from shipper.query.compact import Compactor, Settings
    from shipper.store import open_store

    store = open_store(cfg.store)
    res: dict[str, Any] = {"store": name}
    try:
        t = time.perf_counter()
        res["copies"], res["copy_bytes"] = await fill(store, logs, size)
        res["fill_s"] = time.perf_counter() - t
        say(f"compact/{name}: {logs} logs written in {res['fill_s']:.1f} s")
        for phase in ("before", "after"):
            if phase == "after":
                c = Compactor(store, Settings(cfg.compact.small_bytes, cfg.compact.part_bytes, 0.0))
                t = time.perf_counter()
                merged = await c.run()
                finished = await c.run(merge=False)
                res["compact_s"] = time.perf_counter() - t
                res["compaction"] = {"inputs": merged.inputs_merged, "parts": merged.parts_written,
                                     "rows": merged.rows_written, "deleted": finished.objects_deleted}
                say(f"compact/{name}: {merged.inputs_merged} copies into {merged.parts_written} parts in "
                    f"{res['compact_s']:.1f} s")
                if name == "s3":
                    res["settle_s"] = await settle(store)
            series: dict[str, Series] = {k: Series(f"{phase} {k}", "s") for k in ("list_s", "cold_s", "warm_s")}
            for _ in range(runs):
                counted = await count(store)
                series["list_s"].samples.append(counted["list_s"])
                q = await asyncio.to_thread(query, cfg)
                series["cold_s"].samples.append(q["cold_s"])
                series["warm_s"].samples.append(q["warm_s"])
            res[phase] = {"objects": counted["objects"], "bytes": counted["bytes"], "files_read": q["files_read"],
                          "hits": q["hits"], **{k: s.to_json() for k, s in series.items()}}
            say(f"compact/{name} {phase}: {counted['objects']:.0f} objects, list {series['list_s'].spread(3)} s, "
                f"query {series['cold_s'].spread(3)} s (warm {series['warm_s'].spread(3)} s), "
                f"{q['files_read']:.0f} objects read, {q['hits']:.0f} hits")
    finally:
        await store.close()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compact", description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=1024, help="bytes of each log (default 1024)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of each measurement (default 3)")
    ap.add_argument("--only", default="file,s3", help="stores: file, s3 (a local SeaweedFS)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)
    import os

    from shipper.commands import s3local
    from shipper.config import load_config

    os.chdir(ROOT)
    work = args.workdir / "compact"
    rmtree(work)
    work.mkdir(parents=True)
    results = []
    try:
        for name in args.only.split(","):
            # 10,000 objects over HTTP take longer than the default 30 s limit of a query
            env = {"LOGSHIP_SPOOL_DIR": str(work / "spool"), "LOGSHIP_QUERY_GRACE_SECONDS": "0",
                   "LOGSHIP_QUERY_TIMEOUT_SECONDS": "3600"}
            s3 = None
            if name == "file":
                env["LOGSHIP_STORE_URL"] = f"file://{(work / 'archive').absolute()}"
            elif name == "s3":
                s3 = s3local.start(work / "s3")
                env.update({"LOGSHIP_STORE_URL": f"s3://{s3.bucket}/bench-compact/",
                            "LOGSHIP_STORE_ENDPOINT": s3.endpoint, "LOGSHIP_STORE_ACCESS_KEY": s3.access_key,
                            "LOGSHIP_STORE_SECRET_KEY": s3.secret_key})
            else:
                raise SystemExit(f"bench.compact: unknown store {name!r} (file, s3)")
            try:
                results.append(asyncio.run(bench_store(name, load_config(env=env), args.logs, args.size, args.runs)))
            finally:
                if s3 is not None:
                    s3local.stop(s3)
    finally:
        rmtree(work)
    print(f"\n{args.logs} logs of {args.size} bytes; medians of {args.runs} rounds (min-max)")
    print(f"{'store':<6} {'phase':<7} {'objects':>8} {'MB':>6} {'list, s':>22} {'query, s':>22} {'warm, s':>22} "
          f"{'read':>6}")
    for r in results:
        for phase in ("before", "after"):
            p = r[phase]
            cells = [_spread(p[k]) for k in ("list_s", "cold_s", "warm_s")]
            print(f"{r['store']:<6} {phase:<7} {p['objects']:>8.0f} {p['bytes'] / 1e6:>6.2f} {cells[0]:>22} "
                  f"{cells[1]:>22} {cells[2]:>22} {p['files_read']:>6.0f}")
        print(f"{r['store']:<6} compaction: {r['compaction']['inputs']} copies into {r['compaction']['parts']} parts "
              f"in {r['compact_s']:.1f} s; hits before/after {r['before']['hits']:.0f}/{r['after']['hits']:.0f}"
              + (f"; 'after' measured {r['settle_s']:.0f} s later, once SeaweedFS dropped the emptied folders"
                 if "settle_s" in r else ""))
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-compact.json"
    (out / name).write_text(json.dumps({"logs": args.logs, "size": args.size, "results": results}, indent=1) + "\n")
    print(f"\nwritten: bench/out/{name}")
    return 0 if all(r["before"]["hits"] == r["after"]["hits"] for r in results) else 1


def _spread(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


if __name__ == "__main__":
    sys.exit(main())
