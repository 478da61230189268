"""The watcher's fixed cost per checkpoint pass (issue 14's CPU bar; docs/checkpoints.md §12 item 5), in-process.

One running log (its agent is this process: SegmentWriter, as the agent writes) gains `--records` index
records between passes, and each pass (`Watcher.run_once`, `watch.checkpoint_seconds` = 0.1 s, so every
pass takes a checkpoint) is measured, after the log's directory is past its racy window:
- total process CPU of the pass (`time.process_time`), the event loop's share (`time.thread_time` of the
  main thread, the PUT's own share of it apart) and each thread hop's CPU (`time.thread_time` inside every
  `asyncio.to_thread` call, by the function it runs), medians of `--passes` passes;
- the daemon's own per-pass work beside `run_once`: the state file as the daemon writes it now (`StateFile`:
  at most every `watch.state_seconds`, so its median is the check alone), and one `Watcher.write_state` (what
  every pass paid before);
- with `--profile`, cProfile of the event loop and of the thread hops (top functions by own time).
Against the file store (the PUT is a file written: the pass's own cost shows) and a local SeaweedFS, where
the floor is measured too: one bare aiohttp PUT of 50 KB (signed, SigV4 in the query) and one `store.put`,
CPU per request on the event loop, medians of 200.

`--kb 50 150 1500` makes each checkpoint `--records` records (550 by default: a record a 10 ms burst, as the
checkpoint bench's task writes) holding that many KB of the bench's log-like text in all (bench/_util.py), the
checkpoints of `python -m bench --only checkpoint` at 10, 30 and 300 KB/s; without it, one short line a record.
Each is compared with compressing its bytes once (zstd level 1 and its index at level 3, as the bench does).

`python -m bench.pass_cost [--passes 60] [--records 1 550] [--kb 50 1500] [--profile] [--no-s3 | --no-file]`;
not part of `python -m bench`'s table.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import hmac
import io
import os
import pstats
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import zstandard

from shipper import settled
from shipper.commands import s3local
from shipper.config import Config, load_config
from shipper.format import liveness, names
from shipper.spool import write_atomic
from shipper.store import open_store
from shipper.watcher import Watcher
from shipper.watcher.daemon import freeze_heap
from shipper.watcher.state_file import StateFile

from ._util import _line
from .wakeups import LINE, _log

T = TypeVar("T")
BUCKET = "bench"
BODY = 50_000  # a checkpoint at 10 KB/s every 5 s


class Hops:
    """`asyncio.to_thread` timed from inside the thread, by the function it runs (and profiled, on demand)."""

    def __init__(self, profile: bool) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls = 0
        self.profile = cProfile.Profile(time.thread_time) if profile else None  # CPU, not wall time
        self._lock = threading.Lock()
        self._orig = asyncio.to_thread

    @contextmanager
    def installed(self) -> Iterator[None]:
        async def timed(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
            name = getattr(func, "__qualname__", type(func).__name__)

            def run() -> T:
                t0 = time.thread_time()
                prof = self.profile if self.profile is not None and self._lock.acquire(blocking=False) else None
                if prof is not None:
                    prof.enable()
                try:
                    return func(*args, **kwargs)
                finally:
                    if prof is not None:
                        prof.disable()
                        self._lock.release()
                    self.cpu[name] += time.thread_time() - t0
                    self.calls += 1

            return await self._orig(run)

        asyncio.to_thread = timed
        try:
            yield
        finally:
            asyncio.to_thread = self._orig

    def reset(self) -> None:
        self.cpu.clear()
        self.calls = 0


class PutTimer:
    """The event loop's CPU inside `store.put` (one log, so nothing else runs on the loop meanwhile)."""

    def __init__(self, store: Any) -> None:
        self.cpu = 0.0
        self.n = 0
        orig = store.put

        async def put(*args: Any, **kwargs: Any) -> None:
            t0 = time.thread_time()
            try:
                await orig(*args, **kwargs)
            finally:
                self.cpu += time.thread_time() - t0
                self.n += 1

        store.put = put


def _config(d: Path, s3: s3local.LocalS3 | None) -> Config:
    env = {"LOGSHIP_SPOOL_DIR": str(d / "spool"), "LOGSHIP_QUERY_COPY": "false",
           "LOGSHIP_WATCH_CHECKPOINT_DELTAS": "true", "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "0.1",
           "LOGSHIP_STORE_URL": f"file://{d}/archive"}
    if s3 is not None:
        env.update(LOGSHIP_STORE_URL=f"s3://{s3.bucket}/{d.name}", LOGSHIP_STORE_ENDPOINT=s3.endpoint,
                   LOGSHIP_STORE_ACCESS_KEY=s3.access_key, LOGSHIP_STORE_SECRET_KEY=s3.secret_key)
    return load_config(env=env)


def _chunks(records: int, kb: int | None) -> list[tuple[bytes, int]]:
    """What one checkpoint's records hold, (bytes, lines) each: `kb` KB of log-like text in all, whole lines, or
    one short line each."""
    if kb is None:
        return [(LINE, 1)] * records
    r, ts, per = random.Random(20251127), 1764201600.0, kb * 1000 // records
    out: list[tuple[bytes, int]] = []
    while len(out) < records:
        lines: list[bytes] = []
        while sum(map(len, lines)) < per:
            ts += r.expovariate(2000)
            lines.append(_line(r, ts, len(out)).encode())
        out.append((b"".join(lines), sum(x.count(b"\n") for x in lines)))
    return out


def _once(chunks: list[tuple[bytes, int]]) -> float:
    """CPU seconds to compress one checkpoint's bytes once, as bench/checkpoint.py counts it (zstd level 1, and
    the index at level 3): the median of 20."""
    return compress_cpu(b"".join(c for c, _ in chunks), bytes(40 * len(chunks)), 20)


def compress_cpu(data: bytes, idx: bytes, rounds: int) -> float:
    """The median CPU seconds of compressing a log's bytes at zstd level 1 and its index records at level 3 (as
    the watcher stores a sealed segment), over `rounds`."""
    cpu = []
    for _ in range(rounds):
        t0 = time.process_time()
        zstandard.ZstdCompressor(level=1).compress(data)
        zstandard.ZstdCompressor(level=3).compress(idx)
        cpu.append(time.process_time() - t0)
    return statistics.median(cpu)


async def passes(d: Path, s3: s3local.LocalS3 | None, records: int, n: int, profile: bool, kb: int | None = None,
                 freeze: bool = True) -> dict[str, Any]:
    """Medians (ms of CPU) of `n` checkpoint passes over one log that gained `records` records since the last
    (holding `kb` KB of log-like text in all, or one short line each); the mean too, which counts the seals."""
    cfg = _config(d, s3)
    chunks = _chunks(records, kb)
    writer = _log(cfg.spool_dir, "p")
    w = Watcher(cfg, open_store(cfg.store))
    state = StateFile(w, cfg.watch.state_seconds)
    hops = Hops(profile)
    put = PutTimer(w.store)
    loop_prof = cProfile.Profile(time.thread_time) if profile else None
    rows: dict[str, list[float]] = defaultdict(list)

    def grow() -> None:
        for data, lines in chunks:
            writer.append(1, [data], len(data), lines, False)
        now = time.time_ns()  # and a new liveness sample, as the agent writes every few seconds
        sample = liveness.Liveness(now, now, now, 1.0, (liveness.Process(os.getpid(), 1, "S", 1.0, 50 << 20,
                                                                          "python -m bench.pass_cost", ""),), 1)
        write_atomic(writer.log_dir / names.LIVENESS_FILE, liveness.dumps(sample), durable=False)

    try:
        with hops.installed():
            settle_by = time.monotonic() + settled.RACY_NS / 1e9 + 0.5  # the log's directory past its racy window
            while time.monotonic() < settle_by:
                grow()
                await w.run_once()
                await asyncio.sleep(0.11)
            if freeze:
                freeze_heap()  # as `logship watch` does after its first pass
            for _ in range(n):
                grow()
                await asyncio.sleep(0.11)  # a checkpoint due
                hops.reset()
                put.cpu, put.n, ckpts = 0.0, 0, w.stats["checkpoints"]
                c0, l0 = time.process_time(), time.thread_time()
                if loop_prof is not None:
                    loop_prof.enable()
                await w.run_once()
                if loop_prof is not None:
                    loop_prof.disable()
                total, loop = time.process_time() - c0, time.thread_time() - l0
                if w.stats["checkpoints"] != ckpts + 1:
                    raise SystemExit(f"bench: a pass took {w.stats['checkpoints'] - ckpts} checkpoints, not 1")
                rows["total"].append(total)
                rows["loop"].append(loop)
                rows["loop, in store.put"].append(put.cpu)
                rows["loop, the rest"].append(loop - put.cpu)
                rows["threads"].append(sum(hops.cpu.values()))
                rows["hops"].append(hops.calls)
                for name, cpu in hops.cpu.items():  # FileStore.put's is `FileStore._write_atomic`
                    rows[f"  {name}"].append(cpu)
                t0 = time.process_time()
                if state.due(True):  # what the daemon adds after each pass (the write in a thread of its own)
                    state.write(True)
                rows["daemon: state file"].append(time.process_time() - t0)
                t0 = time.process_time()
                w.write_state(True)  # one write of it, as the daemon did after every pass before state_seconds
                rows["daemon: write_state (each)"].append(time.process_time() - t0)
        out: dict[str, Any] = {k: statistics.median(v) * (1 if k == "hops" else 1e3) for k, v in rows.items()}
        out["total, mean (seals too)"] = statistics.fmean(rows["total"]) * 1e3
        out["compressing once"] = _once(chunks) * 1e3
        if profile:
            out["profile"] = _top(loop_prof, "event loop") + _top(hops.profile, "thread hops")
        return out
    finally:
        writer.close()
        await w.store.close()


def _top(prof: cProfile.Profile | None, what: str, n: int = 25) -> str:
    if prof is None:
        return ""
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s).sort_stats("tottime")
    st.print_stats(n)
    st.sort_stats("cumulative").print_stats(n)
    return f"--- {what} (by own time) ---\n{s.getvalue()}"


def _presign_put(s3: s3local.LocalS3, key: str, region: str = "us-east-1") -> str:
    """A SigV4 query-signed PUT URL, for the bare PUT's floor (no header to sign per request)."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    day, scope = amz_date[:8], f"{amz_date[:8]}/{region}/s3/aws4_request"
    k = hmac.new(f"AWS4{s3.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    netloc = urllib.parse.urlsplit(s3.endpoint).netloc
    path = f"/{s3.bucket}/{urllib.parse.quote(key, safe='-_.~/')}"
    query = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={urllib.parse.quote(f'{s3.access_key}/{scope}', '')}"
             f"&X-Amz-Date={amz_date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host")
    canonical = f"PUT\n{path}\n{query}\nhost:{netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return f"{s3.endpoint}{path}?{query}&X-Amz-Signature={hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()}"


async def floor(d: Path, s3: s3local.LocalS3, n: int = 200) -> dict[str, float]:
    """ms of event-loop CPU per 50 KB PUT: bare aiohttp (signing included), and through our store client."""
    body = os.urandom(BODY)
    out = {}
    async with aiohttp.ClientSession(trust_env=False) as http:
        cpu = []
        for i in range(n + 10):
            t0 = time.thread_time()
            async with http.put(_presign_put(s3, f"floor/{i % 20}"), data=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"bench: bare PUT answered {resp.status}")
            cpu.append(time.thread_time() - t0)
        out["bare aiohttp PUT (signed)"] = statistics.median(cpu[10:]) * 1e3
    cfg = _config(d, s3)
    store = open_store(cfg.store)
    try:
        cpu = []
        for i in range(n + 10):
            t0 = time.thread_time()
            await store.put(f"floor/{i % 20}", body, checked=True)
            cpu.append(time.thread_time() - t0)
        out["store.put (checked)"] = statistics.median(cpu[10:]) * 1e3
    finally:
        await store.close()
    return out


def _print(title: str, res: dict[str, Any]) -> None:
    print(f"{title}:")
    for k, v in res.items():
        if k != "profile":
            print(f"  {k:<28} {v:8.3f}" + ("" if k == "hops" else " ms"))
    if res.get("profile"):
        print(res["profile"])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pass_cost")
    ap.add_argument("--passes", type=int, default=60)
    ap.add_argument("--records", type=int, nargs="+", help="records a checkpoint (1 550; with --kb, 550)")
    ap.add_argument("--kb", type=int, nargs="+", help="KB of log-like text a checkpoint (in --records records)")
    ap.add_argument("--no-freeze", action="store_true", help="the heap not frozen after the first passes")
    ap.add_argument("--no-floor", action="store_true", help="not the bare PUT's floor")
    ap.add_argument("--profile", action="store_true", help="cProfile the passes (slower: read shares, not ms)")
    ap.add_argument("--no-s3", action="store_true", help="the file store only")
    ap.add_argument("--no-file", action="store_true", help="SeaweedFS only")
    args = ap.parse_args()
    args.records = args.records or ([550] if args.kb else [1, 550])
    base = Path(tempfile.mkdtemp(prefix="bench-pass-"))
    s3 = None
    try:
        if not args.no_s3:
            s3 = s3local.start(base / "s3", bucket=BUCKET)
        for store in ([] if args.no_file else ["file"]) + (["s3"] if s3 else []):
            for r in args.records:
                for kb in args.kb or [None]:
                    d = base / f"{store}-{r}-{kb}"
                    d.mkdir()
                    res = asyncio.run(passes(d, s3 if store == "s3" else None, r, args.passes, args.profile, kb,
                                                 not args.no_freeze))
                    what = f"{r} record(s)" + (f" of {kb} KB" if kb else "")
                    _print(f"{store} store, {what} a checkpoint, medians of {args.passes} passes (CPU)", res)
        if s3 is not None and not args.no_floor:
            (base / "floor").mkdir()
            _print("the floor: one 50 KB PUT to SeaweedFS, event-loop CPU, median of 200",
                   asyncio.run(floor(base / "floor", s3)))
    finally:
        if s3 is not None:
            s3local.stop(s3)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
