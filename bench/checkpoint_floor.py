"""The floor of "one request per checkpoint" in this runtime (issue 14's CPU bar; docs/checkpoints.md §12 item 5).

Per checkpoint of 50 / 150 / 1500 KB of the bench's log-like text (550 index records each, as the checkpoint
bench's task writes at 10 / 30 / 300 KB/s every 5 s), process CPU (`time.process_time`: every thread of this
process; SeaweedFS runs apart), medians of `--n`:
- (a) compressing it once at the watcher's levels (zstd level 1, its index records at level 3, as
  bench/checkpoint.py counts it): the bar's baseline;
- (b) the floor: pread the new bytes and their index records from files, encode the delta (the two zstd
  frames, shipper/format/delta.py), sha256 it, and one signed PUT through our store (`store.put(checked=True,
  sha256=…)`: checked by that digest, SigV4, shipper/store/s3http.py), nothing else; all on the event loop,
  no thread hop;
- (c) a whole watcher pass that takes one such checkpoint (`Watcher.run_once`, as `python -m bench.pass_cost`,
  with the daemon's state file as it is written now: at most every `watch.state_seconds`), and "(c)+state":
  with the state file written after every pass instead (`Watcher.write_state`, as before state_seconds).
Prints (b)/(a) and (c)/(a). The bar is 2: when (b)/(a) > 2, no watcher that sends one request per
checkpoint in this runtime can meet it at that rate, and the output says so.

`nice python -m bench.checkpoint_floor [--kb 50 150 1500] [--n 60]`; not part of `python -m bench`'s table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from shipper.commands import s3local
from shipper.format import delta, index
from shipper.store import open_store

from .pass_cost import BUCKET, _chunks, _config, compress_cpu, passes

RECORDS = 550  # a record a 10 ms burst, 5 s of them
BAR = 2.0


def _records(chunks: list[tuple[bytes, int]], offset: int, seq: int) -> bytes:
    """The index records the agent writes for `chunks` (a chunk every 10 ms, stdout)."""
    out, ts = [], 1764201600 * 10**9 + seq * 10**7
    for i, (data, lines) in enumerate(chunks):
        out.append(index.pack(seq + i, ts + i * 10**7, offset, len(data), lines, index.STDOUT, 0))
        offset += len(data)
    return b"".join(out)


def _once(chunks: list[tuple[bytes, int]]) -> float:
    """(a): CPU seconds to compress one checkpoint's bytes once, as the watcher stores a sealed segment (zstd level
    1) and its index records (level 3): the median of 60."""
    return compress_cpu(b"".join(c for c, _ in chunks), _records(chunks, 1 << 20, RECORDS + 1), 60)


def _files(d: Path, kb: int) -> tuple[Path, Path, int, int]:
    """A log file holding one checkpoint's bytes after 1 MB of earlier ones, and an index file of its records
    after as many earlier ones: (log, index, offset of the new bytes, their size)."""
    chunks = _chunks(RECORDS, kb)
    data = b"".join(c for c, _ in chunks)
    log, idx = d / f"floor-{kb}.log", d / f"floor-{kb}.idx"
    log.write_bytes(os.urandom(1 << 20) + data)
    idx.write_bytes(_records([(b"x" * ((1 << 20) // RECORDS), 1)] * RECORDS, 0, 1)
                    + _records(chunks, 1 << 20, RECORDS + 1))
    return log, idx, 1 << 20, len(data)


STEPS = ("pread", "encode", "sha256", "put")


async def floor(d: Path, s3: s3local.LocalS3, kb: int, n: int) -> dict[str, float]:
    """Median CPU seconds of (b): pread, encode, sha256, one PUT; nothing else. Each step's median too."""
    log, idx, offset, size = _files(d, kb)
    store = open_store(_config(d, s3).store)
    fd_log, fd_idx = os.open(log, os.O_RDONLY), os.open(idx, os.O_RDONLY)
    cpu: dict[str, list[float]] = {k: [] for k in ("total", *STEPS)}
    try:
        for i in range(n + 10):  # the first 10 warm the connection pool and the signer's day key
            t0 = time.process_time()
            data = os.pread(fd_log, size, offset)
            raw_index = os.pread(fd_idx, 40 * RECORDS, 40 * RECORDS)
            t1 = time.process_time()
            blob = delta.encode(offset, raw_index, data, "zstd")
            t2 = time.process_time()
            digest = hashlib.sha256(blob).digest()  # the frame table's row binds it (shipper/format/frames.py)
            t3 = time.process_time()
            # checked by that digest (x-amz-checksum-sha256, shipper/store/s3checksum.py), SigV4, aiohttp
            await store.put(f"floor/{kb}/{i % 20}", blob, checked=True, sha256=digest)
            t4 = time.process_time()
            for k, v in zip(("total", *STEPS), (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                cpu[k].append(v)
    finally:
        os.close(fd_log)
        os.close(fd_idx)
        await store.close()
    return {k: statistics.median(v[10:]) for k, v in cpu.items()}


async def floor_all(base: Path, s3: s3local.LocalS3, kbs: list[int], n: int) -> dict[int, dict[str, float]]:
    return {kb: await floor(base, s3, kb, n) for kb in kbs}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.checkpoint_floor")
    ap.add_argument("--kb", type=int, nargs="+", default=[50, 150, 1500], help="KB a checkpoint")
    ap.add_argument("--n", type=int, default=60, help="checkpoints measured a size (medians; at least 50)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    s3 = s3local.start(base / "s3", bucket=BUCKET)
    try:
        (base / "floor").mkdir()
        b = asyncio.run(floor_all(base / "floor", s3, args.kb, args.n))
        print(f"CPU per checkpoint of {RECORDS} records, medians of {args.n} (ms); bar: within {BAR:g}x of (a)")
        print(f"{'KB':>6} {'(a) once':>9} {'(b) floor':>10} {'(c) pass':>9} {'(c)+state':>10} "
              f"{'(b)/(a)':>8} {'(c)/(a)':>8} {'(c)+state/(a)':>14}")
        verdicts = []
        for kb in args.kb:
            d = base / f"pass-{kb}"
            d.mkdir()
            a = _once(_chunks(RECORDS, kb))
            res = asyncio.run(passes(d, s3, RECORDS, args.n, False, kb))
            # the pass and the daemon's state file as it writes it now; and with one write each pass, as before
            c, state = (res["total"] + res["daemon: state file"]) / 1e3, res["daemon: write_state (each)"] / 1e3
            fl = b[kb]["total"]
            print(f"{kb:>6} {a * 1e3:>9.3f} {fl * 1e3:>10.3f} {c * 1e3:>9.3f} {(c + state) * 1e3:>10.3f} "
                  f"{fl / a:>8.2f} {c / a:>8.2f} {(c + state) / a:>14.2f}")
            steps = ", ".join(f"{k} {b[kb][k] * 1e3:.3f}" for k in STEPS)
            if fl / a > BAR:
                verdicts.append(f"at {kb} KB a checkpoint the floor alone is {fl / a:.1f}x compressing once: "
                                f"the {BAR:g}x bar is out of reach for any watcher that sends one request a "
                                f"checkpoint in this runtime ({(fl - a) * 1e3:.2f} ms a checkpoint beyond "
                                f"compressing; the floor's steps, ms: {steps})")
            else:
                verdicts.append(f"at {kb} KB a checkpoint the floor is {fl / a:.1f}x compressing once: "
                                f"within the {BAR:g}x bar; the whole pass is {c / a:.1f}x (the floor's steps, ms: "
                                f"{steps})")
        print("\n".join(verdicts))
    finally:
        s3local.stop(s3)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
