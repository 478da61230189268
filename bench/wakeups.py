"""What the watcher's wake-ups and idle passes cost (issue 14's CPU bar; docs/checkpoints.md §12), measured in
this process against a file store, so only the watcher's own work counts:
- seal → segment in the store: a log written here (SegmentWriter, as the agent does) is sealed N times; the
  time from each `.log` rename to its object in the store, polled every 0.5 ms off the event loop;
- an idle pass: CPU (all threads) of `run_once` over 1 and 100 running logs with nothing new, each pass a
  checkpoint due; and of a pass that reads every log (what each pass cost before, and every
  FULL_PASS_SECONDS now); from these, CPU per idle log-hour at one pass per checkpoint interval;
- one 10 KB/s log under the daemon loop (`watch()`): CPU per second and passes, for 40 s.

`python -m bench.wakeups [--seals N] [--seconds S]`; not part of `python -m bench`'s table (no bar of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipper import settled
from shipper.config import Config, load_config
from shipper.format import names
from shipper.spool import SegmentWriter, make_log_dir, pid_start_ticks, write_json_atomic
from shipper.store import open_store
from shipper.watcher import Watcher, watch

from ._util import ROOT

LINE = b"2026-12-04T10:00:00.123Z INFO worker-3 req_id=1234 processed item 42 in 12.3 ms status=ok\n"
GENERATOR = r"""
import os, sys, time
rate, seconds, line = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode() + b"\n"
sent, t0 = 0, time.monotonic()
while (now := time.monotonic() - t0) < seconds:
    while sent < rate * now:
        os.write(1, line); sent += len(line)
    time.sleep(0.01)
"""


def _config(d: Path, **env: str) -> tuple[Config, dict[str, str]]:
    e = {"LOGSHIP_SPOOL_DIR": str(d / "spool"), "LOGSHIP_STORE_URL": f"file://{d}/archive",
         "LOGSHIP_QUERY_COPY": "false", "LOGSHIP_WATCH_CHECKPOINT_DELTAS": "true", **env}
    return load_config(env=e), e


def _log(spool: Path, task: str) -> SegmentWriter:
    """A running log whose agent is this process (alive while we measure)."""
    fd = make_log_dir(spool, task, "h")
    me = os.getpid()
    write_json_atomic(spool / task / "h" / names.RUN_FILE, {
        "task": task, "host": "h", "run_id": os.urandom(16).hex(), "command": ["bench"], "labels": {},
        "started_ns": time.time_ns(), "agent_pid": me, "agent_start_ticks": pid_start_ticks(me), "child_pid": None,
        "segment_bytes": 1 << 24}, dir_fd=fd)
    return SegmentWriter(spool / task / "h", 1 << 24, 600, fd)


def _seal_and_wait(w: SegmentWriter, archive: Path) -> float:
    seq = w.seq
    w.seal()
    sealed = names.spool_segment(w.log_dir, seq)
    while not sealed.exists():
        time.sleep(0.0002)
    t = time.monotonic()
    keys = [archive / names.segment_key("lat", "h", seq, "zstd"), archive / names.frames_key("lat", "h", seq)]
    while not any(k.exists() for k in keys):
        if time.monotonic() - t > 10:
            raise SystemExit(f"bench: segment {seq} not shipped in 10 s")
        time.sleep(0.0005)
    return time.monotonic() - t


async def seal_latency(d: Path, seals: int) -> list[float]:
    cfg, _ = _config(d)
    stop = asyncio.Event()
    task = asyncio.create_task(watch(cfg, stop=stop))
    await asyncio.sleep(1.0)
    w = _log(cfg.spool_dir, "lat")
    out = []
    try:
        for i in range(seals):
            w.append(1, [LINE * 20], len(LINE) * 20, 20, False)
            out.append(await asyncio.to_thread(_seal_and_wait, w, d / "archive"))
            await asyncio.sleep(0.2 + (i % 5) * 0.07)
    finally:
        stop.set()
        await task
    return out


async def idle_pass(d: Path, logs: int, passes: int, full: bool) -> float:
    """CPU seconds of one pass over `logs` idle running logs (median of `passes`)."""
    cfg, _ = _config(d, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1")
    for i in range(logs):
        _log(cfg.spool_dir, f"t{i:04d}").append(1, [LINE], len(LINE), 1, False)
    w = Watcher(cfg, open_store(cfg.store))
    try:
        settle_by = time.monotonic() + settled.RACY_NS / 1e9 + 0.5  # past the directories' last change
        while time.monotonic() < settle_by:
            await w.run_once()
            await asyncio.sleep(0.11)
        cpu = []
        for _ in range(passes):
            await asyncio.sleep(0.11)  # every checkpoint due
            if full:  # the pass every FULL_PASS_SECONDS, which reads every log (as every pass did before)
                w.settled._full_at -= settled.FULL_PASS_SECONDS
            c0 = time.process_time()
            await w.run_once()
            cpu.append(time.process_time() - c0)
        return statistics.median(cpu)
    finally:
        await w.store.close()


async def steady(d: Path, rate: float, seconds: float) -> tuple[float, int, int]:
    """(CPU seconds per second, passes, checkpoints) of the daemon loop while one log grows at `rate` B/s."""
    cfg, env = _config(d)
    stop = asyncio.Event()
    task = asyncio.create_task(watch(cfg, stop=stop))
    await asyncio.sleep(1.0)
    agent = subprocess.Popen([sys.executable, "-m", "shipper.commands.cli", "run", "--task", "r", "--host", "h", "--",
                              sys.executable, "-c", GENERATOR, str(rate), str(seconds), LINE.decode().strip()],
                             env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    try:
        await asyncio.sleep(1.5)
        c0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds - 2.5)
        cpu, spent = time.process_time() - c0, time.monotonic() - t0
        await asyncio.to_thread(agent.wait)
    finally:
        if agent.poll() is None:
            agent.kill()
        stop.set()
        w = await task
    return cpu / spent, w.stats["passes"], w.stats["checkpoints"]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.wakeups")
    ap.add_argument("--seals", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-wakeups-"))
    try:
        def fresh(name: str) -> Path:
            (base / name).mkdir()
            return base / name

        lat = sorted(asyncio.run(seal_latency(fresh("lat"), args.seals)))
        # The target: tests/test_wakeups.py asserted it until CI on a loaded machine missed it by 6 ms; the test
        # now asserts that a wake-up ships each seal, and the speed is measured here.
        met = lat[len(lat) // 2] < 0.1 and lat[-1] < 1.0
        print(f"seal -> segment in the store ({len(lat)} seals): p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
              f"p90 {lat[int(len(lat) * 0.9)] * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms "
              f"(target p50 < 100 ms, max < 1 s: {'met' if met else 'MISSED'})")
        interval = load_config(env={}).watch.checkpoint_seconds
        per_hour = 3600 / interval
        for n in (1, 100):
            quiet = asyncio.run(idle_pass(fresh(f"idle{n}"), n, 30, full=False))
            read = asyncio.run(idle_pass(fresh(f"full{n}"), n, 15, full=True))
            hour = (quiet * (per_hour - 3600 / settled.FULL_PASS_SECONDS) + read * 3600 / settled.FULL_PASS_SECONDS) / n
            print(f"idle pass, {n} running logs with nothing new: {quiet * 1e3:.2f} ms CPU ({quiet / n * 1e6:.0f} us "
                  f"a log); a pass reading every log {read * 1e3:.2f} ms ({read / n * 1e6:.0f} us a log); "
                  f"per idle log-hour {hour:.3f} s (a pass every {interval:g} s, a full one every "
                  f"{settled.FULL_PASS_SECONDS:g} s; reading every log every second: {read / n * 3600:.2f} s)")
        cps, passes, ckpts = asyncio.run(steady(fresh("steady"), 10_000, args.seconds))
        print(f"one 10 KB/s log, {args.seconds:g} s under watch(): {cps * 1e3:.2f} ms CPU a second, {passes} passes, "
              f"{ckpts} checkpoints")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
