"""Parts of several row groups (parts.ROW_GROUP rows each): a reader decodes only the groups a page may need
(their started_ns statistics, and for task=, tasks= and label= a first pass over the filter columns), and
every page is still the brute-force scan's, with no gap or duplicate across pages."""

from __future__ import annotations

import secrets
import time
from typing import Any

from shipper import catalog
from shipper.catalog import Filters, parts, rows
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.store import Store

DAY = 86_400 * 10**9
BASE = (time.time_ns() // DAY - 1) * DAY
N = 2 * parts.ROW_GROUP + 700  # one day's part of three row groups


async def pages(store: Store, f: Filters, limit: int) -> list[dict[str, Any]]:
    reader = catalog.Reader(store)
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = await reader.page(f, cursor, limit)
        out += page
        if cursor is None:
            return out


async def test_pages_over_row_groups_are_the_scan(store: Store) -> None:
    docs = []
    for i in range(N):
        run = {"task": f"t{i // 13:03d}", "host": f"h{i % 13}", "run_id": secrets.token_hex(8),
               "started_ns": BASE + (i // 3) * 10**9, "command": ["x"], "labels": {"k": str(i % 5)} if i % 2 else {}}
        status = manifest.RUNNING if i % 50 == 0 else manifest.FINISHED
        doc = Manifest.build(run, None if status == manifest.RUNNING else {"exit_code": 0, "ended_ns": 1}, status,
                             [], None, [], "zstd")
        await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
        docs.append(doc)
    await catalog.rebuild(store, grace_s=0)
    (part,) = await catalog.Reader(store).summary((await catalog.Reader(store).head()).summaries)
    pf = parts.open_part(part.key, await store.get(part.key))
    assert len(pf.starts) == 3 and all(pf.starts)
    truth = sorted((rows.from_manifest(d) for d in docs), key=lambda r: r.order)
    mid = truth[N // 2].started_ns
    for f in (Filters(), Filters(host="h3"), Filters(task="t005"), Filters(tasks=("t001", "t196")),
              Filters(labels=(("k", "3"),)), Filters(since=mid), Filters(until=mid), Filters(since=mid - 600 * 10**9,
              until=mid + 60 * 10**9, host="h7"), Filters(status="running")):
        want = [r.listing() for r in truth if f.fixed(r) and f.final(r)]
        assert want, f
        for limit in (7, 1000):
            got = await pages(store, f, limit)
            assert [(r["task"], r["host"]) for r in got] == [(r["task"], r["host"]) for r in want], (f, limit)
            assert got == want, (f, limit)
