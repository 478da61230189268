"""The cost of one liveness sample (`python -m bench.liveness`): trees of 10, 100 and 1,000 processes, and a
tree of one among 1,000 strangers (the pass over /proc reads every process's stat, the tree's or not)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import timeit

from shipper.liveness import Sampler, Silence

RUNS = 30


def spawn(n: int, mark: str | None = None) -> subprocess.Popen[bytes]:
    """A task of n sleeps under one sh (n + 1 processes), in its own group."""
    script = f"i=0; while [ $i -lt {n} ]; do sleep 600 & i=$((i+1)); done; wait"
    return subprocess.Popen(["sh", "-c", script], process_group=0,
                            env={**os.environ, "LOGSHIP_RUN_ID": mark} if mark else None)


def settle(sampler: Sampler, members: int) -> None:
    end = time.monotonic() + 60
    while (s := sampler.sample()) is None or len(s.processes) < members:
        if time.monotonic() > end:
            raise SystemExit(f"bench: the tree never reached {members} processes")
        time.sleep(0.1)


def cost_us(sampler: Sampler) -> tuple[float, float]:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        sampler.sample()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times), min(times)


def measure(label: str, tree: int, strangers: int) -> None:
    others = spawn(strangers) if strangers else None
    task = spawn(tree - 1, mark="bench")
    try:
        sampler = Sampler(task.pid, mark="bench")
        settle(sampler, tree)
        if others:
            settle(Sampler(others.pid), strangers + 1)
        on_machine = sum(name.isdigit() for name in os.listdir("/proc"))
        median, best = cost_us(sampler)
        print(f"{label:<28} {tree:>5} {on_machine:>8} {median:>10.0f} {best:>8.0f} {median / on_machine:>8.1f}")
    finally:
        for p in (task, others):
            if p:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def stall_ms(sampler: Sampler, how: str, seconds: float = 3.0) -> float:
    """The worst gap in a loop like the agent's pump (a syscall, a 0.5 ms sleep) while the sampler runs
    every 0.5 s inline in that loop, in a thread beside it, or not at all."""
    stop, worst, last, due = time.monotonic() + seconds, 0.0, time.perf_counter(), time.monotonic()
    done = threading.Event()
    thread = threading.Thread(target=lambda: [sampler.sample() for _ in iter(lambda: done.wait(0.5), True)])
    if how == "thread":
        thread.start()
    while time.monotonic() < stop:
        if how == "inline" and time.monotonic() >= due:
            sampler.sample()
            due += 0.5
        os.getpid()
        time.sleep(0.0005)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    done.set()
    if how == "thread":
        thread.join()
    return worst * 1e3


def pump_stalls() -> None:
    others, task = spawn(1000), spawn(0)
    try:
        sampler = Sampler(task.pid)
        settle(Sampler(others.pid), 1001)
        worst = {how: stall_ms(sampler, how) for how in ("none", "inline", "thread")}
        print("worst pump stall, 1100 processes on the machine: "
              + ", ".join(f"sampler {how} {ms:.1f} ms" for how, ms in worst.items()))
    finally:
        for p in (task, others):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    print(f"{'one sample':<28} {'tree':>5} {'machine':>8} {'median us':>10} {'min us':>8} {'us/proc':>8}")
    for n in (10, 100, 1000):
        measure(f"a tree of {n}", n, 0)
    measure("a tree of 1, 1000 strangers", 1, 1000)
    pump_stalls()
    silence = Silence(time.monotonic())
    now = time.monotonic()
    per = min(timeit.repeat("s.last_output = now", globals={"s": silence, "now": now}, number=1_000_000, repeat=5))
    print(f"Silence.last_output = now: {per * 1e3:.1f} ns per store (the agent's cost per read)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
