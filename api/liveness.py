"""A log's liveness as the API beside its spool serves it: the `liveness` object of one log's metadata and
the per-log silence and CPU lines of /metrics, both read from the agent's liveness.json (issue 15).

liveness.json is a spool file others can write: shipper/format/liveness.py checks it, and a missing or bad
one is no liveness (the key is left out, the log's lines too), never an error of the answer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from shipper.format import liveness, names
from shipper.retry import QuietLog
from shipper.spool import SpoolDamaged, iter_logs, read_log

_quiet = QuietLog(logging.getLogger("logship.api"))


_NS = {"type": "integer", "description": "Unix time in nanoseconds"}
_PROCESS = {"type": "object", "required": ["pid", "ppid", "state", "cpu_seconds", "rss_bytes", "command", "wchan"],
            "properties": {"pid": {"type": "integer"}, "ppid": {"type": "integer"},
                           "state": {"type": "string", "description": "the letter of /proc/PID/stat: R S D Z T ..."},
                           "cpu_seconds": {"type": "number"}, "rss_bytes": {"type": "integer"},
                           "command": {"type": "string", "description": "its command line, cut short"},
                           "wchan": {"type": "string", "description": "the kernel function it sleeps in, or empty"}}}
SCHEMA: dict[str, Any] = {  # the OpenAPI schema of `of_log`'s answer (api/openapi.py names it Liveness)
    "type": "object", "description": "served beside the spool: the agent's last sample of the task's process tree; "
    "a running log's silent_seconds is counted to the time of the answer, a finished log's to its end",
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
