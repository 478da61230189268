"""A listing's filters, on rows (Python) and on a part's decoded rows (Arrow), and the listing's cursor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from shipper.format import manifest

from . import parts
from .parts import PartMeta
from .rows import Row

Cursor = tuple[int, str, str]  # (started_ns, task, host): the API's cursor (api/params.py)


@dataclass(frozen=True)
class Filters:
    since: int | None = None  # started_ns >= since
    until: int | None = None  # started_ns < until
    status: str | None = None
    host: str | None = None
    task: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # all must match
    silent_since: int | None = None  # running logs noted silent at or before this time (issue 15)
    tasks: tuple[str, ...] = ()  # any of them (the ibex routes: a task's runs `ibex-N`, `ibex-N.2`, …)

    def fixed(self, r: Row) -> bool:
        """The filters on fields a run never changes (safe to apply to any of its rows)."""
        return ((self.since is None or r.started_ns >= self.since) and (self.until is None or r.started_ns < self.until)
                and (self.host is None or r.host == self.host) and (self.task is None or r.task == self.task)
                and (not self.tasks or r.task in self.tasks) and all(r.labels.get(k) == v for k, v in self.labels))

    def final(self, r: Row) -> bool:
        return r.visible and (self.status is None or r.status == self.status) and (
            self.silent_since is None or (r.status == manifest.RUNNING and r.silent_since_ns is not None
                                          and r.silent_since_ns <= self.silent_since))

    def may_hold(self, p: PartMeta, cursor: Cursor | None) -> bool:
        if p.rows == 0 or (self.since is not None and p.max_started_ns < self.since):
            return False
        if (self.until is not None and p.min_started_ns >= self.until) or (cursor and p.min_started_ns > cursor[0]):
            return False
        want = [f"l:{k}={v}" for k, v in self.labels] + ([f"h:{self.host}"] if self.host else []) + (
            [f"t:{self.task}"] if self.task else [])
        return all(parts.may_hold(p.bloom, w) for w in want) and (
            not self.tasks or any(parts.may_hold(p.bloom, f"t:{t}") for t in self.tasks))


def fixed_filter(t: pa.Table, f: Filters) -> pa.Table:
    """The rows of `t` that pass `f`'s filters on fields a run never changes (the columns they need)."""
    mask = None

    def both(m: Any) -> None:
        nonlocal mask
        mask = m if mask is None else pc.and_(mask, m)

    if f.since is not None:
        both(pc.greater_equal(t["started_ns"], f.since))
    if f.until is not None:
        both(pc.less(t["started_ns"], f.until))
    if f.host is not None:
        both(pc.equal(t["host"], f.host))
    if f.task is not None:
        both(pc.equal(t["task"], f.task))
    if f.tasks:
        both(pc.is_in(t["task"], pa.array(f.tasks, pa.string())))
    for k, v in f.labels:
        both(pc.fill_null(pc.equal(pc.map_lookup(t["labels"], pa.scalar(k), "first"), v), False))
    return t if mask is None else t.filter(mask)


def later(t: pa.Table, pos: Cursor | None) -> pa.Table:
    """The rows after the position `pos` in the listing's order."""
    if pos is None:
        return t
    s, task, host = pos
    return t.filter(pc.or_(pc.less(t["started_ns"], s), pc.and_(pc.equal(t["started_ns"], s), pc.or_(
        pc.greater(t["task"], task), pc.and_(pc.equal(t["task"], task), pc.greater(t["host"], host))))))
