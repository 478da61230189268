"""The catalog at 100,000 logs (issue 13): listing latency and requests, rebuild speed, gc's selection.

`python -m bench --only catalog` (or `python -m bench.catalog [--logs N] [--runs R]`). Fills a local
SeaweedFS straight with N logs (a manifest and one small segment each, as bench/compact.py writes them;
1 % running): 1,000 hosts, ten hosts per task, started over the last five days. Then `logship catalog
rebuild` (logs/s), and in a fresh process (its peak RSS is what listing costs an API process) each listing
R times: newest 50, status=running, since=1h, host=, label=, page 2 — cold (a new reader each time: nothing
cached; a new process adds the S3 client's start, measured once) and warm (one reader, as the API keeps).
p50 latency and the S3 requests each one sent (StoreStats). Last, gc's selection: the 1,000 oldest logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._util import DEFAULT_WORKDIR, ROOT, OthersWindow, Series, rmtree, say

if TYPE_CHECKING:
    from shipper.format.manifest import Manifest

PUT_CONCURRENCY = 32
HOSTS = 1000
HOSTS_PER_TASK = 10
DAYS = 5
LISTINGS = ("newest 50", "status=running", "since=1h", "host=", "label=", "page 2")


def _doc(i: int, now: int, logs: int) -> Manifest:
    from shipper.format import manifest
    from shipper.format.manifest import Segment

    task_no, h = divmod(i, HOSTS_PER_TASK)
    started = now - int((logs - task_no * HOSTS_PER_TASK) / logs * DAYS * 86_400e9) + h * 1_000_000
    running = i % 100 == 7
    run = {"task": f"ibex-{100000 + task_no}", "host": f"node-{(task_no * 7 + h * 101) % HOSTS:04d}.dc1",
           "run_id": f"{i:032x}", "started_ns": started, "command": ["/bin/sh", f"/opt/jobs/job-{task_no % 500}.sh"],
           "labels": {"team": f"team-{task_no % 10}", "env": "prod" if task_no % 4 else "staging"}}
    end = None if running else {"exit_code": 0 if i % 17 else 1, "ended_ns": started + 60 * 10**9}
    seg = Segment(seq=1, offset=0, raw_size=1000, stored_size=420, index_size=40, sha256="0" * 64, compression="zstd",
                  first_ts=started, last_ts=started + 10**9, lines=20, chunks=(1, 1))
    return manifest.Manifest.build(run, end, manifest.RUNNING if running else manifest.FINISHED, [seg], None, [],
                                   "zstd")


async def fill(store: Any, logs: int, segments: bool, now: int) -> None:
    from shipper.format import names

    sem = asyncio.Semaphore(PUT_CONCURRENCY)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await store.put(key, data)

    pending: list[asyncio.Task[None]] = []
    for i in range(logs):
        d = _doc(i, now, logs)
        pending.append(asyncio.create_task(put(names.manifest_key(d.task, d.host), d.dump())))
        if segments:
            pending.append(asyncio.create_task(put(names.segment_key(d.task, d.host, 1, "zstd"), b"z" * 420)))
        if len(pending) >= 8 * PUT_CONCURRENCY:
            await asyncio.gather(*pending)
            pending = []
        if i and i % 20_000 == 0:
            say(f"catalog: {i} logs written")
    await asyncio.gather(*pending)


async def _listings(cfg: Any, runs: int, gc_until: int) -> dict[str, Any]:
    """Each listing `runs` times, cold and warm: latency (ms) and requests."""
    from shipper import catalog
    from shipper.catalog import Filters
    from shipper.format import names
    from shipper.store import open_store

    now = time.time_ns()
    probe = open_store(cfg.store)
    first, cursor = await catalog.Reader(probe).page(Filters(), None, 50)
    await probe.close()
    host, label = first[0]["host"], (("team", first[0]["labels"]["team"]),)
    cases: dict[str, tuple[Filters, Any]] = {
        "newest 50": (Filters(), None), "status=running": (Filters(status="running"), None),
        "since=1h": (Filters(since=now - 3600 * 10**9), None), "host=": (Filters(host=host), None),
        "label=": (Filters(labels=label), None), "page 2": (Filters(), cursor)}
    out: dict[str, Any] = {}
    warm_store, cold_store = open_store(cfg.store), open_store(cfg.store)
    t = time.perf_counter()
    await cold_store.list(names.CATALOG_REBUILD_STATE)  # the S3 client's start, once (botocore loads its model)
    out["client_start_ms"] = (time.perf_counter() - t) * 1e3
    warm = catalog.Reader(warm_store)
    for name, (f, cur) in cases.items():
        res = {k: Series(f"{name} {k}", u) for k, u in (("cold_ms", "ms"), ("warm_ms", "ms"), ("cold_requests", ""),
                                                       ("warm_requests", ""))}
        rows = 0
        for store, reader, kind in ((cold_store, None, "cold"), (warm_store, warm, "warm")):
            for _ in range(runs):
                before = sum(store.stats.requests.values())
                t = time.perf_counter()
                page, _ = await (reader or catalog.Reader(store)).page(f, cur, 50)  # cold: nothing cached
                res[f"{kind}_ms"].samples.append((time.perf_counter() - t) * 1e3)
                res[f"{kind}_requests"].samples.append(sum(store.stats.requests.values()) - before)
                rows = len(page)
        out[name] = {"rows": rows, **{k: s.to_json() for k, s in res.items()}}
        say(f"catalog: {name}: {rows} rows, cold {res['cold_ms'].spread(1)} ms / {res['cold_requests'].median:.0f} "
            f"requests, warm {res['warm_ms'].spread(1)} ms / {res['warm_requests'].median:.0f} requests")
    # gc's selection: the 1,000 oldest logs (everything started before the 1,001st oldest), from the catalog
    st = open_store(cfg.store)
    try:
        t = time.perf_counter()
        oldest: list[dict[str, Any]] = []
        cursor = None
        reader = catalog.Reader(st)
        while True:
            page, cursor = await reader.page(Filters(until=gc_until), cursor, 1000)
            oldest += page
            if cursor is None:
                break
        out["gc select"] = {"ms": (time.perf_counter() - t) * 1e3, "rows": len(oldest),
                            "requests": dict(st.stats.requests)}
    finally:
        await st.close()
    await warm_store.close()
    await cold_store.close()
    return out


class _Env:
    """bench.api's HasEnv: the store's environment for `logship serve`."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env

    def env(self, **extra: str) -> dict[str, str]:
        import os

        return {**os.environ, **self._env, **extra}


def _api_listings(work: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    """Each listing `runs` times through a real `logship serve` (GET /api/v1/tasks, limit 50): p50 ms, and
    the API's VmHWM (its own peak RSS) after it answered them all, and right after it started."""
    import http.client
    import urllib.parse

    from .api import serve

    (work / "spool").mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    with serve(work, _Env(env), "spool", "catalog") as api:
        out["start_hwm_mb"] = api.status().get("VmHWM", 0) / 1024

        def get(query: str) -> dict[str, Any]:
            c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
            c.request("GET", f"/api/v1/tasks?limit=50&{query}")
            r = c.getresponse()
            body = r.read()
            c.close()
            assert r.status == 200, (query, r.status, body[:300])
            doc: dict[str, Any] = json.loads(body)
            return doc

        first = get("")
        log0 = first["logs"][0]
        cases = {"newest 50": "", "status=running": "status=running", "since=1h": "since=1h",
                 "host=": f"host={log0['host']}", "label=": f"label=team={log0['labels']['team']}",
                 "page 2": f"cursor={urllib.parse.quote(first['next_cursor'])}"}
        for name, q in cases.items():
            ms = Series(f"API {name}", "ms")
            for _ in range(runs):
                t = time.perf_counter()
                get(q)
                ms.samples.append((time.perf_counter() - t) * 1e3)
            out[name] = ms.to_json()
            say(f"catalog: API {name}: {ms.spread(1)} ms, VmHWM {api.status().get('VmHWM', 0) / 1024:.0f} MB")
        out["hwm_mb"] = api.status().get("VmHWM", 0) / 1024
    return out


def _measure(env: dict[str, str], runs: int, gc_until: int, conn: Any) -> None:
    """In a fresh process (spawned): its peak RSS is the listing's."""
    from shipper.config import load_config

    res = asyncio.run(_listings(load_config(env=env), runs, gc_until))
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send(res)


async def _fill_and_rebuild(cfg: Any, logs: int, segments: bool) -> dict[str, Any]:
    from shipper import catalog
    from shipper.store import open_store

    store = open_store(cfg.store)
    try:
        t = time.perf_counter()
        now = time.time_ns()
        await fill(store, logs, segments, now)
        fill_s = time.perf_counter() - t
        say(f"catalog: {logs} logs written in {fill_s:.0f} s")
        store.stats.requests.clear()
        t = time.perf_counter()
        p = await catalog.rebuild(store, grace_s=0, progress=lambda p: say(
            f"catalog: rebuild {p.done}/{p.total} in {p.seconds:.0f} s"))
        rebuild_s = time.perf_counter() - t
        # gc's cutoff for the bench: the start of the 1,001st oldest log, so 1,000 are older
        return {"gc_until": _doc(1000, now, logs).started_ns, "fill_s": fill_s, "rebuild_s": rebuild_s,
                "rebuild_logs_s": p.done / rebuild_s, "rows": p.rows, "parts": p.parts, "running": p.running,
                "bad": len(p.bad), "rebuild_requests": dict(store.stats.requests)}
    finally:
        await store.close()


def run(workdir: Path, logs: int = 100_000, runs: int = 20, segments: bool = True) -> dict[str, Any]:
    from shipper.commands import s3local
    from shipper.config import load_config

    work = workdir / "catalog"
    rmtree(work)
    work.mkdir(parents=True)
    s3 = s3local.start(work / "s3")
    try:
        env = {"LOGSHIP_SPOOL_DIR": str(work / "spool"), "LOGSHIP_STORE_URL": f"s3://{s3.bucket}/bench-catalog/",
               "LOGSHIP_STORE_ENDPOINT": s3.endpoint, "LOGSHIP_STORE_ACCESS_KEY": s3.access_key,
               "LOGSHIP_STORE_SECRET_KEY": s3.secret_key}
        res = asyncio.run(_fill_and_rebuild(load_config(env=env), logs, segments))
        say(f"catalog: rebuilt {res['rows']} rows in {res['rebuild_s']:.0f} s ({res['rebuild_logs_s']:.0f} logs/s)")
        window = OthersWindow()
        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_measure, args=(env, runs, res["gc_until"], send))
        proc.start()
        send.close()  # so a child that dies is an EOFError here, not a wait forever
        try:
            res["listings"] = recv.recv()
        finally:
            proc.join()
        res["api"] = _api_listings(work, env, runs)
        res["noise"] = Series("others' CPU share", "%", [window.share() * 100])
        res["logs"] = logs
        return res
    finally:
        s3local.stop(s3)
        rmtree(work)


def rows_for(res: dict[str, Any]) -> tuple[list[Any], list[str]]:
    from .__main__ import Row

    out, notes = [], []
    n = f"{res['logs']:,}"
    lst = res["listings"]
    for name in LISTINGS:
        c = lst[name]
        cold = Series(name, "ms", c["cold_ms"]["samples"])
        warm = Series(name, "ms", c["warm_ms"]["samples"])
        out.append(Row(f"catalog {n} logs: {name}, p50 ms, cold (a reader with nothing cached)", "-",
                       cold.spread(1), None, 200, 50, higher=False, value=cold.median))
        out.append(Row(f"catalog {n} logs: {name}, p50 ms, warm (a long-lived reader, as the API)", "-",
                       warm.spread(1), None, 200, 50, higher=False, value=warm.median))
        notes.append(f"catalog {name}: {c['rows']} rows; requests cold {c['cold_requests']['median']:.0f}, "
                     f"warm {c['warm_requests']['median']:.0f}")
    out.append(Row(f"catalog: requests of a cold first page (newest 50), {n} logs", "-",
                   f"{lst['newest 50']['cold_requests']['median']:.0f}", None, None, 3, higher=False,
                   value=lst["newest 50"]["cold_requests"]["median"]))
    out.append(Row(f"catalog: rebuild from {n} manifests (logs/s)", "-", f"{res['rebuild_logs_s']:.0f}", None,
                   500, None, value=res["rebuild_logs_s"]))
    api = res["api"]
    out.append(Row("catalog: the API's peak RSS (VmHWM of `logship serve`) after every listing (MB)", "-",
                   f"{api['hwm_mb']:.0f}", None, 150, 100, higher=False, value=api["hwm_mb"]))
    out.append(Row("catalog: peak RSS of the in-process listing bench (cold readers too, MB)", "-",
                   f"{lst['rss_mb']:.0f}", None, None, None, higher=False, value=lst["rss_mb"]))
    notes.append(f"catalog API: VmHWM {api['start_hwm_mb']:.0f} MB when healthy; p50 ms " + ", ".join(
        f"{name} {Series(name, 'ms', api[name]['samples']).median:.1f}" for name in LISTINGS))
    g = lst["gc select"]
    notes.append(f"catalog: a new process (`logship ls`) adds the S3 client's start, {lst['client_start_ms']:.0f} ms")
    notes.append(f"catalog gc selection: {g['rows']} oldest logs in {g['ms']:.0f} ms, requests {g['requests']}")
    notes.append(f"catalog fill {res['fill_s']:.0f} s; rebuild {res['rebuild_s']:.0f} s, {res['parts']} parts "
                 f"written, {res['running']} running, requests {res['rebuild_requests']}")
    return out, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-segments", action="store_true", help="manifests only (a faster fill)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)
    import os

    os.chdir(ROOT)
    res = run(args.workdir, args.logs, args.runs, not args.no_segments)
    rows, notes = rows_for(res)
    from .__main__ import table, to_json

    print(table(rows))
    for note in notes:
        print(f"  {note}")
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-catalog.json"
    (out / name).write_text(json.dumps(to_json(res), indent=1) + "\n")
    print(f"\nwritten: bench/out/{name}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
