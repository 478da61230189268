"""Upload of sealed segments to a local SeaweedFS: `logship watch --once` (zstd, none, zstd + query copy)
vs `rclone copy`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from shipper.commands import s3local

from ._util import Series, check, clean_env, rmtree, run_timed, say, settle, tool, tree_bytes

BUCKET = "bench"
TASK, HOST = "upload", "bench"
# "copy": zstd plus the Parquet query copy of each segment (docs/query.md), the watcher's default job.
# The bar compares shipping bytes with rclone, so "zstd" and "none" run with query.copy off.
VARIANTS = ("zstd", "none", "copy")


def prepare(workdir: Path, text: Path, repeat: int) -> Path:
    """The spool to ship, made once by the agent from `cat TEXT×repeat` (default 16 MiB segments)."""
    src = workdir / "upload" / "src"
    rmtree(src.parent)
    src.mkdir(parents=True)
    producer = ["cat", *[str(text.resolve())] * repeat]
    check(run_timed([tool("logship"), "run", "--task", TASK, "--host", HOST, "--", *producer], cwd=src,
                    env=clean_env(LOGSHIP_SPOOL_DIR="spool")), "logship run (preparing the upload spool)")
    got = tree_bytes(src / "spool")
    if got != text.stat().st_size * repeat:
        raise SystemExit(f"bench: the upload spool holds {got} bytes, not {text.stat().st_size * repeat}")
    return src / "spool"


def run(workdir: Path, text: Path, repeat: int, runs: int) -> dict[str, Any]:
    spool = prepare(workdir, text, repeat)
    log_dir = spool / TASK / HOST
    segments = sorted(p.name for p in log_dir.iterdir() if p.name.endswith((".log", ".idx")))
    raw = tree_bytes(log_dir, (".log", ".idx"))
    say(f"  upload spool: {len(segments) // 2} sealed segments, {raw / 1e6:.0f} MB (.log + .idx)")
    s3dir = workdir / "s3"
    s3local.stop(s3dir)
    rmtree(s3dir)
    server = s3local.start(s3dir, bucket=BUCKET)
    try:
        return _rounds(workdir / "upload", log_dir, raw, len(segments) // 2, server, runs)
    finally:
        s3local.stop(server)
        rmtree(s3dir)
        rmtree(workdir / "upload")


def _rounds(d: Path, log_dir: Path, raw: int, nseg: int, server: s3local.LocalS3, runs: int) -> dict[str, Any]:
    keys = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    # rclone's remote "bench", from the environment alone (no config file is read or written).
    rclone_env = clean_env(RCLONE_CONFIG=str((d / "rclone.conf").resolve()), RCLONE_CONFIG_BENCH_TYPE="s3",
                           RCLONE_CONFIG_BENCH_PROVIDER="SeaweedFS", RCLONE_CONFIG_BENCH_ENDPOINT=server.endpoint,
                           RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.access_key,
                           RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.secret_key)
    rclone = tool("rclone")
    series = {"rclone": Series("rclone copy", "MB/s"), **{c: Series(f"logship watch --once ({c})", "MB/s")
                                                           for c in VARIANTS}}
    cpu = {k: Series(s.name, "CPU s") for k, s in series.items()}  # the client's user+sys
    stored = {c: Series(f"stored bytes ({c})", "MB") for c in VARIANTS}
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    for r in range(runs):
        settle()
        order = ["rclone", *VARIANTS]
        # rotate, so no side always runs on a warmer or fuller server
        order = order[r % len(order):] + order[:r % len(order)]
        for side in order:
            prefix = f"r{r}-{side}"
            if side == "rclone":
                ran = check(run_timed([rclone, "copy", "-q", "--include", "*.log", "--include", "*.idx",
                                       str(log_dir.resolve()), f"bench:{BUCKET}/{prefix}"], cwd=d, env=rclone_env,
                                      helpers=(server.pid,)), "rclone copy")
                listed = subprocess.run([rclone, "lsf", f"bench:{BUCKET}/{prefix}"], cwd=d, env=rclone_env,
                                        capture_output=True, text=True, check=True).stdout.split()
                if len(listed) != 2 * nseg:
                    raise SystemExit(f"bench: rclone copied {len(listed)} files, not {2 * nseg}")
            else:
                copy = d / f"spool-{prefix}"
                # A fresh spool with nothing marked shipped: hard links to the prepared segments
                # (the watcher only reads them, and every file it writes is new).
                subprocess.run(["cp", "-al", str(log_dir.parent.parent), str(copy)], check=True)
                env = clean_env(**keys, LOGSHIP_SPOOL_DIR=copy.name, LOGSHIP_STORE_URL=f"s3://{BUCKET}/{prefix}",
                                LOGSHIP_STORE_ENDPOINT=server.endpoint,
                                LOGSHIP_STORE_COMPRESSION="none" if side == "none" else "zstd",
                                LOGSHIP_QUERY_COPY="true" if side == "copy" else "false",
                                LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="365d")
                ran = check(run_timed([tool("logship"), "watch", "--once"], cwd=d, env=env, helpers=(server.pid,)),
                            f"logship watch ({side})")
                stats = json.loads((copy / ".watcher.json").read_text())["stats"]
                if stats["segments_uploaded"] != nseg or not (copy / TASK / HOST / "shipped.json").exists():
                    raise SystemExit(f"bench: the watcher uploaded {stats['segments_uploaded']} of {nseg} segments "
                                     f"({side}); its log:\n{ran.stderr[-2000:]}")
                if side == "copy" and stats["query_copies"] != nseg:
                    raise SystemExit(f"bench: the watcher made {stats['query_copies']} query copies of {nseg}")
                stored[side].samples.append((stats["bytes_uploaded"] + stats["query_copy_bytes"]) / 1e6)
                rmtree(copy)
            series[side].samples.append(raw / ran.wall / 1e6)
            cpu[side].samples.append(ran.cpu)
            noise.samples.append(ran.others * 100)
            # Keep the server small: each round writes ≈ 2.3 GiB.
            check(run_timed([rclone, "purge", f"bench:{BUCKET}/{prefix}"], cwd=d, env=rclone_env), "rclone purge")
        say(f"  upload round {r + 1}/{runs}: " + ", ".join(f"{k} {s.samples[-1]:.0f}" for k, s in series.items())
            + " MB/s (raw bytes per second)")
    return {"bytes": raw, "segments": nseg, "speed": series, "cpu": cpu, "stored": stored, "noise": noise}

