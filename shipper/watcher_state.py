"""The watcher's state file, `<spool>/.watcher.json`: its health and counters, rewritten by shipper/watcher/
(at once when its health changes, else at most every `watch.state_seconds`: shipper/watcher/state_file.py)
and read by `logship watch --check` (shipper/commands/check.py) and `/metrics` (api/metrics.py).

The file lies in the spool, which others can write: reading it trusts no field. A field that is absent or
of the wrong type reads as its default, so each reader decides what it cannot do without.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shipper.format import names

from .spool import write_json_atomic


@dataclass
class WatcherState:
    pid: int | None = None  # of the watcher process
    updated_ns: int | None = None  # when it wrote the file: the end of a pass (at most watch.state_seconds ago)
    healthy: bool = False  # that pass reached the store
    started_ns: int = 0
    last_ok_ns: int = 0  # the end of the last pass that reached the store (0: none yet)
    last_error: str = ""  # why the last pass failed, if it did
    store: str = ""  # the store's URL
    stats: dict[str, int] = field(default_factory=dict)  # the watcher's counters (Watcher.stats)
    set_aside: dict[str, str] = field(default_factory=dict)  # "task/host" -> why that log is not shipped
    store_stats: dict[str, Any] | None = None  # its store client's StoreStats.snapshot()


class StateUnreadable(ValueError):
    """The file is there but is not a JSON object."""


def path(spool: Path) -> Path:
    return spool / names.WATCHER_STATE_FILE


def write(spool: Path, state: WatcherState) -> None:
    """Replace the file atomically. Not fsynced: it is rewritten every pass, and a crash may lose it."""
    # A shallow copy of each dict, not asdict's deep copy (≈ 0.1 ms of the watcher's every pass): the values are
    # numbers and strings, and the copies are what the JSON is made of while the loop counts on.
    doc = {f.name: getattr(state, f.name) for f in fields(state)}
    write_json_atomic(path(spool), {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}, durable=False)


def read(spool: Path) -> WatcherState:
    """The state in `spool`. FileNotFoundError if no watcher has written one; StateUnreadable or OSError if it
    cannot be read."""
    try:
        doc = json.loads(path(spool).read_bytes())
    except (ValueError, RecursionError) as exc:  # ValueError: also invalid UTF-8
        raise StateUnreadable(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise StateUnreadable(f"a JSON {type(doc).__name__}, not an object")
    stats = doc.get("stats")
    set_aside = doc.get("set_aside")
    store_stats = doc.get("store_stats")
    return WatcherState(
        pid=_int(doc.get("pid")), updated_ns=_int(doc.get("updated_ns")), healthy=doc.get("healthy") is True,
        started_ns=_int(doc.get("started_ns")) or 0, last_ok_ns=_int(doc.get("last_ok_ns")) or 0,
        last_error=_str(doc.get("last_error")), store=_str(doc.get("store")),
        stats={k: int(v) for k, v in stats.items() if isinstance(k, str) and _finite(v)}
        if isinstance(stats, dict) else {},
        set_aside={k: v for k, v in set_aside.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(set_aside, dict) else {},
        store_stats=store_stats if isinstance(store_stats, dict) else None)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
