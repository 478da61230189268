"""Event-loop CPU per S3 request, botocore's against our own (shipper/store/s3ops.py), in-process against a local
SeaweedFS: `python -m bench.s3calls [--rounds 200]`. Not in the bench's table; docs/checkpoints.md §12 item 5.

Both ways run on one S3Store (`_ops.ours` switched), interleaved round by round so load hits both alike;
CPU is time.thread_time() around each awaited call (everything runs on the loop's thread), so waiting on
the server is not counted and the server's own CPU is another process's. On a loaded machine (a VM's vCPU
shared) every figure grows, ours and botocore's alike: read the ratio, and the load printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from shipper.commands import s3local
from shipper.store.s3 import S3Store

from ._util import ROOT

PUT_BYTES = 50_000  # a checkpoint's delta of a 10 KB/s log
LIST_KEYS = 1000  # one LIST page


async def _cpu(call: Callable[[], Awaitable[object]]) -> float:
    began = time.thread_time()
    await call()
    return time.thread_time() - began


async def measure(store: S3Store, rounds: int) -> dict[str, dict[str, float]]:
    body = os.urandom(PUT_BYTES)
    await asyncio.gather(*(store.put(f"page/{i:06d}.log", b"x" * 100) for i in range(LIST_KEYS)))
    await store.put("head/k", body)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        f"PUT of {PUT_BYTES // 1000} KB (Content-MD5)": lambda: store.put("put/k", body),
        f"LIST page of {LIST_KEYS} keys": lambda: store.list_page("page/"),
        "HEAD": lambda: store.head("head/k"),
        "DeleteObjects of 1 key": lambda: store.delete(["gone/k"]),
    }
    samples: dict[tuple[str, str], list[float]] = {(c, w): [] for c in calls for w in ("botocore", "ours")}
    for n in range(rounds + 5):  # the first 5 warm both ways up (connections, botocore's loaders)
        for name, call in calls.items():
            for way in (("botocore", "ours") if n % 2 else ("ours", "botocore")):
                store._ops.ours = way == "ours"
                took = await _cpu(call)
                if n >= 5:
                    samples[(name, way)].append(took)
    store._ops.ours = True
    return {name: {way: statistics.median(samples[(name, way)]) * 1e3 for way in ("botocore", "ours")}
            for name in calls}


async def run(rounds: int, work: Path) -> dict[str, dict[str, float]]:
    inst = await asyncio.to_thread(s3local.start, work / "s3")
    store = S3Store(inst.store_config("bench-s3calls/"))
    try:
        return await measure(store, rounds)
    finally:
        await store.close()
        await asyncio.to_thread(s3local.stop, inst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.s3calls", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="calls of each kind and way (default 200)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="s3calls-") as tmp:
        result = asyncio.run(run(args.rounds, Path(tmp)))
    load = max(load, os.getloadavg()[0])
    print(f"\nevent-loop CPU per request, ms (medians of {args.rounds}; local SeaweedFS; load {load:.1f} "
          f"on {os.cpu_count()} CPUs)")
    print(f"{'request':<34} {'botocore':>9} {'ours':>7} {'ratio':>6}")
    for name, r in result.items():
        print(f"{name:<34} {r['botocore']:>9.3f} {r['ours']:>7.3f} {r['botocore'] / r['ours']:>5.1f}×")
    out = ROOT / "bench/out"
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-s3calls.json"
    (out / name).write_text(json.dumps({"rounds": args.rounds, "load": load, "ms": result}, indent=1) + "\n")
    print(f"\nwritten: bench/out/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
