"""The spool quota (spool.quota_bytes) and what happens at it.

Policy, in order, until the spool is under its quota:
1. delete sealed segments the store already holds (oldest first), however recent;
2. drop the oldest sealed segments not yet uploaded, except each log's first segment (the
   start of a log says what ran and how; the newest output says how it ended).
Open segments are never touched, so the agent is never stopped. Every dropped segment is
recorded in its log's dropped.json (and from there in the manifest) and counted.

dropped.json also records ranges lost to a damaged spool (`reason: damaged`, shipper/spool/integrity.py
check_segment) or missing from both spool and store (`reason: missing`); a quota drop says `quota`.
A log whose spool files are damaged (spool.SpoolDamaged) is counted but never dropped from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipper.format import names

from .spool import (
    QUOTA,
    JsonCache,
    SpoolDamaged,
    check_segment,
    iter_logs,
    read_file,
    read_json,
    read_log,
    segment_end,
    write_json_atomic,
)


def is_quota_drop(entry: dict[str, Any]) -> bool:
    """A whole segment dropped at the quota (its seq is not in the store), not a range lost inside one."""
    return bool(entry.get("reason", QUOTA) == QUOTA)


def read_dropped(d: Path, cache: JsonCache | None = None) -> list[dict[str, Any]]:
    """The log's record of what the store will never have (SpoolDamaged if it is not such a list). With `cache`,
    read and checked again only when the file changed (the watcher's passes)."""
    if cache is not None:
        return cache.read(d / names.DROPPED_FILE, check=lambda doc: _check_dropped(doc, d)) or []
    doc = read_json(d / names.DROPPED_FILE) or []
    _check_dropped(doc, d)
    return doc


def _check_dropped(doc: Any, d: Path) -> None:
    if not isinstance(doc, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), int) and not isinstance(e.get(k), bool) and e[k] >= 0
                                        for k in ("seq", "offset", "raw_size")) for e in doc):
        raise SpoolDamaged(f"{d / names.DROPPED_FILE} is not a list of dropped ranges",
                           "the log is set aside: inspect or move its spool directory, then restart `logship watch`")


def record_dropped(d: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ranges to the log's dropped.json (once: a range already there is not added again).

    Returns the entries that were new."""
    doc = read_dropped(d)
    have = {(e["offset"], e["raw_size"]) for e in doc}
    new = [e for e in entries if (e["offset"], e["raw_size"]) not in have]
    if new:
        write_json_atomic(d / names.DROPPED_FILE, doc + new)
    return new


def enforce_quota(spool: Path, quota: int, is_uploaded: Callable[[Path, int], bool]
                  ) -> tuple[int, list[tuple[Path, dict[str, Any]]]]:
    """Returns (bytes the spool holds after enforcement, [(log dir, dropped entry)])."""
    used = 0
    sealed: list[tuple[float, Path, int, int, bool]] = []  # mtime, dir, seq, bytes, uploaded
    for d in iter_logs(spool):
        try:
            sl = read_log(d)
        except SpoolDamaged:  # set aside by the watcher: its bytes count, nothing of it is dropped unrecorded
            used += sum(p.lstat().st_size for p in d.iterdir() if p.name[8:12] in (".log", ".idx"))
            continue
        if sl is None:
            continue
        shipped = (d / names.SHIPPED_FILE).exists()
        used += sl.unsealed_bytes()
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
    for _mtime, d, seq, size, uploaded in sealed:  # 1: what the store already holds
        if used <= quota:
            break
        if uploaded:
            _remove(d, seq)
            used -= size
    for _mtime, d, seq, size, uploaded in sealed:  # 2: the oldest not yet uploaded, but never a first segment
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
    """Record a segment about to be dropped; None (and it is kept) if its range cannot be told."""
    try:
        raw = read_file(names.spool_index(d, seq), 64 << 20) or b""
        size = _size(names.spool_segment(d, seq))
        start, last = segment_end(d, seq - 1) if seq > 1 else (0, 0)
        known = seq == 1 or (start, last) != (0, 0)
        # only the offsets are needed: the bytes of a chunk past the index are never read here
        check = check_segment(raw, size, start if known else None, last + 1 if known else None,
                              lambda a, b: b"", str(names.spool_segment(d, seq)), 0)
    except SpoolDamaged:
        return None
    if not check.chunks:
        return None
    chunks = check.chunks
    entry = {"seq": seq, "offset": check.start, "raw_size": check.size,
             "first_ts": chunks[0].ts_ns, "last_ts": chunks[-1].ts_ns,
             "lines": sum(c.lines for c in chunks), "reason": QUOTA}  # later segments' line numbers count these
    record_dropped(d, [entry])
    return entry


def _remove(d: Path, seq: int) -> None:
    names.spool_segment(d, seq).unlink(missing_ok=True)
    names.spool_index(d, seq).unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
