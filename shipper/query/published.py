"""The published set of what `lines` reads, for engines that run no logship code (docs/query.md "Outside engines").

`logship query` decides per query which objects count (shipper/query/lineset.py). An outside engine cannot run
that code, so compaction (and gc, through it) writes what it decided as a small JSON snapshot under `live/lines/`:
the counting parts (`files`, always with the rowless placeholder, so the list is never empty), the copies under
`lines/` that a counting part holds (`hidden`), and the logs gc is deleting (`gone`). A reader reads the copies
under `lines/` less `hidden`, plus `files`, less `gone` — the same rule, from one listing of one moment; new
copies count at once, as for `logship query`, so only compaction and gc ever publish.

Snapshots are never changed: each is a new key named by when its listing began, inverted, so the least key is
the newest listing whatever order the PUTs landed in (several watchers compact at once; no conditional PUT).
An object a snapshot reads is deleted only when no reader can still be using that snapshot: the newest is in
use, and an older one until 1.5 × query.grace_seconds after the listing of the next (a snapshot is written at
most half a grace period after its listing, and a query that chose the older one ends within one more).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shipper.errors import ObjectNotFound
from shipper.format import names
from shipper.query import lineset
from shipper.query.lineset import Snapshot
from shipper.store import Store

log = logging.getLogger("logship.published")

VERSION = 1
KEEP_GRACES = 3.0  # a superseded snapshot stays this many grace periods after the next one's listing
IN_USE_GRACES = 1.5


@dataclass(frozen=True)
class Published:
    """One snapshot as a reader uses it."""

    key: str
    listed_ns: int
    files: frozenset[str]  # read whole, besides the copies under lines/: counting parts and the placeholder
    hidden: frozenset[str]  # copies under lines/ not read
    gone: frozenset[str]  # "task/host" of logs none of whose rows is read

    def reads(self, key: str) -> bool:
        """Whether a reader of this snapshot may open `key`."""
        if key in self.files:
            return True
        parsed = names.parse_lines_key(key)
        return parsed is not None and key not in self.hidden and lineset.log_id(parsed[1], parsed[2]) not in self.gone

    def same(self, other: Published) -> bool:
        return (self.files, self.hidden, self.gone) == (other.files, other.hidden, other.gone)


class NewerVersion(ValueError):
    """A snapshot of a later format: left alone (a newer logship wrote it)."""


def of(snap: Snapshot, listed_ns: int, key: str = "") -> Published:
    files = frozenset(p.key for p in snap.shown) | {names.LINES_PLACEHOLDER}
    return Published(key, listed_ns, files, frozenset(snap.hidden), frozenset(snap.gone))


def dumps(p: Published) -> bytes:
    doc = {"version": VERSION, "listed_ns": p.listed_ns, "files": sorted(p.files), "hidden": sorted(p.hidden),
           "gone": sorted(p.gone)}
    return json.dumps(doc, separators=(",", ":")).encode()


def loads(key: str, data: bytes) -> Published:
    """A snapshot from its key and bytes; ValueError naming the key if either is not one."""
    listed_ns = names.parse_live_key(key)
    if listed_ns is None:
        raise ValueError(f"{key} is not a published snapshot's key")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{key} is not a JSON object")
    if isinstance(doc.get("version"), int) and doc["version"] > VERSION:
        raise NewerVersion(f"{key} is of version {doc['version']}, later than this logship's {VERSION}")
    if doc.get("version") != VERSION or doc.get("listed_ns") != listed_ns:
        raise ValueError(f"{key} is not a snapshot of version {VERSION} listed when its key says")

    def strings(field: str, ok: Any) -> frozenset[str]:
        values = doc.get(field)
        if not isinstance(values, list) or not all(isinstance(v, str) and ok(v) for v in values):
            raise ValueError(f"{key}: its {field} is not a list of the keys it may hold")
        return frozenset(values)

    files = strings("files", lambda k: k == names.LINES_PLACEHOLDER or names.parse_compact_key(k) is not None)
    hidden = strings("hidden", lambda k: names.parse_lines_key(k) is not None)
    gone = strings("gone", lambda v: len(v.split("/")) == 2 and all(names.ID_RE.fullmatch(x) for x in v.split("/")))
    if names.LINES_PLACEHOLDER not in files:
        raise ValueError(f"{key}: its files do not name {names.LINES_PLACEHOLDER}")
    return Published(key, listed_ns, files, hidden, gone)


def in_use(snapshots: Iterable[Published], now_ns: int, grace_s: float) -> list[Published]:
    """The snapshots a reader may still be using: the newest, and each older one until IN_USE_GRACES grace periods
    after the listing of the next newer one."""
    newest_first = sorted(snapshots, key=lambda p: p.listed_ns, reverse=True)
    out = newest_first[:1]
    for older, newer in zip(newest_first[1:], newest_first, strict=False):
        if now_ns - newer.listed_ns < IN_USE_GRACES * grace_s * 1e9:
            out.append(older)
    return out


class Publisher:
    """Reads and writes the snapshots of one store. Keeps those it read (they never change)."""

    def __init__(self, store: Store, grace_s: float) -> None:
        self.store = store
        self.grace_s = grace_s
        self._cache: dict[str, Published] = {}
        self._placed = False

    async def snapshots(self) -> tuple[list[Published], list[str]]:
        """The good snapshots, newest first, and the keys of garbage ones (reported; not of a later version)."""
        good: list[Published] = []
        bad: list[str] = []
        listed = await self.store.list(names.LIVE_PREFIX)
        for stale in self._cache.keys() - {o.key for o in listed}:
            del self._cache[stale]
        for o in listed:
            if o.key in self._cache:
                good.append(self._cache[o.key])
                continue
            try:
                p = loads(o.key, await self.store.get(o.key))
            except ObjectNotFound:
                continue  # deleted meanwhile
            except NewerVersion as exc:
                log.warning("%s; compaction deletes nothing until it is gone or this logship is upgraded", exc)
                raise
            except ValueError as exc:
                log.warning("a bad published snapshot (outside engines that read it fail; it is replaced): %s", exc)
                bad.append(o.key)
                continue
            self._cache[o.key] = p
            good.append(p)
        return sorted(good, key=lambda p: p.listed_ns, reverse=True), bad

    async def in_use(self, now_ns: int) -> list[Published]:
        return in_use((await self.snapshots())[0], now_ns, self.grace_s)

    async def publish(self, snap: Snapshot, listed_ns: int, listed_at: float, now_ns: int) -> str | None:
        """Write `snap` (listed at `listed_ns`, time.monotonic() `listed_at`) unless the newest says the same or is
        newer; then delete snapshots no reader can be using. Returns the key written, if any."""
        good, bad = await self.snapshots()
        new = of(snap, listed_ns)
        written = None
        newest = good[0] if good else None
        if newest is None or (newest.listed_ns < listed_ns and not newest.same(new)):
            if self.grace_s and time.monotonic() - listed_at > 0.5 * self.grace_s:
                log.info("the published snapshot is not replaced: its listing is older than half of "
                         "query.grace_seconds; the next run publishes")
                return None
            if not self._placed:  # the placeholder is in every snapshot's files: it must exist
                from shipper.query.compact import placeholder
                await self.store.put(names.LINES_PLACEHOLDER, placeholder())
                self._placed = True
            written = names.live_key(listed_ns, secrets.token_hex(4))
            new = dataclasses.replace(new, key=written)
            await self.store.put(written, dumps(new))
            self._cache[written] = new
            good.insert(0, new)
        # Superseded long enough ago: no reader can still use them.
        doomed = [older.key for older, newer in zip(good[1:], good, strict=False)
                  if now_ns - newer.listed_ns > KEEP_GRACES * self.grace_s * 1e9]
        if good:
            doomed += bad  # a good one stands: the next reader reads that
        if doomed:
            await self.store.delete(doomed)
        return written
