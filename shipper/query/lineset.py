"""Which query-copy objects make up the `lines` view: one rule for every reader and writer (docs/query.md).

The watcher writes one object per sealed segment under `lines/` (an "original"); compaction merges small
ones into parts under `compact/` (shipper/query/compact.py); `logship gc` marks the logs it deletes under
`deleting/` (shipper/retention/gc.py). A part names in its Parquet footer the objects it replaces. From one
listing of `compact/` and `deleting/`, `resolve` says which parts count, which originals they replace,
and which logs are gone. Readers filter by exactly these lists, so a line is never read twice or missed;
writers delete a replaced object only `query.grace_seconds` after no reader can still be using it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from shipper.format import names

META_KEY = "logship.compact"  # the footer key-value entry of a part


@dataclass(frozen=True)
class Part:
    """A compacted part and what its footer says of it."""

    key: str
    created_ns: int
    inputs: frozenset[str]  # the objects it replaces: originals and older parts
    covers: frozenset[str]  # originals whose rows it holds and that may not be deleted yet
    logs: frozenset[str]  # "task/host" of its rows
    size: int = 0

    @property
    def date(self) -> str:
        return names.partition_date(self.key)


def meta_value(inputs: Iterable[str], covers: Iterable[str], logs: Iterable[str]) -> str:
    """The footer entry of a new part."""
    return json.dumps({"version": 1, "inputs": sorted(inputs), "covers": sorted(covers), "logs": sorted(logs)},
                      separators=(",", ":"))


def parse_meta(key: str, size: int, value: str | bytes) -> Part:
    """A part from its key and footer entry; ValueError if either is not a part's."""
    parsed = names.parse_compact_key(key)
    if parsed is None:
        raise ValueError(f"{key} is not a compacted part's key")
    doc = json.loads(value)
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError(f"{key}: not a logship part of version 1")
    return Part(key, parsed[1], frozenset(doc["inputs"]), frozenset(doc["covers"]), frozenset(doc["logs"]), size)


def log_id(task: str, host: str) -> str:
    return f"{task}/{host}"


@dataclass(frozen=True)
class Snapshot:
    """What a reader uses, from one listing of compact/ and deleting/."""

    shown: tuple[Part, ...]  # parts whose rows count
    hidden: frozenset[str]  # originals that a shown part holds and that may still exist: not read
    replaced: frozenset[str]  # parts that a shown part replaces: not read
    losers: tuple[Part, ...]  # parts that lost to a newer one made at the same time: not read
    gone: frozenset[str]  # "task/host" of logs being deleted: none of their rows is read


def resolve(parts: Iterable[Part], done: Iterable[str] = (), gone: Iterable[str] = ()) -> Snapshot:
    """Which parts count: newest first, a part counts unless a counting part replaces it, or replaces
    (or holds) any object it does too — which only happens when two compactions ran at once; the older
    one then loses whole, and the objects it alone replaced stay as they were.

    `done` are parts whose replaced objects are all deleted (a `.done` object beside them), so their
    originals need no hiding.
    """
    done = set(done)
    claimed: set[str] = set()
    shown: list[Part] = []
    replaced: set[str] = set()
    losers: list[Part] = []
    for p in sorted(parts, key=lambda p: p.key, reverse=True):  # keys sort by date, then by age
        if p.key in claimed:
            replaced.add(p.key)
        elif not claimed.isdisjoint(p.inputs) or not claimed.isdisjoint(p.covers):
            losers.append(p)
        else:
            shown.append(p)
            claimed |= p.inputs | p.covers
    hidden = frozenset(k for p in shown if p.key not in done for k in p.covers)
    return Snapshot(tuple(shown), hidden, frozenset(replaced), tuple(losers), frozenset(gone))
