"""GET /api/v1/tasks: a page of the catalog (shipper/catalog), with the local spool's logs of the same window
when the API runs beside a spool: their rows are fresher (not noted yet, or running: the exact size and
silence from the spool, where the catalog has the sealed size and a silence noted past a threshold).

The listing's fields and how stale a central one can be: docs/format.md, "Catalog".
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shipper.format import index, liveness, manifest, names
from shipper.retry import QuietLog
from shipper.spool import SpoolDamaged, SpoolLog, iter_logs, read_log

from . import params
from .keys import CONFIG, SOURCE, STORE

if TYPE_CHECKING:  # imported when first asked: pyarrow is 40 MB of an idle API (bench/README.md)
    from shipper import catalog

routes = web.RouteTableDef()
log = logging.getLogger("logship.api")
_quiet = QuietLog(log)


@routes.get("/api/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    from shipper import catalog

    status = params.choice(request, "status", (manifest.RUNNING, manifest.FINISHED, manifest.LOST))
    filters = catalog.Filters(since=params.since_ns(request), until=params.since_ns(request, "until"),
                              status=status, host=params.task_host(request, "host"),
                              task=params.task_host(request, "task"), labels=params.labels(request),
                              silent_since=params.since_ns(request, "silent_since"))
    limit = params.integer(request, "limit", 100, 1, 1000)
    assert limit is not None
    position = params.cursor(request)
    rows, nxt = await catalog.list_logs(request.app[STORE], filters, position, limit)  # bad records: own row only
    page, nxt = await _with_spool(request.app, filters, position, limit, rows, nxt)
    return web.json_response({"logs": page, "next_cursor": params.encode_cursor(*nxt) if nxt else None})


async def _with_spool(app: web.Application, f: catalog.Filters, position: catalog.Cursor | None, limit: int,
                      rows: list[dict[str, Any]], nxt: catalog.Cursor | None
                      ) -> tuple[list[dict[str, Any]], catalog.Cursor | None]:
    """The catalog's page with the local spool's rows of the same window (fresher, or not noted yet)."""
    from shipper import catalog

    now = time.time_ns()
    for r in rows:  # counted to the answer's time
        r["silent_seconds"] = catalog.rows.silent_seconds(r["status"], r["silent_since_ns"], now)
    if not app[SOURCE].spool:
        return rows, nxt
    after = None if position is None else (-position[0], position[1], position[2])
    bound = None if nxt is None else (-nxt[0], nxt[1], nxt[2])  # the catalog's page ends here
    merged = {(r["task"], r["host"]): r for r in rows}
    for r in await asyncio.to_thread(spool_rows, app[CONFIG].spool_dir, f.task):
        prev = merged.get((r["task"], r["host"]))
        k = _sort_key(r)
        if prev is not None and prev["run_id"] == r["run_id"]:
            r["lines"] = prev["lines"]  # the spool has the exact size; the lines are those the catalog noted
        if (prev is None or prev["run_id"] == r["run_id"]) and (after is None or k > after) and (
                bound is None or k <= bound) and f.fixed(row := catalog.Row(**r, version_ns=0)):
            merged[(r["task"], r["host"])] = row.listing(now)
    page = sorted(merged.values(), key=_sort_key)
    if len(page) > limit:
        page, last = page[:limit], page[limit - 1]
        nxt = (last["started_ns"], last["task"], last["host"])
    return [r for r in page if f.final(catalog.rows.check({**{k: r[k] for k in catalog.rows.LISTING_FIELDS},
                                                           "version_ns": 0}))], nxt


def _sort_key(r: dict[str, Any]) -> tuple[int, str, str]:
    return (-r["started_ns"], r["task"], r["host"])


def spool_rows(spool: Any, task: str | None) -> list[dict[str, Any]]:
    """The listing's fields of each log in the spool not yet shipped whole: a running log's size is where
    its newest index ends, its `silent_since_ns` the last output liveness.json saw (exact, no threshold)."""
    rows = []
    for d in iter_logs(spool):
        if task is not None and d.parent.name != task:
            continue
        try:
            sl = read_log(d)
        except SpoolDamaged as exc:  # the watcher sets it aside and says so; it costs only its own row here
            _quiet.log(logging.WARNING, str(d), "listing leaves out a damaged spool log: %s", exc)
            continue
        if sl is None or (d / names.SHIPPED_FILE).exists():
            continue
        status = (sl.exit or {}).get("status", manifest.FINISHED) if sl.finished else manifest.RUNNING
        live = liveness.read(d / names.LIVENESS_FILE) if status == manifest.RUNNING else None
        rows.append({"task": sl.task, "host": sl.host, "run_id": sl.run["run_id"], "status": status,
                     "exit_code": (sl.exit or {}).get("exit_code"), "started_ns": sl.run["started_ns"],
                     "ended_ns": (sl.exit or {}).get("ended_ns"), "size": _spool_size(d, sl), "lines": None,
                     "labels": sl.run.get("labels", {}), "command": sl.run["command"],
                     "silent_since_ns": live.last_output_ns if live is not None else None})
    return rows


def _spool_size(d: Path, sl: SpoolLog) -> int | None:
    """Where the newest index in the spool ends (its last whole record), None when there is none."""
    for seq in sorted([*sl.sealed, *sl.sealing, *([sl.open] if sl.open is not None else [])], reverse=True):
        for open_ in (True, False):
            try:
                fd = os.open(names.spool_index(d, seq, open_=open_), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                size = os.fstat(fd).st_size
                whole = size - size % index.RECORD_SIZE
                last = list(index.unpack(os.pread(fd, index.RECORD_SIZE, whole - index.RECORD_SIZE))) if whole else []
            except OSError:
                last = []
            finally:
                os.close(fd)
            if last:
                return last[-1].end
    return None
