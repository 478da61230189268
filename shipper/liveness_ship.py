"""What the watcher sends of a log's liveness (issue 15): the agent's liveness.json reaches the store so that a
central API (no spool) answers `liveness` and the listing's silence.

- Every manifest the watcher commits carries the latest sample (`Manifest.build(liveness=latest(sl))`); a
  finished log's last manifest keeps the last one.
- Between commits (a silent log has no new bytes, so no checkpoint; delta checkpoints commit no manifest)
  the sample goes up as a small object of its own, `logs/<task>/<host>/liveness.json` (names.liveness_key),
  only when it differs from the last one sent in what a reader acts on: the task went silent or resumed
  (format.liveness.silent), its processes or their states changed, a silence event was added; else once
  every REFRESH_SECONDS, so the stored sample's age says the watcher still hears from the agent. A sleeping
  task costs 3,600 / REFRESH_SECONDS PUTs an hour (docs/operations.md, cost table).
- A silence that starts or ends is noted in the catalog too (shipper/catalog/writer.py `silence`).
The object is deleted once the log ended (its manifest holds the last sample) by the process that PUT it;
one a restarted watcher does not know of stays until gc (a finished log's readers take the manifest's).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from pathlib import Path

from shipper import catalog
from shipper.format import liveness, names
from shipper.format.liveness import Liveness

from .spool import SpoolLog
from .store import Store

REFRESH_SECONDS = 60.0  # a stored sample is at most this (plus a pass) old while the agent writes
REMEMBER = 50_000  # logs whose last sent sample (or end) this process remembers


class LivenessShip:
    """One watcher's shipping of liveness; counts go into the watcher's `stats`."""

    def __init__(self, store: Store, stats: dict[str, int]) -> None:
        self.store = store
        self.stats = stats
        self._sent: OrderedDict[Path, tuple[Liveness, float]] = OrderedDict()  # the last one stored, and when
        self._put: OrderedDict[Path, None] = OrderedDict()  # logs whose object this process PUT
        for k in ("liveness_puts", "liveness_bytes"):
            stats.setdefault(k, 0)

    async def latest(self, sl: SpoolLog) -> Liveness | None:
        """The sample for the manifest being committed (noted as sent: a reader takes the newer of the
        manifest's and the object's)."""
        doc = await asyncio.to_thread(liveness.read, sl.dir / names.LIVENESS_FILE)
        if doc is not None:
            # what the manifest gains by it (`"liveness": …` at its depth): counted with the objects, so the
            # bytes sent for liveness, per commit and not per byte of the log, are known apart (tests, bench)
            self.stats["liveness_bytes"] += len(json.dumps({"liveness": liveness.stored_json(doc)}, indent=1)) - 2
            if not sl.finished:
                self._remember(sl.dir, doc)
        return doc

    async def ship(self, sl: SpoolLog, doc: Liveness | None = None, *, known: bool = False) -> None:
        """After the pass shipped the log: its sample when a reader needs the new one (StoreError raised).
        `known`: the caller read the sample already (`doc`), in its own thread hop."""
        if sl.finished:
            self._sent.pop(sl.dir, None)
            if sl.dir in self._put:  # the manifest holds the last sample now
                await self.store.delete([names.liveness_key(sl.task, sl.host)])
                del self._put[sl.dir]
            return
        if not known:
            doc = await asyncio.to_thread(liveness.read, sl.dir / names.LIVENESS_FILE)
        if doc is None:
            return
        last = self._sent.get(sl.dir)
        if last is None or differs(last[0], doc) or time.monotonic() - last[1] >= REFRESH_SECONDS:
            body = liveness.dumps(liveness.for_store(doc))
            await self.store.put(names.liveness_key(sl.task, sl.host), body)
            self.stats["liveness_puts"] += 1
            self.stats["liveness_bytes"] += len(body)
            self.stats["bytes_uploaded"] += len(body)
            self._remember(sl.dir, doc)
            self._put[sl.dir] = None
            while len(self._put) > REMEMBER:
                self._put.popitem(last=False)
        await catalog.writer.writer(self.store).silence(sl.task, sl.host, sl.run["run_id"], doc)

    def _remember(self, d: Path, doc: Liveness) -> None:
        self._sent[d] = (doc, time.monotonic())
        self._sent.move_to_end(d)
        while len(self._sent) > REMEMBER:
            self._sent.popitem(last=False)


def differs(old: Liveness, new: Liveness) -> bool:
    """Whether a reader of the store would act differently on `new` than on `old` (besides its age)."""
    if liveness.silent(old) != liveness.silent(new) or (liveness.silent(new)
                                                        and new.last_output_ns != old.last_output_ns):
        return True
    if len(old.events) != len(new.events) or (old.sampled_ns is None) != (new.sampled_ns is None):
        return True
    shape = [(p.pid, p.state) for p in old.processes[:liveness.STORED_PROCESSES]]
    return shape != [(p.pid, p.state) for p in new.processes[:liveness.STORED_PROCESSES]] or (
        old.processes_total != new.processes_total)
