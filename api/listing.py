"""GET /api/v1/tasks: a page of the catalog (shipper/catalog), with the local spool's logs of the same window
when the API runs beside a spool: their rows are fresher (not noted yet, or running: the exact size and
silence from the spool, where the catalog has the sealed size and a silence noted past a threshold).

The listing's fields and how stale a central one can be: docs/format.md, "Catalog". A row's `end_reason`
is not a catalog field: it follows from the row's status, signal and exit code, and only for a run the agent
ended by its own policy (the silence kill) from the manifest, read for those rows alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shipper.errors import StoreError
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
_REASON = re.compile(r"[a-z_]{1,32}")  # exit.json's end_reason, as shipper.format.manifest checks it


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
    found, nxt = await catalog.list_rows(request.app[STORE], filters, position, limit)  # bad records: own row only
    rows = [r.listing() for r in found]
    for row, reason in zip(rows, await asyncio.gather(*(_end_reason(request.app, r) for r in found)), strict=True):
        row["end_reason"] = reason
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
        reason = r.pop("end_reason")
        if (prev is None or prev["run_id"] == r["run_id"]) and (after is None or k > after) and (
                bound is None or k <= bound) and f.fixed(row := catalog.Row(**r, version_ns=0)):
            merged[(r["task"], r["host"])] = row.listing(now) | {"end_reason": reason}
    page = sorted(merged.values(), key=_sort_key)
    if len(page) > limit:
        page, last = page[:limit], page[limit - 1]
        nxt = (last["started_ns"], last["task"], last["host"])
    return [r for r in page if f.final(catalog.rows.check({**{k: r[k] for k in catalog.rows.LISTING_FIELDS},
                                                           "version_ns": 0}))], nxt


def end_reason(status: str, signal: int | None, exit_code: int | None, noted: str | None) -> str | None:
    """How a run ended, as the listing says it: null while running, `lost` (the agent died), the reason the
    agent noted when its policy ended the task (`silence`), `signal` (a signal ended it), else `exit`."""
    if status == manifest.RUNNING:
        return None
    if status == manifest.LOST:
        return manifest.LOST
    return noted or ("signal" if signal is not None else "exit")


def _by_policy(signal: int | None, exit_code: int | None) -> bool:
    """A signal ended the task, yet the exit code is not the shell's 128+N: the agent chose it (the silence
    policy exits as timeout(1) does), and noted why in exit.json, hence in the manifest."""
    return signal is not None and exit_code != 128 + signal


async def _end_reason(app: web.Application, row: catalog.Row) -> str | None:
    """The listing's `end_reason` of a catalog row; the manifest is read only for a run ended by policy."""
    noted = None
    if row.status == manifest.FINISHED and _by_policy(row.signal, row.exit_code):
        key = names.manifest_key(row.task, row.host)
        try:
            doc = manifest.Manifest.load(await app[STORE].get(key), row.task, row.host)
        except (StoreError, manifest.ManifestError) as exc:  # costs only this row's reason (then `signal`)
            _quiet.log(logging.WARNING, key, "listing: no end reason from %s: %s", key, exc)
        else:
            noted = doc.end_reason if doc.run_id == row.run_id else None
    return end_reason(row.status, row.signal, row.exit_code, noted)


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
        ex = sl.exit or {}
        status = ex.get("status", manifest.FINISHED) if sl.finished else manifest.RUNNING
        live = liveness.read(d / names.LIVENESS_FILE) if status == manifest.RUNNING else None
        signal = ex.get("signal") if isinstance(ex.get("signal"), int) else None
        noted = r if isinstance(r := ex.get("end_reason"), str) and _REASON.fullmatch(r) else None
        rows.append({"task": sl.task, "host": sl.host, "run_id": sl.run["run_id"], "status": status,
                     "exit_code": ex.get("exit_code"), "started_ns": sl.run["started_ns"],
                     "ended_ns": ex.get("ended_ns"), "size": _spool_size(d, sl), "lines": None,
                     "labels": sl.run.get("labels", {}), "command": sl.run["command"],
                     "silent_since_ns": live.last_output_ns if live is not None else None, "signal": signal,
                     "end_reason": end_reason(status, signal, ex.get("exit_code"), noted)})
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
