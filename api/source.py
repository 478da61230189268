"""One log as the API serves it: the store's manifest and objects, and the local spool's files when the API runs
beside the spool. Reading them is shipper/format/reader.py's (part planning, store and spool reads, zstd,
the checks against the manifest); what is the API's is here: the spool state of a log, views of finished logs
reused for a moment, and the count of failed checks for /metrics, with one log line per object.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from shipper.format import archive, names
from shipper.format.archive import IntegrityError
from shipper.format.manifest import Dropped, ManifestError
from shipper.format.parts import LogView, Part, SpoolState, spool_parts
from shipper.format.reader import LogMoved, LogNotFound, Reader
from shipper.retry import QuietLog
from shipper.spool import read_json, read_log
from shipper.store import Store

__all__ = ["LogMoved", "LogNotFound", "LogView", "Part", "Source"]

# A finished log's view is reused this long: its bytes never change, and `logship gc` hides a log for
# query.grace_seconds before it deletes anything. Saves the second GET of the manifest in a request (the
# proxy middleware and the handler both ask), and requests in a burst share one parsed manifest.
FINISHED_VIEW_TTL = 0.1
FINISHED_VIEWS = 1000

log = logging.getLogger("logship.api")
_quiet = QuietLog(log)


class Source(Reader):
    """The API's reader: from a store and (optionally) a local spool."""

    def __init__(self, store: Store, spool: Path | None) -> None:
        super().__init__(store)
        self.manifests = archive.ManifestCache()  # requests for a log share its checked manifest
        self.spool = spool
        self._finished: dict[tuple[str, str], tuple[float, LogView]] = {}  # recent views of finished logs
        self.integrity_errors = 0  # objects (or spool files) that failed their check: /metrics

    def note(self, exc: IntegrityError) -> None:
        """Count a failed check once, and log it (one line naming the object, rate-limited per object)."""
        if getattr(exc, "noted", False):
            return
        exc.noted = True  # type: ignore[attr-defined]
        self.integrity_errors += 1
        _quiet.log(logging.ERROR, exc.key, "integrity: %s", exc.detail)

    async def view(self, task: str, host: str, *, recent: bool = True) -> LogView:
        """The log as it is now; `recent`: a finished log's view of the last FINISHED_VIEW_TTL will do."""
        names.check_id("task", task)
        names.check_id("host", host)
        now = time.monotonic()
        last = self._finished.get((task, host))
        if recent and last is not None and now - last[0] < FINISHED_VIEW_TTL:
            return last[1]
        view = await super().view(task, host)
        if view.finished:
            if len(self._finished) >= FINISHED_VIEWS:
                self._finished = {k: v for k, v in self._finished.items() if now - v[0] < FINISHED_VIEW_TTL}
            self._finished[(task, host)] = (now, view)
        return view

    def spool_state(self, task: str, host: str) -> SpoolState | None:
        if self.spool is None:
            return None
        d = names.spool_log_dir(self.spool, task, host)
        sl = read_log(d) if d.is_dir() else None
        if sl is None:
            return None
        growing = [*sl.sealing, *([sl.open] if sl.open is not None else [])]
        parts = spool_parts(sl.dir, sl.run["run_id"], sl.sealed, growing)
        return SpoolState(sl.dir, sl.run, sl.exit, sl.finished, parts, _dropped(read_json(sl.dir / names.DROPPED_FILE)))


def _dropped(doc: Any) -> list[Dropped]:
    """The spool's dropped.json as ranges; one that is not a range (a damaged file, which the watcher sets
    aside) explains no hole, and a hole it would have explained is served as one."""
    out = []
    for i, e in enumerate(doc if isinstance(doc, list) else []):
        with contextlib.suppress(ManifestError):
            out.append(Dropped.parse(e, f"dropped[{i}]"))
    return out
