"""How far lines of stdout and stderr move against each other in the stored log (the two-pipe window).

A writer numbers its lines and stamps each with the time of its write (Unix ns, the chunk index's clock),
sending every EVERY-th line to stderr and the rest to stdout, one write per line, GAP µs apart. The stored
log (the spool's segments, in order) is then compared with the written order: how many lines moved, how far
(in lines), and the window (µs): for each line, how much later than it the latest line stored before it was
written.

    PYTHONPATH=. python -m bench.stream_order [--runs R] [--scale X]

Two pipes have no order between them (docs/format.md, "Stream order"); --merge-streams has no window.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Args: lines, gap in µs, every (line i goes to stderr when i % every == every - 1), and optionally a wait
# in ms before the first line (to leave the agent's start-up out: run.json's fsync). Each line is due a gap
# after the previous one was written (a writer that lost its CPU does not catch up in a burst); it sleeps
# until ~1 ms before, then spins: sleep alone wakes up to ~100 µs late under load.
WRITER = """\
import os, sys, time
n, gap, every = int(sys.argv[1]), int(sys.argv[2]) * 1000, int(sys.argv[3])
time.sleep(int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0)
pad = "x" * 72
due = 0
for i in range(n):
    if gap and i:
        ahead = (due - time.time_ns()) / 1e9 - 0.001
        if ahead > 0:
            time.sleep(ahead)
        while time.time_ns() < due:
            pass
    now = time.time_ns()
    os.write(2 if i % every == every - 1 else 1, b"%d %d %s\\n" % (i, now, pad.encode()))
    due = now + gap
"""
_LINE = re.compile(rb"(\d+) (\d+) x*")


@dataclass
class Order:
    lines: int
    moved: int  # lines not at their written position
    max_lines: int  # the farthest a line moved, in lines
    window_us: float  # the most a line was stored after a line written that much later than it
    streams_exact: bool  # each stream's own lines in their written order

    def row(self) -> str:
        return (f"{self.lines:>8} lines, {self.moved:>6} moved, max {self.max_lines:>5} lines, "
                f"window {self.window_us:>9.1f} µs, each stream in order: {self.streams_exact}")


def displacement(log: bytes, every: int) -> Order:
    """`log`: the writer's lines as stored. Raises ValueError on a line the writer did not write."""
    seqs: list[int] = []
    stamps: list[int] = []
    for raw in log.splitlines():
        m = _LINE.fullmatch(raw)
        if not m:
            raise ValueError(f"not a writer's line: {raw[:80]!r}")
        seqs.append(int(m[1]))
        stamps.append(int(m[2]))
    if sorted(seqs) != list(range(len(seqs))):
        raise ValueError("lines are missing or repeated")
    moved = max_lines = 0
    window = latest = 0
    last = {0: -1, 1: -1}
    exact = True
    for pos, (seq, ts) in enumerate(zip(seqs, stamps, strict=True)):
        if seq != pos:
            moved += 1
            max_lines = max(max_lines, abs(seq - pos))
        if pos and latest > ts:
            window = max(window, latest - ts)
        latest = max(latest, ts)
        err = int(seq % every == every - 1)
        exact = exact and seq > last[err]
        last[err] = seq
    return Order(len(seqs), moved, max_lines, window / 1000, exact)


def spooled(spool: Path) -> bytes:
    """All segments of the one log in `spool`, in order."""
    segs = sorted(p for p in spool.glob("*/*/*") if p.name[8:12] == ".log")
    return b"".join(p.read_bytes() for p in segs)


def measure(lines: int, gap_us: int, every: int, wait_ms: int = 0, *, merge: bool = False,
            logship: list[str] | None = None) -> Order:
    """Run the writer under `logship run` (in a spool of its own) and measure the stored order."""
    logship = logship or [sys.executable, "-m", "shipper.commands.cli"]
    with tempfile.TemporaryDirectory(prefix="logship-order-") as tmp:
        spool = Path(tmp) / "spool"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSHIP_")}
        env["LOGSHIP_SPOOL_DIR"] = str(spool)
        cmd = [*logship, "run", "--task", "order", "--host", "h", *(["--merge-streams"] if merge else []), "--",
               sys.executable, "-c", WRITER, str(lines), str(gap_us), str(every), str(wait_ms)]
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        if done.returncode:
            raise RuntimeError(f"logship run exited {done.returncode}")
        return displacement(spooled(spool), every)


# (lines, gap µs, every, wait ms): paced alternation from 100 to 100,000 lines/s, then as fast as Python
# writes; then mostly stdout with a stderr line every 1,000 (the 2 M-line task, shorter). All but
# the last start writing 300 ms after the agent (its start-up apart); the last writes from its first ms.
CASES = [(200, 10_000, 2, 300), (2_000, 1_000, 2, 300), (20_000, 100, 2, 300), (20_000, 10, 2, 300),
         (200_000, 0, 2, 300), (1_000_000, 0, 1000, 300), (40, 1_000, 2, 0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_order", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply each case's line count")
    args = ap.parse_args(argv)
    for lines, gap, every, wait in CASES:
        n = max(10, int(lines * args.scale))
        rate = f"{1e6 / gap:>9,.0f}/s" if gap else "  as fast"
        for r in range(args.runs):
            got = measure(n, gap, every, wait)
            print(f"gap {gap:>6} µs ({rate}), 1 stderr in {every:>4}, from {wait:>3} ms, run {r + 1}: {got.row()}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
