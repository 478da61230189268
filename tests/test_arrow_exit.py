"""No Arrow pool thread is left holding a Python buffer when the process exits (docs/catalog.md §5,
"Parquet reads and process exit").

`pq.read_table` reads through pyarrow's dataset scanner, which decodes on Arrow's thread pools even with
use_threads=False; the last reference to the bytes it read (a Python object, wrapped zero-copy) could then be
dropped on a pool thread, which takes the GIL for it. If that happens while the interpreter finalizes,
Python ends the thread with pthread_exit, whose unwinding through Arrow's noexcept destructor aborts the
process: "terminate called without an active exception", exit 134, about 2 % of short processes that read
one Parquet object (100 runs of a read_table and exit). The catalog reads in the calling thread instead
(ParquetFile.read): the test is that a process doing everything `logship ls` / `catalog compact|rebuild|check`
do never starts an Arrow pool thread, and that the probe sees one when read_table is used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# Counts the OS threads that are neither Python's nor jemalloc's background thread: Arrow pool workers,
# which live until the process exits once started.
PROBE = """
import os, threading
def arrow_threads():
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{t}/comm").read().strip())
        except OSError:
            pass
    return len(names) - names.count("jemalloc_bg_thd") - threading.active_count()
def settled():
    # A Python thread just joined (the loop's executor, shut down by asyncio.run) can still be an OS thread for a
    # moment after it left threading's list; an Arrow pool worker stays until the process exits.
    import time
    for _ in range(100):
        if (n := arrow_threads()) == 0:
            return n
        time.sleep(0.02)
    return n
"""

CATALOG = PROBE + """
import asyncio, sys, time
from pathlib import Path
from shipper import catalog
from shipper.catalog import Filters, Settings, parts
from shipper.config import StoreConfig
from shipper.format import manifest, names
from shipper.format.manifest import Segment
from shipper.store import open_store

async def main(root):
    store = open_store(StoreConfig(url=f"file://{root}"))
    now = time.time_ns()
    for i in range(40):
        run = {"task": f"job-{i % 7}", "host": f"h{i}", "run_id": f"{i:032x}", "started_ns": now - i * 10**12,
               "command": ["sh"], "labels": {"team": "db"}}
        seg = Segment(seq=1, offset=0, raw_size=10, stored_size=9, index_size=4, sha256="0" * 64,
                      compression="zstd", first_ts=now, last_ts=now, lines=1, chunks=(1, 1))
        doc = manifest.Manifest.build(run, {"exit_code": 0, "ended_ns": now}, manifest.FINISHED, [seg], None, [],
                                      "zstd")
        await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
        await catalog.note(store, doc)
    for _ in range(2):
        await catalog.Compactor(store, Settings(grace_s=0)).run()
    await catalog.Compactor(store, Settings(grace_s=0)).run(consolidate=True)
    for f in (Filters(), Filters(host="h3"), Filters(task="job-2"), Filters(status="running")):
        rows, nxt = await catalog.list_logs(store, f, None, 5)
        assert rows or f.status, f
    await catalog.check(store)
    await catalog.rebuild(store, fresh=True, grace_s=0)
    rows, _ = await catalog.list_logs(store, Filters(), None, 50)
    assert len(rows) == 40, len(rows)
    part = [o.key for o in await store.list(names.CATALOG_PARTS) if names.parse_catalog_part_key(o.key)][0]
    parts.decode_part(part, await store.get(part))
    await store.close()

asyncio.run(main(sys.argv[1]))
print(settled())
"""

READ_TABLE = PROBE + """
import pyarrow as pa, pyarrow.parquet as pq
from shipper.catalog import parts
pq.read_table(pa.BufferReader(parts.encode_summary(1, [])), use_threads=False)
print(settled())
"""


def _run(script: str, *args: str) -> int:
    p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    return int(p.stdout.split()[-1])


def test_catalog_commands_start_no_arrow_pool_thread(tmp_path: Path) -> None:
    assert _run(CATALOG, str(tmp_path / "archive")) == 0


def test_the_probe_sees_read_tables_pool_thread() -> None:
    assert _run(READ_TABLE) >= 1


def test_no_product_code_reads_parquet_through_the_dataset_scanner() -> None:
    """read_table, pyarrow.dataset and pre-buffered reads run on Arrow's pools: the reason above."""
    offenders = [f"{path.relative_to(ROOT)}: {line.strip()}"
                 for tree in ("shipper", "api") for path in sorted((ROOT / tree).rglob("*.py"))
                 for line in path.read_text().splitlines()
                 if ("pq.read_table(" in line or "pyarrow.dataset" in line or "pre_buffer=True" in line)
                 and not line.lstrip().startswith("#")]
    assert offenders == []
