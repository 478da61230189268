"""A log's liveness as the API serves it: the `liveness` object of one log's metadata and the per-log silence
and CPU lines of /metrics (issue 15). Beside the spool both come from the agent's liveness.json; a central API
(the log is not in its spool) answers from the store: the newer of the manifest's `liveness` and the watcher's
liveness object (shipper/liveness_ship.py), a silent sample's silence counted to the answer's time.

liveness.json, the manifest and the object are untrusted: shipper/format/liveness.py checks them, and a
missing or bad one is no liveness (the key is left out, the log's lines too), never an error of the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from shipper.errors import ObjectNotFound, StoreError
from shipper.format import liveness, names
from shipper.format.parts import LogView
from shipper.retry import QuietLog
from shipper.spool import SpoolDamaged, iter_logs, read_log
from shipper.store import Store

_quiet = QuietLog(logging.getLogger("logship.api"))


_NS = {"type": "integer", "description": "Unix time in nanoseconds"}
_PROCESS = {"type": "object", "required": ["pid", "ppid", "state", "cpu_seconds", "rss_bytes", "command", "wchan"],
            "properties": {"pid": {"type": "integer"}, "ppid": {"type": "integer"},
                           "state": {"type": "string", "description": "the letter of /proc/PID/stat: R S D Z T ..."},
                           "cpu_seconds": {"type": "number"}, "rss_bytes": {"type": "integer"},
                           "command": {"type": "string", "description": "its command line, cut short"},
                           "wchan": {"type": "string", "description": "the kernel function it sleeps in, or empty"}}}
SCHEMA: dict[str, Any] = {  # the OpenAPI schema of `of_log`'s answer (api/openapi.py names it Liveness)
    "type": "object", "description": "the agent's last sample of the task's process tree, from the spool beside "
    "the API, else from the store (at most 60 s plus a checkpoint interval old, a change of silence or processes "
    "within a pass); a running log's silent_seconds is counted to the time of the answer (from the store: once "
    "the sample shows 10 s of silence), a finished log's to its end",
    "required": ["last_output_ns", "silent_seconds", "sampled_ns", "cpu_seconds", "processes"],
    "additionalProperties": True, "properties": {
        "last_output_ns": _NS, "silent_seconds": {"type": "number"},
        "sampled_ns": {"type": ["integer", "null"], "description": "null: no sample (no /proc)"},
        "cpu_seconds": {"type": ["number", "null"], "description": "the whole tree's, exited members included"},
        "processes": {"type": "array", "items": _PROCESS, "description": "the root first, then by pid"},
        "processes_total": {"type": "integer",
                            "description": f"members of the tree; processes holds at most {liveness.MAX_PROCESSES}"},
        "silence": {"type": ["object", "null"], "description": "the run's --silence-timeout and action"},
        "events": {"type": "array", "items": {"type": "object"}, "description": "silence events, newest last"}}}


async def of_view(store: Store, view: LogView) -> dict[str, Any] | None:
    """The `liveness` of a log's metadata: from its spool when it is in ours, else from the store."""
    running = not view.finished
    if view.spool_dir is not None:
        return await asyncio.to_thread(of_log, view.spool_dir, running)
    doc = view.doc.liveness if view.doc is not None else None
    if running:
        got = await _stored(store, view.task, view.host)
        if got is not None and (doc is None or got.written_ns > doc.written_ns):
            doc = got
    if doc is None:
        return None
    # A busy sample's silence is known only to when it was written (the watcher sends the start of a
    # silence within a pass); a silent one's goes on to now, as beside the spool.
    return doc.to_json(time.time_ns() if running and liveness.silent(doc) else None)


async def _stored(store: Store, task: str, host: str) -> liveness.Liveness | None:
    key = names.liveness_key(task, host)
    try:
        data = await store.get(key)
    except ObjectNotFound:
        return None
    except StoreError as exc:  # the metadata answers without it
        _quiet.log(logging.WARNING, key, "liveness of %s/%s left out: %s", task, host, exc)
        return None
    try:
        if len(data) > liveness.STORED_MAX:
            raise liveness.BadLiveness(f"{len(data)} bytes")
        return liveness.parse_stored(json.loads(data))
    except (ValueError, RecursionError) as exc:  # BadLiveness, not JSON: costs only this log's liveness
        _quiet.log(logging.WARNING, key, "liveness of %s/%s left out: %s is not one a watcher writes (%s)",
                   task, host, key, exc)
        return None


def of_log(spool_dir: Path | None, running: bool) -> dict[str, Any] | None:
    """The `liveness` object of a log held in this spool, or None. A running log's silence is counted to
    now (the agent writes every agent.sample_seconds); a finished log's last sample keeps its silence at
    the end."""
    if spool_dir is None:
        return None
    doc = liveness.read(spool_dir / names.LIVENESS_FILE)
    return None if doc is None else doc.to_json(time.time_ns() if running else None)


def metric_lines(spool: Path | None) -> list[str]:
    """logship_log_silent_seconds and logship_log_cpu_seconds_total of each running log in the spool that
    has a good liveness.json (a log without a CPU sample has no CPU line)."""
    if spool is None:
        return []
    silent = ["# TYPE logship_log_silent_seconds gauge"]
    cpu = ["# TYPE logship_log_cpu_seconds_total counter"]
    now = time.time_ns()
    for d in iter_logs(spool):
        try:
            sl = read_log(d)
        except SpoolDamaged as exc:  # costs only its own lines
            _quiet.log(logging.WARNING, str(d), "/metrics leaves out a damaged spool log: %s", exc)
            continue
        if sl is None or sl.finished or (d / names.SHIPPED_FILE).exists():
            continue
        doc = liveness.read(d / names.LIVENESS_FILE)
        if doc is None:
            continue
        labels = f'task="{_label(sl.task)}",host="{_label(sl.host)}"'
        silent.append(f"logship_log_silent_seconds{{{labels}}} {doc.silent_seconds(now):.3f}")
        if doc.cpu_seconds is not None:
            cpu.append(f"logship_log_cpu_seconds_total{{{labels}}} {doc.cpu_seconds:.3f}")
    return silent + cpu


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped (ids are checked, this is belt and braces)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
