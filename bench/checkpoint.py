"""Checkpoint cost (issue 14): a steady task at 10, 30 and 300 KB/s under `logship run`, shipped by
`logship watch` (default intervals: checkpoints every 5 s, segments of 16 MiB or 600 s) through a counting
proxy in front of a local SeaweedFS.

Measured per rate, for each way of checkpointing this build has (`prefix`: the whole open segment each
time, as before issue 14; `deltas`: only the new bytes, docs/checkpoints.md), all at once on one server:
- bytes sent to the store (request bodies, as the watcher's StoreStats and the proxy count them) ÷ bytes the
  log occupies in the store at the end;
- requests per minute, and per checkpoint (every request of the run ÷ checkpoints taken);
- the watcher's CPU per MB of output, less an idle watcher's over the same time, against compressing the
  output once (zstd level 1 per segment, and its index at level 3, as the watcher stores them).
The query copy is off: it is its own cost, the same either way.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import zstandard

from shipper.commands import s3local
from shipper.config import StoreConfig, WatchConfig
from shipper.store import open_store

from ._proxy import CountingProxy
from ._util import ROOT, OthersWindow, Series, _proc_cpu, clean_env, rmtree, say, tool

BUCKET = "bench"
RATES = (10_000, 30_000, 300_000)  # bytes per second
CHECKPOINT_SECONDS = 5.0  # the default interval the watchers run with
HOST = "h"
FULL_SECONDS, QUICK_SECONDS = 180.0, 40.0
SHIP_TIMEOUT = 180.0  # after the task ends, for the watcher to seal and ship the rest
STEADY_LEAD = 30.0  # seconds into the run the steady window starts; it ends a third of that before the end

# The task: lines of the bench's log-like text, one write per line (the index's worst case), paced
# every 10 ms to `rate` bytes per second; the text is read again from its start when it runs out.
GENERATOR = r"""
import os, sys, time
path, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lines = open(path, "rb").read().splitlines(keepends=True)
i, sent, t0 = 0, 0, time.monotonic()
while (now := time.monotonic() - t0) < seconds:
    while sent < rate * now:
        os.write(1, lines[i]); sent += len(lines[i]); i = (i + 1) % len(lines)
    time.sleep(0.01)
"""


def modes() -> list[str]:
    """`prefix` always; `deltas` when this build has it (watch.checkpoint_deltas)."""
    return ["prefix"] + (["deltas"] if any(f.name == "checkpoint_deltas" for f in fields(WatchConfig)) else [])


@dataclass
class Side:
    mode: str
    rate: int
    spool: Path
    proxy: CountingProxy
    watcher: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.rate // 1000}k"


def run(workdir: Path, text: Path, seconds: float) -> dict[str, Any]:
    d = (workdir / "checkpoint").resolve()  # the children run in it: every path they get is absolute
    rmtree(d)
    d.mkdir(parents=True)
    server = s3local.start(d / "s3", bucket=BUCKET)
    noise = OthersWindow()
    try:
        out = _run(d, text, seconds, server)
    finally:
        s3local.stop(server)
    out["noise"] = Series("others", "%", [noise.share() * 100])
    rmtree(d)
    return out


def _env(server: s3local.LocalS3, spool: Path, endpoint: str, prefix: str, mode: str) -> dict[str, str]:
    extra = {"LOGSHIP_WATCH_CHECKPOINT_DELTAS": "true" if mode == "deltas" else "false"}
    return clean_env(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                     LOGSHIP_SPOOL_DIR=str(spool), LOGSHIP_STORE_URL=f"s3://{BUCKET}/{prefix}",
                     LOGSHIP_STORE_ENDPOINT=endpoint, LOGSHIP_QUERY_COPY="false",
                     LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="365d", **extra)


def _run(d: Path, text: Path, seconds: float, server: s3local.LocalS3) -> dict[str, Any]:
    port = int(server.endpoint.rsplit(":", 1)[1])
    sides: list[Side] = []
    idle_spool = d / "idle"
    idle = subprocess.Popen([tool("logship"), "watch"], cwd=d, stderr=subprocess.DEVNULL,
                            env=_env(server, idle_spool, server.endpoint, "idle", "prefix"))
    try:
        for mode in modes():
            for rate in RATES:
                spool = d / f"spool-{mode}-{rate}"
                proxy = CountingProxy(port)
                endpoint = proxy.start()
                err = open(d / f"watcher-{mode}-{rate}.log", "wb")  # noqa: SIM115  (closed with the process)
                w = subprocess.Popen([tool("logship"), "watch"], cwd=d, stderr=err,
                                     env=_env(server, spool, endpoint, f"{mode}-{rate}", mode))
                sides.append(Side(mode, rate, spool, proxy, w))
        _started([idle, *(s.watcher for s in sides)])  # the watchers' start-up is not the checkpoints' cost
        idle_cpu0 = _proc_cpu(idle.pid)
        cpu0 = {s.name: _proc_cpu(s.watcher.pid) for s in sides}
        t0 = time.monotonic()
        for s in sides:
            s.agent = subprocess.Popen(
                [tool("logship"), "run", "--task", "cp", "--host", HOST, "--", sys.executable, "-c", GENERATOR,
                 str(text.resolve()), str(s.rate), str(seconds)],
                cwd=d, stdout=subprocess.DEVNULL, env=clean_env(PYTHONPATH=str(ROOT), LOGSHIP_SPOOL_DIR=str(s.spool)))
        say(f"  checkpoint: {len(sides)} tasks running for {seconds:.0f} s ({', '.join(s.name for s in sides)})")
        # The steady window: checkpoints only, past each log's start (its first records, its catalog row, the S3
        # client made on first use) and before its end (the seal, the last manifest).
        lead = min(STEADY_LEAD, seconds / 4)
        time.sleep(max(0.0, t0 + lead - time.monotonic()))
        steady0 = {s.name: _proc_cpu(s.watcher.pid) for s in sides} | {"idle": _proc_cpu(idle.pid)}
        ta = time.monotonic()
        time.sleep(max(0.0, t0 + seconds - lead / 3 - time.monotonic()))
        steady1 = {s.name: _proc_cpu(s.watcher.pid) for s in sides} | {"idle": _proc_cpu(idle.pid)}
        steady_s = time.monotonic() - ta
        for s in sides:
            assert s.agent is not None
            if s.agent.wait(seconds + 60) != 0:
                raise SystemExit(f"bench: the task of {s.name} failed")
        results = {}
        for s in sides:
            _wait_shipped(s, d)
            results[s.name] = _measure(s, server, cpu0[s.name], time.monotonic() - t0)
            idle_steady = steady1["idle"] - steady0["idle"]
            results[s.name]["steady"] = {"seconds": steady_s, "bytes": s.rate * steady_s,
                                         "cpu": max(0.0, steady1[s.name] - steady0[s.name] - idle_steady)}
        idle_cpu = _proc_cpu(idle.pid) - idle_cpu0
        idle_seconds = time.monotonic() - t0
    finally:
        for p in [idle, *(s.watcher for s in sides), *(s.agent for s in sides if s.agent)]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [idle, *(s.watcher for s in sides)]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in sides:
            s.proxy.stop()
    for r in results.values():  # an idle watcher's CPU over the same time is not the checkpoints' cost
        r["idle_cpu"] = idle_cpu * r["seconds"] / idle_seconds
        r["work_cpu"] = max(0.0, r["watcher_cpu"] - r["idle_cpu"])
    return {"seconds": seconds, "sides": results}


def _started(watchers: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    """Until every watcher has finished starting: its CPU still for a second. A watcher's start (imports, the S3
    client) costs ≈ 0.65 s of CPU quiet and over 1 s on a busy machine, as much as three minutes of checkpoints
    of a 10 KB/s log: counted in the window, its spread from one process to the next was the measurement."""
    deadline = time.monotonic() + timeout
    before = [_proc_cpu(w.pid) for w in watchers]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = [_proc_cpu(w.pid) for w in watchers]
        if all(b - a < 0.02 for a, b in zip(before, now, strict=True)):
            return
        before = now
    raise SystemExit("bench: the watchers did not settle after their start")


def _wait_shipped(s: Side, d: Path) -> None:
    deadline = time.monotonic() + SHIP_TIMEOUT
    while not (s.spool / "cp" / HOST / "shipped.json").exists():
        if time.monotonic() > deadline or s.watcher.poll() is not None:
            log = (d / f"watcher-{s.mode}-{s.rate}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"bench: {s.name} not shipped after {SHIP_TIMEOUT:.0f} s; its watcher:\n{log}")
        time.sleep(0.2)


def _measure(s: Side, server: s3local.LocalS3, cpu0: float, seconds: float) -> dict[str, Any]:
    cpu = _proc_cpu(s.watcher.pid) - cpu0
    state = json.loads((s.spool / ".watcher.json").read_text())
    counts = s.proxy.snapshot()
    log_dir = s.spool / "cp" / HOST
    raw = sum(p.stat().st_size for p in log_dir.glob("*.log"))
    stored = asyncio.run(_stored(server, f"{s.mode}-{s.rate}"))
    once = _compress_once(log_dir)
    stats, sstats = state["stats"], state["store_stats"]
    return {"mode": s.mode, "rate": s.rate, "seconds": seconds, "raw_bytes": raw, "stored_bytes": stored,
            "store_bytes_sent": sstats["bytes_sent"], "store_requests": sstats["requests"],
            "proxy_body_bytes": counts.body_bytes, "proxy_bytes_up": counts.bytes_up,
            "proxy_requests": dict(counts.requests), "checkpoints": stats["checkpoints"],
            "bytes_uploaded": stats["bytes_uploaded"], "manifests": stats["manifests"],
            "segments": stats["segments_uploaded"], "watcher_cpu": cpu, "compress_once_cpu": once}


async def _stored(server: s3local.LocalS3, prefix: str) -> int:
    store = open_store(StoreConfig(url=f"s3://{BUCKET}/{prefix}", endpoint=server.endpoint,
                                   access_key=server.access_key, secret_key=server.secret_key))
    try:
        return sum(o.size for o in await store.list(f"logs/cp/{HOST}/"))
    finally:
        await store.close()


def _compress_once(log_dir: Path) -> float:
    """CPU seconds to compress the log's segments and indexes once, as a sealed upload does."""
    t = time.process_time()
    for p in sorted(log_dir.glob("*.log")):
        zstandard.ZstdCompressor(level=1).compress(p.read_bytes())
        zstandard.ZstdCompressor(level=3).compress(p.with_suffix(".idx").read_bytes())
    return time.process_time() - t


def rows_for(res: dict[str, Any]) -> tuple[list[Any], list[str]]:
    from .__main__ import Row  # the table's row type lives with the table

    rows: list[Any] = []
    notes: list[str] = []
    minutes = res["seconds"] / 60
    for name, r in res["sides"].items():
        amp = r["store_bytes_sent"] / r["stored_bytes"]
        reqs = sum(r["store_requests"].values())
        per_ckpt = reqs / max(1, r["checkpoints"])
        mb = r["raw_bytes"] / 1e6
        cpu_ratio = r["work_cpu"] / max(r["compress_once_cpu"], 1e-3)
        what = f"checkpoint {r['rate'] // 1000} KB/s, {r['mode']}:"
        rows.append(Row(f"{what} bytes sent ÷ stored", "1.0", f"{amp:.2f}", None, 2.0, 1.3, higher=False, value=amp))
        rows.append(Row(f"{what} requests per checkpoint", "-", f"{per_ckpt:.2f}", None, 3, 2, higher=False,
                        value=per_ckpt))
        rows.append(Row(f"{what} watcher CPU ÷ compressing once", f"{r['compress_once_cpu']:.3f} s",
                        f"{r['work_cpu']:.2f} s = {cpu_ratio:.0f}x", None, 2.0, None, higher=False, value=cpu_ratio))
        st = r.get("steady")
        if st:  # checkpoints alone: no log start or end, no client made on first use
            once_per_mb = r["compress_once_cpu"] / max(mb, 1e-9)
            steady_ratio = st["cpu"] / max(st["bytes"] / 1e6, 1e-9) / max(once_per_mb, 1e-9)
            per_ckpt_ms = st["cpu"] / max(1.0, st["seconds"] / CHECKPOINT_SECONDS) * 1e3
            rows.append(Row(f"{what} watcher CPU ÷ compressing once, steady ({st['seconds']:.0f} s of checkpoints)",
                            f"{once_per_mb * st['bytes'] / 1e6:.3f} s", f"{st['cpu']:.2f} s = {steady_ratio:.0f}x",
                            None, 2.0, None, higher=False, value=steady_ratio))
            notes.append(f"{name} steady: {st['cpu']:.3f} s of CPU in {st['seconds']:.0f} s, ≈ {per_ckpt_ms:.1f} ms a "
                         f"checkpoint ({CHECKPOINT_SECONDS:g} s apart)")
        notes.append(f"{name}: {mb:.1f} MB written, {r['stored_bytes'] / 1e6:.2f} MB stored, "
                     f"{r['store_bytes_sent'] / 1e6:.2f} MB sent (proxy: bodies {r['proxy_body_bytes'] / 1e6:.2f} MB, "
                     f"wire {r['proxy_bytes_up'] / 1e6:.2f} MB); {r['checkpoints']} checkpoints, "
                     f"{r['segments']} segments, {r['manifests']} manifests; requests {reqs} "
                     f"({reqs / minutes:.0f}/min; proxy {sum(r['proxy_requests'].values())}): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(r["store_requests"].items()))
                     + f"; watcher CPU {r['watcher_cpu']:.2f} s (idle watcher {r['idle_cpu']:.2f} s), "
                     f"{r['work_cpu'] / max(mb, 1e-9):.3f} s/MB vs {r['compress_once_cpu'] / max(mb, 1e-9):.4f} s/MB "
                     "compressing once")
    return rows, notes

