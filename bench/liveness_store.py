"""What a silent running log costs the watcher in store requests (`python -m bench.liveness_store [MINUTES]`):
a `sleep` under `logship run` with the default sampling and checkpoint intervals, a watcher passing every
interval over a `file://` store, its requests counted after start-up (issue 15; docs/operations.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipper import catalog
from shipper.config import load_config
from shipper.store import open_store
from shipper.watcher import Watcher

from ._util import ROOT, clean_env

WARMUP_S = 15.0  # the first manifest and the catalog's start records are the log's start, not its silence


async def measure(minutes: float, tmp: Path) -> str:
    env = {"LOGSHIP_SPOOL_DIR": str(tmp / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp}/archive",
           "LOGSHIP_QUERY_COPY": "false"}
    cfg = load_config(env=env)
    agent = subprocess.Popen([sys.executable, "-m", "shipper.commands.cli", "run", "--task", "silent", "--host", "h1",
                              "--", "sh", "-c", "echo started; exec sleep 100000"],
                             env=clean_env(PYTHONPATH=str(ROOT), **env), stdout=subprocess.DEVNULL)
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    interval = cfg.watch.checkpoint_seconds
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < WARMUP_S:
            await w.run_once()
            await asyncio.sleep(interval)
        before = dict(store.stats.requests)
        puts, records = w.stats["liveness_puts"], catalog.writer.writer(store).records
        t1 = time.monotonic()
        while time.monotonic() - t1 < minutes * 60:
            await w.run_once()
            await asyncio.sleep(interval)
        took = time.monotonic() - t1
        spent = {k: n - before.get(k, 0) for k, n in store.stats.requests.items() if n != before.get(k, 0)}
        per_log = sum(n for k, n in spent.items() if k != "head_object")  # the HEAD is the watcher's probe
        return (f"{took:.0f} s silent: requests {spent}; per log {per_log} = {per_log * 3600 / took:.0f} per "
                f"log-hour (liveness PUTs {w.stats['liveness_puts'] - puts}, catalog records "
                f"{catalog.writer.writer(store).records - records})")
    finally:
        agent.kill()
        agent.wait()
        await store.close()


def main() -> None:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    with tempfile.TemporaryDirectory(prefix="bench-liveness-") as d:
        print(asyncio.run(measure(minutes, Path(d))))


if __name__ == "__main__":
    main()
