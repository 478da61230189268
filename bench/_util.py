"""Shared bench helpers: paths, the log-like test text, timed child processes, medians and the environment."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB, GiB = 1 << 20, 1 << 30
ROOT = Path(__file__).resolve().parent.parent  # the repo; every path below is relative to it
DEFAULT_WORKDIR = Path(".logship/bench")  # gitignored, on the same disk as the repo


# --- tools -----------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A binary from the venv the bench runs in (logship, weed, rclone), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"bench: `{name}` not found beside {sys.executable} or on PATH (pip install -e '.[test]')")
    return found


# Dropped from every measured command's environment: an installed logship has its bytecode compiled
# (pip does it), but with PYTHONDONTWRITEBYTECODE=1 (set on some machines) every run of an editable
# install compiles its modules again: ≈ 45 ms of each `logship query`, ≈ 15 ms of `logship run`.
_SKEWING = ("PYTHONDONTWRITEBYTECODE",)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without LOGSHIP_* (so no stray setting skews a run), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSHIP_") and k not in _SKEWING}
    env.update(extra)
    return env


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: Path, suffixes: tuple[str, ...] = (".log",)) -> int:
    """Bytes in files under `path` whose names end with one of `suffixes`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))


# --- the test text ---------------------------------------------------------------------------

_LEVELS = ["INFO"] * 70 + ["DEBUG"] * 18 + ["WARN"] * 8 + ["ERROR"] * 4
_COMPONENTS = ["scheduler", "worker", "db.pool", "http.client", "cache", "uploader", "auth", "metrics",
               "backup.tar", "rsync", "k8s.watch", "queue.consumer"]
_PATHS = ["/var/lib/app/data", "/srv/backup/daily", "/home/build/src/pkg", "/tmp/job-cache", "/etc/app/conf.d"]
_WORDS = ["the", "of", "connection", "request", "retry", "timeout", "chunk", "segment", "table", "index", "user",
          "session", "token", "replica", "shard", "batch", "commit", "rollback", "snapshot", "volume", "block", "file",
          "record", "cursor", "page", "lease", "heartbeat"]


def _line(r: random.Random, ts: float, n: int) -> str:
    """One log line of a mixed, realistic shape; a few are long (JSON, stack traces, progress dumps)."""
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1e6) % 1000000:06d}Z"
    lvl, comp = r.choice(_LEVELS), r.choice(_COMPONENTS)
    head = f"{t} {lvl:<5} [{comp}-{r.randrange(8)}] "
    k = r.random()
    if k < 0.30:
        body = (f"processed batch {n} rows={r.randrange(100000)} bytes={r.randrange(1 << 30)} "
                f"in {r.random() * 3:.3f}s")
    elif k < 0.50:
        body = (f"GET /api/v2/{r.choice(_WORDS)}/{r.randrange(100000)}?page={r.randrange(50)} "
                f"status={r.choice((200, 200, 200, 204, 304, 404, 500))} dur_ms={r.random() * 250:.1f} "
                f"client=10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)}")
    elif k < 0.65:
        body = (f"{r.choice(_PATHS)}/{r.choice(_WORDS)}_{r.randrange(10000):04d}.dat: "
                f"copied {r.randrange(1 << 24)} bytes")
    elif k < 0.80:
        body = " ".join(r.choice(_WORDS) for _ in range(r.randrange(3, 14)))
    elif k < 0.93:
        body = f"req_id={r.getrandbits(64):016x} user={r.choice(_WORDS)}{r.randrange(500)} latency={r.random():.4f}"
    elif k < 0.985:
        fields = ", ".join(f'"{r.choice(_WORDS)}_{i}": {r.randrange(10 ** r.randrange(1, 9))}'
                           for i in range(r.randrange(5, 40)))
        body = "event {" + fields + "}"
    else:
        frames = "\n".join(f"    at {r.choice(_COMPONENTS)}.{r.choice(_WORDS)}"
                           f"({r.choice(_WORDS)}.py:{r.randrange(900)})" for _ in range(r.randrange(3, 25)))
        body = f"unhandled {r.choice(_WORDS)} error: {r.choice(_WORDS)} failed\n{frames}"
    return head + body + "\n"


def text_file(workdir: Path, size: int) -> Path:
    """A log-like text file of exactly `size` bytes, made once per size (seeded: the same every time)."""
    path = workdir / "data" / f"text-{size}.log"
    if path.is_file() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    r = random.Random(20251127)
    ts, n, written = 1764201600.0, 0, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="ascii", newline="") as f:
        while written < size:
            batch = []
            for _ in range(4096):
                ts += r.expovariate(2000)
                n += 1
                batch.append(_line(r, ts, n))
            block = "".join(batch)
            if written + len(block) > size:
                block = block[:size - written - 1] + "\n"
            f.write(block)
            written += len(block)
    os.replace(tmp, path)
    return path


# --- timed child processes -------------------------------------------------------------------


@dataclass
class Ran:
    """One finished child process: wall seconds, exit status, CPU seconds and peak RSS (KiB) of it and of
    the children it waited for (for `bash -c 'a | b'`, the whole pipeline)."""

    wall: float
    rc: int
    maxrss_kib: int
    cpu: float
    others: float  # share of the machine's CPU that other processes used meanwhile (0..1): the noise
    hwm_kib: int = 0  # VmHWM of the process itself, sampled from /proc while it ran (0 if not sampled)
    stderr: str = ""


def run_timed(argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Any = subprocess.DEVNULL,
              sample_hwm: bool = False, helpers: tuple[int, ...] = ()) -> Ran:
    """Run `argv` to its end; wall time from spawn to reap. Its rusage (wait4) gives its peak RSS:
    max of its own and its reaped children's, so a small child (cat) never hides the agent's own peak.
    `helpers` are pids working for the run (the S3 server): their CPU is not counted as noise."""
    err_path = cwd / f".stderr-{os.getpid()}"
    with open(err_path, "w+b") as err:
        busy0 = _machine_busy() - sum(map(_proc_cpu, helpers))
        began = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
        hwm = _HwmSampler(proc.pid) if sample_hwm else None
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        busy = _machine_busy() - sum(map(_proc_cpu, helpers)) - busy0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if hwm is not None:
            hwm.stop()
        err.seek(0)
        text = err.read().decode(errors="replace")
    err_path.unlink()
    cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, busy - cpu) / (wall * (os.cpu_count() or 1))
    return Ran(wall, proc.returncode, int(usage.ru_maxrss), cpu, others, hwm.peak if hwm else 0, text)


def _proc_cpu(pid: int) -> float:
    """CPU seconds process `pid` (all its threads) has used."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds all processes have used since boot (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _ours_cpu() -> float:
    """CPU seconds of this process and all its descendants so far, living (incl. what they reaped) or reaped."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    parent: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(name)], stats[int(name)] = int(fields[1]), fields
    ours, frontier = set(), [os.getpid()]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in ours]
        ours.update(kids)
        frontier += kids
    for pid in ours:
        total += sum(int(x) for x in stats[pid][11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


class OthersWindow:
    """The share of the machine's CPU (0..1) that processes other than this one and its descendants (servers,
    clients, tasks) used since it was made: the noise of a measurement that is not one timed child."""

    def __init__(self) -> None:
        self.busy, self.ours, self.began = _machine_busy(), _ours_cpu(), time.perf_counter()

    def share(self) -> float:
        busy, ours, wall = _machine_busy() - self.busy, _ours_cpu() - self.ours, time.perf_counter() - self.began
        return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


class _HwmSampler:
    """Polls /proc/PID/status for VmHWM every 10 ms (the process's own peak RSS so far)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.01):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


SETTLE = {"max_seconds": 30.0, "busy": 0.15}  # main() may change these (--settle)


def settle() -> None:
    """Before a round: wait (at most SETTLE max_seconds) until other processes use under SETTLE busy
    of the machine's CPU over a 1 s window. On a shared machine this skips the worst bursts."""
    began = time.monotonic()
    share = 0.0
    while True:
        b0, t0 = _machine_busy(), time.monotonic()
        time.sleep(1.0)
        share = (_machine_busy() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        if share < SETTLE["busy"] or time.monotonic() - began >= SETTLE["max_seconds"]:
            break
    waited = time.monotonic() - began
    if waited > 1.5:
        say(f"  (waited {waited:.0f} s for a quieter machine; others now use {share:.0%} of the CPU)")


def check(ran: Ran, what: str) -> Ran:
    if ran.rc != 0:
        raise SystemExit(f"bench: {what} failed with exit status {ran.rc}:\n{ran.stderr[-2000:]}")
    return ran


# --- results ---------------------------------------------------------------------------------


@dataclass
class Series:
    """Samples of one quantity across rounds, with its unit."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def spread(self, digits: int = 2) -> str:
        if not self.samples:
            return "-"
        return f"{self.median:.{digits}f} ({min(self.samples):.{digits}f}–{max(self.samples):.{digits}f})"

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "min": min(self.samples, default=None),
                "max": max(self.samples, default=None), "samples": self.samples}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
