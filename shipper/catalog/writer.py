"""What a watcher writes to the catalog when it commits a manifest: a record when the run's status changed,
and for a running log when its sealed size grew (at most every SIZE_NOTE_SECONDS) or it went silent or
resumed (issue 15: `silence`, also between commits).

Called after the manifest (the truth) is stored, so a status change shows in the listing within the pass
that saw it. Every key is written by the one process shipping the log and holds one content, so many
watchers write at once without conditional PUTs; a crash before the record is repaired by the next call
(a new process remembers nothing and writes the current record again) or by `logship catalog check --repair`.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from shipper.format import names
from shipper.format.liveness import Liveness
from shipper.format.manifest import Manifest
from shipper.store import Store

from . import rows
from .rows import Row

REMEMBER = 50_000  # runs whose last record this process remembers (≈ 300 bytes each)
NOTHING_LIVE = ((None, None, None), (0, 0, None))  # a run's start: its running/ entry says as much
SIZE_NOTE_SECONDS = 60.0  # a running log's grown size is noted at most this often (a fast log seals often)


def live_worth(row: Row) -> bool:
    """Whether a running row needs a live/ entry: it says more than its running/ entry (a sealed segment, a
    silence), and its name fits (a longer one is seen in the walk only)."""
    return (row.size, row.lines, row.silent_since_ns) not in NOTHING_LIVE and len(rows.live_name(row)) <= rows.ROW_MAX


class Writer:
    """Writes records for one store; remembers what it wrote so a manifest commit that changes no status
    (a checkpoint, a query copy flag) costs no request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # per run: the last row written, when (monotonic), and its live/ entry
        self._written: OrderedDict[tuple[str, str, str], tuple[Row, float, str | None]] = OrderedDict()
        self.records = 0  # records written by this process (for tests and /metrics)
        self.bytes_sent = 0  # their bodies' bytes: the watcher counts them in what it sent (issue 14)

    async def note(self, doc: Manifest) -> None:
        """The manifest `doc` was just stored: record its status if the catalog does not have it yet."""
        await self.write(rows.from_manifest(doc))

    async def forget(self, doc: Manifest) -> None:
        """gc deleted the log of `doc` (its last manifest): a tombstone that wins over every row of the run."""
        await self.write(rows.tombstone(rows.from_manifest(doc)))

    async def silence(self, task: str, host: str, run_id: str, live: Liveness) -> None:
        """A running log's newest liveness (shipper/liveness_ship.py): a record when it went silent or
        resumed since the last record this process wrote of it (none written yet: the commit will)."""
        last = self._written.get((task, host, run_id))
        if last is not None and last[0].phase == 1:
            since = rows.silent_since(live)
            if since != last[0].silent_since_ns:
                await self.write(replace(last[0], silent_since_ns=since, version_ns=max(
                    last[0].version_ns + 1, time.time_ns())))

    async def write(self, row: Row) -> None:
        last = self._written.get(row.run)
        if last is not None and (last[0].phase > row.phase or last[0].live() == row.live() or (
                last[0].phase == row.phase == 1 and last[0].silent_since_ns == row.silent_since_ns
                and time.monotonic() - last[1] < SIZE_NOTE_SECONDS)):
            self._written.move_to_end(row.run)  # nothing new, or only a size noted a moment ago
            return
        body = row.body()
        await self.store.put(names.catalog_record_key(rows.record_name(row)), body)
        self.bytes_sent += len(body)
        running = names.catalog_running_key(rows.running_name(row))
        old_live = last[2] if last is not None else None
        live = None
        if row.phase == 1:
            if last is None:  # its fields are fixed at the start: one PUT per process is enough
                await self.store.put(running, body)
                self.bytes_sent += len(body)
            if live_worth(row):
                live = names.catalog_live_key(rows.live_name(row))
                await self.store.put(live, b"")
            if old_live is not None and old_live != live:
                await self.store.delete([old_live])
        else:  # absent is fine; the compactor repeats the running entry's DELETE for a crash here
            await self.store.delete([running] + ([old_live] if old_live else []))
        self.records += 1
        self._written[row.run] = (row, time.monotonic(), live)
        self._written.move_to_end(row.run)
        while len(self._written) > REMEMBER:
            self._written.popitem(last=False)


_writers: weakref.WeakKeyDictionary[Any, Writer] = weakref.WeakKeyDictionary()


def writer(store: Store) -> Writer:
    """The process's writer for `store` (one per store object)."""
    w = _writers.get(store)
    if w is None:
        w = _writers[store] = Writer(store)
    return w


async def note(store: Store, doc: Manifest) -> None:
    """Record the status of the manifest just committed (started/running, finished, lost, deleting)."""
    await writer(store).note(doc)


async def forget(store: Store, doc: Manifest) -> None:
    """Record that gc deleted the log whose last manifest was `doc`."""
    await writer(store).forget(doc)
