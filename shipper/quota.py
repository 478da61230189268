"""The spool quota (spool.quota_bytes) and what happens at it.

Policy, in order, until the spool is under its quota:
1. delete sealed segments the store already holds (oldest first), however recent;
2. drop the oldest sealed segments not yet uploaded, except each log's first segment (the
   start of a log says what ran and how; the newest output says how it ended).
Open segments are never touched, so the agent is never stopped. Every dropped segment is
recorded in its log's dropped.json (and from there in the manifest) and counted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from . import index, names
from .spool import iter_logs, read_json, read_log, write_json_atomic

DROPPED_FILE = "dropped.json"


def enforce_quota(spool: Path, quota: int, is_uploaded: Callable[[Path, int], bool]
                  ) -> tuple[int, list[tuple[Path, dict[str, Any]]]]:
    """Returns (bytes the spool holds after enforcement, [(log dir, dropped entry)])."""
    used = 0
    sealed: list[tuple[float, Path, int, int, bool]] = []  # mtime, dir, seq, bytes, uploaded
    for d in iter_logs(spool):
        sl = read_log(d)
        if sl is None:
            continue
        shipped = (d / names.SHIPPED_FILE).exists()
        for seq in [*sl.sealing, *([sl.open] if sl.open is not None else [])]:
            used += _size(names.spool_segment(d, seq, open_=True)) + _size(names.spool_index(d, seq, open_=True))
        for seq in sl.sealed:
            path = names.spool_segment(d, seq)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            size = st.st_size + _size(names.spool_index(d, seq))
            used += size
            sealed.append((st.st_mtime, d, seq, size, shipped or is_uploaded(d, seq)))
    dropped: list[tuple[Path, dict[str, Any]]] = []
    if used <= quota:
        return used, dropped
    sealed.sort(key=lambda s: s[0])
    for mtime, d, seq, size, uploaded in sealed:  # 1: what the store already holds
        if used <= quota:
            break
        if uploaded:
            _remove(d, seq)
            used -= size
    for mtime, d, seq, size, uploaded in sealed:  # 2: the oldest not yet uploaded, but never a first segment
        if used <= quota:
            break
        if not uploaded and seq != 1:
            entry = _record_drop(d, seq)
            _remove(d, seq)
            used -= size
            if entry is not None:
                dropped.append((d, entry))
    return used, dropped


def _record_drop(d: Path, seq: int) -> dict[str, Any] | None:
    chunks = index.read(str(names.spool_index(d, seq)), missing_ok=True)
    if not chunks:
        return None
    entry = {"seq": seq, "offset": chunks[0].offset, "raw_size": chunks[-1].end - chunks[0].offset,
             "first_ts": chunks[0].ts_ns, "last_ts": chunks[-1].ts_ns,
             "lines": sum(c.lines for c in chunks)}  # later segments' line numbers count these lines
    doc = read_json(d / DROPPED_FILE) or []
    doc.append(entry)
    write_json_atomic(d / DROPPED_FILE, doc)
    return entry


def _remove(d: Path, seq: int) -> None:
    names.spool_segment(d, seq).unlink(missing_ok=True)
    names.spool_index(d, seq).unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
