"""The one command (`python -m bench`): runs the parts, prints the table of ratios, writes bench/out/*.json."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._util import DEFAULT_WORKDIR, ROOT, SETTLE, GiB, MiB, Series, say, text_file, tool

SECTIONS = ("pipe", "task", "upload", "api", "query", "checkpoint", "catalog")
COLUMNS = ("what", "baseline", "ours", "ratio", "must", "aim", "result")
ALIASES = {"agent": ("pipe", "task")}  # "agent" = everything the agent is measured on (pipe + RSS, task)


@dataclass(frozen=True)
class Sizes:
    text: int  # the log-like text file, made once
    pipe_repeat: int  # cat'ed this many times through the pipe
    task_lines: int
    upload_repeat: int  # the upload spool: the text this many times
    api_repeat: int  # the log the API serves: the text this many times
    tail_seconds: float  # live tail latency: seconds of lines counted per client
    load_seconds: float  # API memory: the 10 downloads are cut off after this long
    runs: int


# The task runs ≈ 6 s alone: long enough that the agent's fixed start-up (≈ 60 ms, reported on its
# own) does not decide the ratio, as it would not for the minutes-long tasks logship is for.
FULL = Sizes(text=256 * MiB, pipe_repeat=8, task_lines=4_000_000, upload_repeat=4, api_repeat=8, tail_seconds=10,
             load_seconds=20, runs=5)  # 2 GiB, 1 GiB, 2 GiB
QUICK = Sizes(text=32 * MiB, pipe_repeat=8, task_lines=200_000, upload_repeat=4, api_repeat=8, tail_seconds=4,
              load_seconds=10, runs=2)  # 256 MiB, 128 MiB, 256 MiB


@dataclass
class Row:
    """One line of the final table; `higher` says which way the ratio is better."""

    what: str
    baseline: str
    ours: str
    ratio: Series | None
    must: float | None
    aim: float | None
    higher: bool = True
    value: float | None = None  # judged instead of the median ratio (e.g. peak RSS, no baseline)

    def verdict(self) -> str:
        v = self.value if self.value is not None else (self.ratio.median if self.ratio else None)
        if v is None or (self.must is None and self.aim is None):
            return "info"
        value = v

        def ok(bar: float) -> bool:
            return value >= bar if self.higher else value <= bar

        if self.must is not None and not ok(self.must):
            return "FAIL"
        if self.aim is not None and ok(self.aim):
            return "pass (aim)"
        return "pass" if self.must is not None else "below aim"

    def cells(self) -> list[str]:
        op = "≥" if self.higher else "≤"

        def bar(b: float | None) -> str:
            return "-" if b is None else f"{op} {b:g}"

        ratio = self.ratio.spread() if self.ratio else "-"
        return [self.what, self.baseline, self.ours, ratio, bar(self.must), bar(self.aim), self.verdict()]


def paired(name: str, ours: Series, base: Series, invert: bool = False) -> Series:
    """Per-round ratios ours/base (paired samples cancel drift in the machine's load better than medians)."""
    return Series(name, "x", [(b / o if invert else o / b) for o, b in zip(ours.samples, base.samples, strict=True)])


def rows_for(results: dict[str, Any]) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    if "pipe" in results:
        p = results["pipe"]
        sp = p["speed"]
        gb = f"{p['bytes'] / GiB:g} GiB"
        rows.append(Row(f"agent throughput, {gb} (GB/s) vs tee", sp["tee"].spread(), sp["agent"].spread(),
                        paired("vs tee", sp["agent"], sp["tee"]), 0.9, None))
        rows.append(Row(f"agent throughput, {gb} (GB/s) vs dd bs=1M", sp["dd bs=1M"].spread(), sp["agent"].spread(),
                        paired("vs dd", sp["agent"], sp["dd bs=1M"]), None, 0.9))
        rss = p["rss"]
        rows.append(Row(f"agent peak RSS (MB), {gb} run; judged on the max", "-", rss.spread(1), None, 50, 30,
                        higher=False, value=max(rss.samples)))
        notes.append(f"producer alone (cat > /dev/null): {sp['producer > /dev/null'].spread()} GB/s; "
                     f"pipe ceiling (cat | cat > /dev/null): {sp['producer | cat > /dev/null'].spread()} GB/s")
        notes.append("CPU s (user+sys) of the whole pipeline, producer included: " + ", ".join(
            f"{k} {p['cpu'][k].spread()}" for k in ("tee", "dd bs=1M", "agent")))
        notes.append(f"agent VmHWM sampled from /proc (the agent alone, cross-check of wait4's peak): "
                     f"{p['hwm'].spread(1)} MB")
    for key in ("task", "task-line"):
        if key not in results:
            continue
        t = results[key]
        w, c = t["wall"], t["cpu"]
        extra = Series("the agent's extra CPU", "CPU s",
                       [a - b for a, b in zip(c["agent"].samples, c["alone"].samples, strict=True)])
        if t["mode"] == "block":
            rows.append(Row(f"task wall time, {t['lines']:,} lines, 8 KiB writes (s)", w["alone"].spread(3),
                            w["agent"].spread(3), paired("wall", w["agent"], w["alone"]), 1.05, 1.02, higher=False))
            how = "8 KiB writes"
        else:
            # A write per line costs the task itself more in a pipe than into /dev/null, whoever reads:
            # judged against `task | cat`, with no bar (the bar is for the default buffering).
            rows.append(Row(f"task wall time, {t['lines']:,} lines, a write per line (s), vs task | cat",
                            w["cat"].spread(3), w["agent"].spread(3), paired("wall", w["agent"], w["cat"]),
                            None, None, higher=False))
            how = "a write per line"
        notes.append(f"task, {how}: wall s alone {w['alone'].spread(3)}, | cat {w['cat'].spread(3)}; "
                     f"under the agent / alone {paired('x', w['agent'], w['alone']).spread()}, "
                     f"| cat / alone {paired('x', w['cat'], w['alone']).spread()}")
        notes.append(f"task, {how}: the agent's fixed cost, `logship run -- true` wall {t['startup'].spread(0)} ms")
        notes.append(f"task, {how}: CPU s alone {c['alone'].spread()}, | cat {c['cat'].spread()}, the agent's extra "
                     f"{extra.spread()}; agent peak RSS {t['rss'].spread(1)} MB")
    if "upload" in results:
        u = results["upload"]
        sp = u["speed"]
        aims = {"zstd": 2.0, "none": 1.2}
        for c in ("zstd", "none"):
            rows.append(Row(f"upload {u['bytes'] / GiB:.2g} GiB, {u['segments']} segments, {c} (raw MB/s) vs rclone",
                            sp["rclone"].spread(0), sp[c].spread(0), paired(c, sp[c], sp["rclone"]), 1.0, aims[c]))
        rows.append(Row("same, zstd + the Parquet query copy (the watcher's default) vs rclone",
                        sp["rclone"].spread(0), sp["copy"].spread(0), paired("copy", sp["copy"], sp["rclone"]),
                        None, None))
        z = u["stored"]["zstd"].median
        notes.append(f"stored with the query copy: {u['stored']['copy'].median:.0f} MB (segments + copies)")
        notes.append("client CPU s (user+sys): " + ", ".join(f"{k} {u['cpu'][k].spread(1)}" for k in u["cpu"]))
        notes.append(f"stored by the watcher with zstd: {z:.0f} MB of {u['bytes'] / 1e6:.0f} MB raw "
                     f"({u['bytes'] / 1e6 / z:.2f}x smaller)")
    if "api" in results:
        from . import api

        a_rows, a_notes = api.rows_for(results["api"])
        rows += a_rows
        notes += a_notes
    if "query" in results:
        from . import query

        q_rows, q_notes = query.rows_for(results["query"])
        rows += q_rows
        notes += q_notes[:-1]  # its last note is the noise, given below with every part's
    for part in ("checkpoint", "catalog"):  # parts whose rows and notes are taken as they come
        if part in results:
            p_rows, p_notes = importlib.import_module(f".{part}", __package__).rows_for(results[part])
            rows += p_rows
            notes += p_notes
    return rows, notes


def table(rows: list[Row]) -> str:
    head = list(COLUMNS)
    cells = [head] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]

    def line(c: list[str]) -> str:
        return "  ".join(s.ljust(w) for s, w in zip(c, widths, strict=True)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in cells[1:]])


def machine() -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return ""

    return {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "commit": out("git", "rev-parse", "--short", "HEAD"),
            "dirty": bool(out("git", "status", "--porcelain")),
            "tee": out("tee", "--version"), "rclone": out(tool("rclone"), "version"),
            "weed": out(tool("weed"), "version")}


def to_json(value: Any) -> Any:
    if isinstance(value, Series):
        return value.to_json()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="a small smoke run (256 MiB pipe, 128 MiB upload, 256 MiB API log, 40 s checkpoint tasks, "
                         "2 runs)")
    ap.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}, or agent (= pipe,task)")
    ap.add_argument("--runs", type=int, help="rounds per measurement (default 5; 2 with --quick)")
    ap.add_argument("--settle", type=float, default=30.0, metavar="SECONDS",
                    help="before each round, wait up to this long for other processes to use < 15%% of the CPU "
                         "(default 30; 0 = never wait)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help=f"scratch space on the disk under test (default {DEFAULT_WORKDIR}, relative to the repo)")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    only: list[str] = []
    for name in filter(None, (s.strip() for s in args.only.split(","))):
        if name not in SECTIONS and name not in ALIASES:
            ap.error(f"--only: unknown part {name!r}; choose from {', '.join((*SECTIONS, *ALIASES))}")
        only += ALIASES.get(name, (name,))
    parts = [s for s in SECTIONS if not only or s in only]

    SETTLE["max_seconds"] = args.settle
    os.chdir(ROOT)  # every path the bench uses is relative to the repo
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    say(f"bench: {', '.join(parts)}; {runs} rounds each; scratch in {workdir}")
    text = text_file(workdir, sizes.text)
    results: dict[str, Any] = {}
    if "pipe" in parts:
        from . import agent

        say(f"pipe: cat of a {sizes.text // MiB} MiB log-like text ×{sizes.pipe_repeat}")
        results["pipe"] = agent.pipe(workdir, text, sizes.pipe_repeat, runs)
    if "task" in parts:
        from . import agent

        for mode in agent.TASK_MODES:
            say(f"task: an output-heavy Python script, {sizes.task_lines:,} lines, stdout {mode}-buffered")
            results["task" if mode == "block" else f"task-{mode}"] = agent.task(workdir, sizes.task_lines, runs, mode)
    if "upload" in parts:
        from . import upload

        say(f"upload: {sizes.text * sizes.upload_repeat // MiB} MiB of sealed segments to a local SeaweedFS")
        results["upload"] = upload.run(workdir, text, sizes.upload_repeat, runs)
    if "api" in parts:
        from . import api

        say(f"api: a {sizes.text * sizes.api_repeat // MiB} MiB log through `logship serve` (local SeaweedFS); "
            f"live tail; memory under load")
        results["api"] = api.run(workdir, text, sizes.api_repeat, runs, sizes.tail_seconds, sizes.load_seconds)

    if "query" in parts:
        from . import query

        qtext = text_file(workdir, query.QUICK_BYTES if args.quick else query.TEXT_BYTES)
        say(f"query: search over {qtext.stat().st_size // MiB} MiB of archived log-like text (file store)")
        results["query"] = query.run(workdir, qtext, runs)

    if "checkpoint" in parts:
        from . import checkpoint

        seconds = checkpoint.QUICK_SECONDS if args.quick else checkpoint.FULL_SECONDS
        say(f"checkpoint: steady tasks at 10, 30, 300 KB/s for {seconds:.0f} s, through a counting proxy")
        results["checkpoint"] = checkpoint.run(workdir, text, seconds)

    if "catalog" in parts:
        from . import catalog

        say("catalog: 100,000 logs straight into a local SeaweedFS, rebuild, then each listing")
        results["catalog"] = catalog.run(workdir, runs=max(runs, 5) * 4)

    rows, notes = rows_for(results)
    for part, r in results.items():
        notes.append(f"noise, {part}: other processes used {r['noise'].spread(0)} % of the machine's CPU "
                     "during the timed runs" + (" (busy: absolute figures are noisy, paired ratios less so)"
                                                 if r["noise"].median > 10 else ""))
    print()
    print(table(rows))
    for n in notes:
        print(f"  {n}")
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)), "seconds": round(time.time() - began),
           "quick": args.quick, "runs": runs, "settle_seconds": args.settle, "sizes": sizes.__dict__,
           "machine": machine(),
           "results": to_json(results),
           "table": [dict(zip(COLUMNS, r.cells(), strict=True)) for r in rows]}
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(began)) + ("-quick" if args.quick else "") + ".json"
    (out / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    (out / "latest.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwritten: bench/out/{name} (and bench/out/latest.json)")
    return 1 if any(r.verdict() == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
