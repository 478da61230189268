"""Search over ~10 M archived lines: `logship query` vs `zstdcat … | grep -c` over the same raw segments.

`python -m bench.query [--quick] [--runs N]` (from the repo root). The log-like text goes through the
agent and `logship watch --once` into a file store; then, round by round and in rotating order:
- `zstdcat SEGMENTS | grep -cF NEEDLE` vs `logship query "SELECT count(*) FROM lines WHERE contains(line, …)"`
- `zstdcat SEGMENTS | grep -ci NEEDLE` vs the same with `regexp_matches(line, '(?i)…')` (what `grep -i`
  and /api/v1/search run), and for the record `contains(lower(line), …)` and `ILIKE`
- the raw `.log.zst` segments read directly by DuckDB's read_csv vs the Parquet query copy.
Each command's wall time includes its start-up (Python and DuckDB for logship). Stored bytes of the
raw segments and of the copy are counted from the archive.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ._util import DEFAULT_WORKDIR, ROOT, MiB, Series, check, clean_env, rmtree, run_timed, say, settle, text_file, tool

NEEDLE = "rollback snapshot"  # ≈ 1 line in 40 of the bench text
NEEDLE_I = "ROLLBACK Snapshot"
TEXT_BYTES = 1072 * MiB  # ≈ 10.0 M lines of the bench text (≈ 112 bytes a line)
QUICK_BYTES = 128 * MiB
TASK, HOST = "query", "bench"


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def commands(archive: Path) -> dict[str, list[str]]:
    """Every timed command, by name: baselines (grep) and ours (logship query)."""
    segs = " ".join(shlex.quote(str(p)) for p in sorted((archive / "logs" / TASK / HOST).glob("*.log.zst")))
    logship = tool("logship")
    raw = (f"read_csv({_sql_literal(str(archive) + '/logs/*/*/*.log.zst')}, columns = {{'line': 'VARCHAR'}}, "
           f"delim = {_sql_literal(chr(1))}, quote = '', escape = '', header = false, auto_detect = false)")

    def q(where: str, source: str = "lines") -> list[str]:
        return [logship, "query", "--format", "csv", f"SELECT count(*) FROM {source} WHERE {where}"]

    escaped = "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in NEEDLE_I)
    return {
        "grep -cF": ["bash", "-c", f"set -o pipefail; zstdcat {segs} | grep -cF {shlex.quote(NEEDLE)}"],
        "grep -ci": ["bash", "-c", f"set -o pipefail; zstdcat {segs} | grep -ci {shlex.quote(NEEDLE_I)}"],
        "contains": q(f"contains(line, {_sql_literal(NEEDLE)})"),
        "LIKE": q(f"line LIKE {_sql_literal('%' + NEEDLE + '%')}"),
        "regexp (?i)": q(f"regexp_matches(line, {_sql_literal('(?i)' + escaped)})"),
        "contains(lower())": q(f"contains(lower(line), {_sql_literal(NEEDLE_I.lower())})"),
        "ILIKE": q(f"line ILIKE {_sql_literal('%' + NEEDLE_I + '%')}"),
        "raw .zst contains": q(f"contains(line, {_sql_literal(NEEDLE)})", raw),
        "raw .zst regexp (?i)": q(f"regexp_matches(line, {_sql_literal('(?i)' + escaped)})", raw),
    }


def prepare(workdir: Path, text: Path) -> tuple[Path, dict[str, Any]]:
    """The text through the agent and the watcher into a file store; returns the archive and facts."""
    d = workdir / "query"
    rmtree(d)
    d.mkdir(parents=True)
    env = clean_env(LOGSHIP_SPOOL_DIR="spool", LOGSHIP_STORE_URL="file://archive",
                    LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    check(run_timed([tool("logship"), "run", "--task", TASK, "--host", HOST, "--", "cat", str(text.resolve())],
                    cwd=d, env=env), "logship run")
    ran = check(run_timed([tool("logship"), "watch", "--once"], cwd=d, env=env), "logship watch --once")
    archive = (d / "archive").resolve()

    def size(pattern: str) -> int:
        return sum(p.stat().st_size for p in archive.glob(pattern))

    facts = {"raw_bytes": text.stat().st_size, "segments_zst": size("logs/*/*/*.log.zst"),
             "index_zst": size("logs/*/*/*.idx.zst"), "copy_parquet": size("lines/*/*/*/*.parquet"),
             "objects": len(list(archive.glob("lines/*/*/*/*.parquet"))), "watch_seconds": ran.wall}
    manifest = json.loads((archive / "logs" / TASK / HOST / "manifest.json").read_text())
    facts["lines"] = manifest["lines"]
    return archive, facts


def run(workdir: Path, text: Path, runs: int) -> dict[str, Any]:
    archive, facts = prepare(workdir, text)
    say(f"  archived {facts['lines']:,} lines in {facts['objects']} segments; watcher {facts['watch_seconds']:.1f} s")
    cmds = commands(archive)
    env = clean_env(LOGSHIP_STORE_URL=f"file://{archive}")
    times = {name: Series(name, "s") for name in cmds}
    counts: dict[str, set[str]] = {name: set() for name in cmds}
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    try:
        for r in range(runs):
            names = list(cmds)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                settle()
                out = archive.parent / "out.txt"
                with open(out, "w") as f:
                    ran = check(run_timed(cmds[name], cwd=archive.parent, env=env, stdout=f), name)
                counts[name].add(out.read_text().split()[-1])
                times[name].samples.append(ran.wall)
                noise.samples.append(ran.others * 100)
            say(f"  query round {r + 1}/{runs}: " + ", ".join(f"{k} {s.samples[-1]:.2f}" for k, s in times.items()))
    finally:
        rmtree(workdir / "query")
    for a, b in (("grep -cF", "contains"), ("grep -cF", "LIKE"), ("grep -ci", "regexp (?i)"),
                 ("grep -ci", "contains(lower())"), ("grep -ci", "ILIKE"), ("contains", "raw .zst contains")):
        if counts[a] != counts[b] or len(counts[a]) != 1:
            raise SystemExit(f"bench: {a} counted {counts[a]} but {b} counted {counts[b]}")
    return {**facts, "times": times, "counts": {k: sorted(v) for k, v in counts.items()}, "noise": noise}


def rows_for(res: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Rows for bench/__main__.py's table: ratios are grep's time / ours (higher is better)."""
    from .__main__ import Row, paired

    t = res["times"]
    n = f"{res['lines'] / 1e6:.1f} M lines"
    rows = [
        Row(f"query {n}, case-sensitive: contains vs zstdcat | grep -cF (s)", t["grep -cF"].spread(),
            t["contains"].spread(), paired("contains", t["contains"], t["grep -cF"], invert=True), 1.0, 2.0),
        Row(f"query {n}, any case: regexp (?i) vs zstdcat | grep -ci (s)", t["grep -ci"].spread(),
            t["regexp (?i)"].spread(), paired("(?i)", t["regexp (?i)"], t["grep -ci"], invert=True), 1.0, 2.0),
    ]
    notes = [f"{k}: {s.spread()} s (count {res['counts'][k][0]})" for k, s in t.items()]
    raw = paired("raw", t["raw .zst contains"], t["contains"])
    notes.append(f"raw .zst segments by read_csv take {raw.spread()}x the time of the Parquet copy (contains)")
    seg = res["segments_zst"] + res["index_zst"]
    notes.append(f"stored: raw {res['raw_bytes'] / 1e6:.0f} MB; segments+index (zstd-1) {seg / 1e6:.0f} MB; "
                 f"query copy {res['copy_parquet'] / 1e6:.0f} MB (+{res['copy_parquet'] / seg:.0%} of the segments; "
                 f"{res['copy_parquet'] / res['raw_bytes']:.2f}x raw)")
    notes.append(f"logship watch --once (segments + copy, file store): {res['watch_seconds']:.1f} s")
    notes.append(f"noise: other processes used {res['noise'].spread(0)} % of the CPU during the timed runs")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_BYTES // MiB} MiB of text, 2 rounds")
    ap.add_argument("--runs", type=int, help="rounds (default 5; 2 with --quick)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)
    import os

    from .__main__ import table

    os.chdir(ROOT)
    args.workdir.mkdir(parents=True, exist_ok=True)
    text = text_file(args.workdir, QUICK_BYTES if args.quick else TEXT_BYTES)
    say(f"query: {text.stat().st_size // MiB} MiB of log-like text")
    res = run(args.workdir, text, args.runs or (2 if args.quick else 5))
    rows, notes = rows_for(res)
    print()
    print(table(rows))
    for note in notes:
        print(f"  {note}")
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + ("-quick" if args.quick else "") + "-query.json"
    doc = {k: (v.to_json() if isinstance(v, Series) else v) for k, v in res.items() if k != "times"}
    doc["times"] = {k: s.to_json() for k, s in res["times"].items()}
    (out / name).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwritten: bench/out/{name}")
    return 1 if any(r.verdict() == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
