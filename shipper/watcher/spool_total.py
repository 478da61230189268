"""Whether a pass needs the quota's scan of the whole spool (shipper/quota.py enforce_quota), told from what the
pass read anyway: the scan reads every log again, and ran each pass a log changed — a share of the watcher's
fixed cost per checkpoint (docs/checkpoints.md §12, item 5).

Between two scans a running log's bytes grow in its open segment only (its `.log.open` and `.idx.open`), as
long as its set of segments stays the same. So the total the last scan found, plus what the open segments of
the logs read since grew by, bounds the spool's total from above (pruning and drops only lower it). The scan
runs when that bound passes the quota, and whenever the bound is not known: at a full pass, for a log not seen
at the last count or whose segments changed (a seal, a new log), or while a log is set aside (its agent may
append to it unseen).
"""

from __future__ import annotations

from pathlib import Path

from ..spool import SpoolLog

Shape = tuple[tuple[int, ...], tuple[int, ...], int | None]  # sealed, sealing, open


class SpoolTotal:
    def __init__(self) -> None:
        self._scanned: int | None = None  # what the last scan left in the spool
        self._grown = 0  # bytes the open segments gained since
        self._seen: dict[Path, tuple[Shape, int]] = {}  # log -> its segments and its open files' bytes
        self._pass: dict[Path, tuple[Shape, int]] = {}
        self._unknown = True
        self._full = True

    def begin_pass(self, full: bool) -> None:
        self._pass = {}
        self._full = full
        self._unknown = full or self._scanned is None

    def count(self, sl: SpoolLog) -> None:
        """A log the pass read (and will ship): what its open segment grew by since it was last counted."""
        shape: Shape = (tuple(sl.sealed), tuple(sl.sealing), sl.open)
        size = sl.unsealed_bytes()
        self._pass[sl.dir] = (shape, size)
        last = self._seen.get(sl.dir)
        if last is None or last[0] != shape:
            self._unknown = True
        elif not self._unknown:
            self._grown += max(0, size - last[1])

    def unknown(self) -> None:
        """Something the counts cannot follow (a log set aside, damaged or unreadable): the next scan is due."""
        self._unknown = True

    def estimate(self, quota: int) -> int | None:
        """An upper bound of the spool's bytes when it is known and within `quota`, else None (scan)."""
        if self._unknown or self._scanned is None or self._scanned + self._grown > quota:
            return None
        self._seen.update(self._pass)
        return self._scanned + self._grown

    def scanned(self, used: int) -> None:
        """The scan found `used` bytes (after its drops); the logs counted in this pass are its baseline."""
        self._scanned, self._grown = used, 0
        if self._full:  # every log was read: those gone since the last full pass are forgotten
            self._seen = {}
        self._seen.update(self._pass)

