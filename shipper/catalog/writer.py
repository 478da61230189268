"""What a watcher writes to the catalog when it commits a manifest: a record when the run's status changed.

Called after the manifest (the truth) is stored, so a status change shows in the listing within the pass
that saw it. Every key is written by the one process shipping the log and holds one content, so many
watchers write at once without conditional PUTs; a crash before the record is repaired by the next call
(a new process remembers nothing and writes the current record again) or by `logship catalog check --repair`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

from shipper.format import names
from shipper.format.manifest import Manifest
from shipper.store import Store

from . import rows
from .rows import Row

REMEMBER = 50_000  # runs whose last record this process remembers (≈ 100 bytes each)


class Writer:
    """Writes records for one store; remembers what it wrote so a manifest commit that changes no status
    (a checkpoint, a query copy flag) costs no request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._written: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self.records = 0  # records written by this process (for tests and /metrics)
        self.bytes_sent = 0  # their bodies' bytes: the watcher counts them in what it sent (issue 14)

    async def note(self, doc: Manifest) -> None:
        """The manifest `doc` was just stored: record its status if the catalog does not have it yet."""
        await self.write(rows.from_manifest(doc))

    async def forget(self, doc: Manifest) -> None:
        """gc deleted the log of `doc` (its last manifest): a tombstone that wins over every row of the run."""
        await self.write(rows.tombstone(rows.from_manifest(doc)))

    async def write(self, row: Row) -> None:
        if self._written.get(row.run) == row.phase:
            self._written.move_to_end(row.run)
            return
        body = row.body()
        await self.store.put(names.catalog_record_key(rows.record_name(row)), body)
        self.bytes_sent += len(body)
        running = names.catalog_running_key(rows.running_name(row))
        if row.phase == 1:
            await self.store.put(running, body)
            self.bytes_sent += len(body)
        else:
            await self.store.delete([running])  # absent is fine; the compactor repeats this for a crash here
        self.records += 1
        self._written[row.run] = row.phase
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
