"""The agent's cost: pipe throughput and peak RSS (vs tee, dd) and an output-heavy task's wall time (vs alone)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from ._util import Series, check, clean_env, rmtree, run_timed, say, settle, tool, tree_bytes

# The output-heavy task: CPU work per line (formatting, a little arithmetic), ~110-byte lines.
# Its stdout is opened explicitly, so the caller's PYTHONUNBUFFERED (set on some machines) cannot
# change what is measured: "block" is what a script writing to a pipe does by default (8 KiB
# writes); "line" is one write per line, as a logger that flushes every record does.
TASK = """\
import sys, time
n, mode = int(sys.argv[1]), sys.argv[2]
out = open(1, "w", buffering=1 if mode == "line" else 8192, closefd=False)
acc = 0
for i in range(n):
    acc = (acc * 31 + i * i) % 1000003
    out.write(f"{time.strftime('%H:%M:%S')}.{i % 1000:03d} INFO [worker-{i % 8}] step {i} "
              f"acc={acc} ratio={acc / (i + 1):.6f} item=item-{i * 7919 % 100003:06d} ok\\n")
out.flush()
"""
TASK_MODES = ("block", "line")


def pipe(workdir: Path, text: Path, repeat: int, runs: int) -> dict[str, Any]:
    """`cat TEXT×repeat` through tee, dd, and the agent (each writing a file on the same disk)."""
    total = text.stat().st_size * repeat
    d = workdir / "pipe"
    rmtree(d)
    d.mkdir(parents=True)
    src = " ".join([shlex.quote(str(text.resolve()))] * repeat)
    producer = ["cat", *[str(text.resolve())] * repeat]
    logship = tool("logship")
    env = clean_env()
    shell = {
        "producer > /dev/null": f"cat {src} > /dev/null",
        "producer | cat > /dev/null": f"cat {src} | cat > /dev/null",
        "tee": f"cat {src} | tee out.tee > /dev/null",
        "dd bs=1M": f"cat {src} | dd of=out.dd bs=1M status=none",
    }
    speed = {k: Series(k, "GB/s") for k in [*shell, "agent"]}
    cpu = {k: Series(k, "CPU s") for k in speed}  # user+sys of the whole pipeline, producer included
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    rss = Series("agent peak RSS", "MB")
    hwm = Series("agent VmHWM (sampled)", "MB")
    for r in range(runs):
        settle()
        order = [*shell, "agent"]
        for name in order[r % len(order):] + order[:r % len(order)]:  # rotated: no side always runs first
            if name == "agent":
                spool = d / "spool"
                ran = check(run_timed([logship, "run", "--task", f"pipe-{r}", "--host", "bench", "--", *producer],
                                      cwd=d, env={**env, "LOGSHIP_SPOOL_DIR": "spool"}, sample_hwm=True),
                            "logship run")
                got = tree_bytes(spool)
                if got != total:
                    raise SystemExit(f"bench: the agent spooled {got} bytes, not {total}")
                rmtree(spool)
                rss.samples.append(ran.maxrss_kib * 1024 / 1e6)
                hwm.samples.append(ran.hwm_kib * 1024 / 1e6)
            else:
                ran = check(run_timed(["bash", "-c", "set -o pipefail; " + shell[name]], cwd=d, env=env), name)
                for out in d.glob("out.*"):
                    if out.stat().st_size != total:
                        raise SystemExit(f"bench: {name} wrote {out.stat().st_size} bytes, not {total}")
                    out.unlink()
            speed[name].samples.append(total / ran.wall / 1e9)
            cpu[name].samples.append(ran.cpu)
            noise.samples.append(ran.others * 100)
        say(f"  pipe round {r + 1}/{runs}: " + ", ".join(f"{k} {s.samples[-1]:.2f}" for k, s in speed.items())
            + f" GB/s; agent RSS {rss.samples[-1]:.1f} MB")
    rmtree(d)
    return {"bytes": total, "speed": speed, "cpu": cpu, "rss": rss, "hwm": hwm, "noise": noise}


def task(workdir: Path, lines: int, runs: int, mode: str) -> dict[str, Any]:
    """The output-heavy task alone, under the agent, and piped to cat (the floor of any pipe reader);
    its stdout (or the agent's, or cat's) goes to /dev/null in each."""
    d = workdir / "task"
    rmtree(d)
    d.mkdir(parents=True)
    (d / "task.py").write_text(TASK)
    cmd = [sys.executable, "task.py", str(lines), mode]
    env = clean_env()
    runs_of = {
        "alone": cmd,
        "agent": [tool("logship"), "run", "--task", "task", "--host", "bench", "--", *cmd],
        "cat": ["bash", "-c", "set -o pipefail; " + " ".join(map(shlex.quote, cmd)) + " | cat > /dev/null"],
    }
    wall = {k: Series(f"task ({k})", "s") for k in runs_of}
    cpu = {k: Series(f"task ({k})", "CPU s") for k in runs_of}
    rss = Series("agent peak RSS", "MB")
    startup = Series("logship run -- true, wall", "ms")  # what the agent adds to any task, however short
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    for r in range(runs):
        settle()
        ran = check(run_timed([tool("logship"), "run", "--task", f"startup-{r}", "--host", "bench", "--", "true"],
                              cwd=d, env={**env, "LOGSHIP_SPOOL_DIR": "spool"}), "logship run -- true")
        startup.samples.append(ran.wall * 1000)
        order = list(runs_of)
        for side in order[r % len(order):] + order[:r % len(order)]:  # rotated: no side always runs first
            ran = check(run_timed(runs_of[side], cwd=d, env={**env, "LOGSHIP_SPOOL_DIR": "spool"}), f"task ({side})")
            if side == "agent":
                rmtree(d / "spool")  # the start-up runs' logs too
                rss.samples.append(ran.maxrss_kib * 1024 / 1e6)
            wall[side].samples.append(ran.wall)
            cpu[side].samples.append(ran.cpu)
            noise.samples.append(ran.others * 100)
        say(f"  task ({mode}) round {r + 1}/{runs}: " + ", ".join(f"{k} {v.samples[-1]:.3f}" for k, v in wall.items())
            + " s")
    rmtree(d)
    return {"lines": lines, "mode": mode, "wall": wall, "cpu": cpu, "rss": rss, "startup": startup, "noise": noise}
