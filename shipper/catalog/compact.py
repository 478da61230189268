"""Compaction of the catalog: records folded into Parquet parts per start day, and the summary published.

Any number may run at once (one per watcher, `logship catalog compact`): they waste work, never rows.
- A part is written whole; its footer names everything it replaces (`inputs`, transitively: a replaced part
  that was not finished passes its own inputs on), so the parts in force are a pure function of one LIST of
  parts/, and two parts holding a run twice are harmless (readers keep the highest version).
- A summary is computed from one LIST of parts/ (plus cached footers) and is named by when that LIST began:
  the newest name wins, so a slow compactor's older summary never comes back. It is written within
  grace/2 of its LIST or not at all.
- What a part replaces is deleted (then `<part>.done` is written) only once a summary that covers the part
  was listed at least 1.5 × grace ago: every reader that might still use an older summary has finished,
  and every newer summary covers the part too. So a kill -9 anywhere leaves extra objects, never missing rows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shipper.errors import ObjectNotFound
from shipper.format import names
from shipper.store import ObjectInfo, Store

from . import parts, rows
from .parts import BadPart, PartMeta
from .reader import FETCH_CONCURRENCY, Head, Reader, iter_table
from .rows import Row

log = logging.getLogger("logship.catalog")
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Settings:
    grace_s: float = 60.0  # query.grace_seconds: the longest a reader may go on with what it listed
    day_parts: int = 8  # a day with more parts than this is merged into one
    tombstone_s: float = 7 * 86400.0  # tombstones are kept this long, so a concurrent part cannot revive a run


@dataclass
class Stats:
    records: int = 0  # records folded into parts
    parts_written: int = 0
    rows_written: int = 0
    finished: int = 0  # parts whose inputs were deleted
    deleted: int = 0  # objects deleted (inputs, running entries, old summaries, orphan .done)
    summaries: int = 0
    live_deleted: int = 0  # live/ entries deleted (also counted in `deleted`)
    bad: list[str] = field(default_factory=list)


def _run_head(name: str) -> str:
    """`<inv_started>~<task>~<host>` of a running or live entry's name: which run it belongs to."""
    return "~".join(name.split("~", 3)[:3])


def day_of(started_ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(started_ns // 10**9))


@dataclass
class PartsState:
    metas: dict[str, PartMeta]  # readable parts listed
    done: set[str]
    orphans: list[str]  # .done whose part is gone
    listed_ns: int

    @property
    def in_force(self) -> list[PartMeta]:
        replaced = {i for m in self.metas.values() for i in m.inputs}
        return sorted((m for k, m in self.metas.items() if k not in replaced), key=lambda m: m.key)


class Compactor:
    """Compacts one store's catalog; keeps footers and summaries it read (they never change)."""

    def __init__(self, store: Store, settings: Settings | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.clock = clock
        self.reader = Reader(store)
        self._metas: dict[str, PartMeta] = {}
        self._summaries: dict[str, set[str]] = {}

    # --- reading state ---------------------------------------------------------------------------------

    async def meta(self, o: ObjectInfo) -> PartMeta:
        if o.key in self._metas:
            return self._metas[o.key]
        tail = await self.store.get(o.key, max(0, o.size - parts.FOOTER_GUESS), o.size)
        got = parts.meta_of_footer(o.key, tail, o.size)
        if isinstance(got, int):
            got = parts.meta_of_footer(o.key, await self.store.get(o.key, o.size - got, o.size), o.size)
        assert not isinstance(got, int)
        self._metas[o.key] = got
        return got

    async def parts_state(self, bad: list[str] | None = None) -> PartsState:
        listed_ns = self.clock()
        objs = await self.store.list(names.CATALOG_PARTS)
        part_objs = [o for o in objs if names.parse_catalog_part_key(o.key)]
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(o: ObjectInfo) -> PartMeta | None:
            async with sem:
                try:
                    return await self.meta(o)
                except ObjectNotFound:
                    return None
                except BadPart as exc:
                    log.warning("catalog: %s is not a logship part, left alone and never read: %s", o.key, exc)
                    if bad is not None:
                        bad.append(o.key)
                    return None

        metas = {m.key: m for m in await asyncio.gather(*map(one, part_objs)) if m is not None}
        for stale in self._metas.keys() - {o.key for o in part_objs}:
            del self._metas[stale]
        done_of = {o.key.removesuffix(names.DONE_SUFFIX) for o in objs if o.key.endswith(names.DONE_SUFFIX)}
        if bad is not None:
            bad += [o.key for o in objs if not names.parse_catalog_part_key(o.key)
                    and not (o.key.endswith(names.DONE_SUFFIX) and names.parse_catalog_part_key(
                        o.key.removesuffix(names.DONE_SUFFIX)))]
        orphans = sorted(names.done_key(k) for k in done_of if k not in {o.key for o in part_objs})
        return PartsState(metas, done_of & metas.keys(), orphans, listed_ns)

    async def summary_parts(self, key: str) -> set[str] | None:
        if key not in self._summaries:
            try:
                self._summaries[key] = {p.key for p in parts.decode_summary(key, await self.store.get(key))}
            except (ObjectNotFound, BadPart):
                return None
        return self._summaries[key]

    # --- a run -----------------------------------------------------------------------------------------

    async def run(self, *, merge: bool = True, consolidate: bool = False) -> Stats:
        """Finish parts whose time has come, fold records into parts, publish a summary if the parts changed.
        `consolidate`: merge every day that has more than one part (after a rebuild)."""
        st = Stats()
        live, running = await self._list_live()  # before head/: see _drop_live
        head = await self.reader.head()
        st.bad += head.bad
        state = await self.parts_state(st.bad)
        await self._finish(head, state, st)
        if merge and await self._merge(head, state, st, consolidate):
            state = await self.parts_state()
        await self._publish(head, state, st)
        await self._drop_live(live, running, head, st)
        return st

    async def _finish(self, head: Head, state: PartsState, st: Stats) -> None:
        now = self.clock()
        ripe = [k for k in head.summaries
                if (n := names.parse_catalog_summary_key(k)) is not None
                and n <= now - int(1.5 * self.settings.grace_s * 1e9)]
        covered: set[str] = set()
        for k in ripe[:3]:  # the newest ripe summaries: older ones cover less
            named = await self.summary_parts(k)
            if named:
                covered |= named
                covered |= {i for p in named if p in state.metas for i in state.metas[p].inputs}
        for key, m in sorted(state.metas.items()):
            if key in state.done or key not in covered or not m.inputs:
                continue
            await self._delete_running(m.inputs)
            await self.store.delete(m.inputs)
            await self.store.put(names.done_key(key), b"")
            st.finished += 1
            st.deleted += len(m.inputs)
        if state.orphans:
            await self.store.delete(state.orphans)
            st.deleted += len(state.orphans)

    async def _delete_running(self, record_keys: Iterable[str]) -> None:
        """Entries under running/ of runs that a record among `record_keys` ends (a writer killed between
        its final record and that DELETE leaves one)."""
        gone = []
        for k in record_keys:
            name = names.parse_catalog_record_key(k)
            try:
                row = rows.parse_name(name) if name else None
            except rows.BadRow:
                row = None
            if row is not None and row.phase >= 2:
                gone.append(names.catalog_running_key(rows.running_name(row)))
        if gone:
            await self.store.delete(gone)

    async def _list_live(self) -> tuple[list[ObjectInfo], set[str]]:
        """live/, then running/ (as `<inv_started>~<task>~<host>`), listed before head/ (see _drop_live)."""
        live = await self.store.list(names.CATALOG_LIVE)
        if not live:
            return [], set()
        return live, {_run_head(o.key[len(names.CATALOG_RUNNING):])
                      for o in await self.store.list(names.CATALOG_RUNNING)}

    async def _drop_live(self, live: list[ObjectInfo], running: set[str], head: Head, st: Stats) -> None:
        """Delete the live/ entries no reader uses or will use:
        - of a run with no running/ entry (readers use a live entry only under one), once the run's final
          record, if head/ still holds it, is older than grace: a reader that listed running/ just before
          the watcher deleted the entry may still list live/ for its size, within its grace;
        - of a run's several, all but the newest, once that one is older than grace (a watcher that
          restarted did not know the entry before its own).
        The LISTs are live/, running/, then head/ (the pass's): a live entry is PUT after its running entry,
        so a run that starts meanwhile has its running entry listed; a running entry is deleted only after
        a final record is PUT, so a run whose entry was missing has that record in the head/ LIST unless
        compaction deleted it, ≥ 1.5 × grace after folding it; and a running entry never comes back once
        a final row deleted it. Matched on `<inv_started>~<task>~<host>`, which both keys begin with (a
        running entry's payload may be in its body): no GET. Run after the summary, never delaying it."""
        ripe = self.clock() - int(self.settings.grace_s * 1e9)
        ended: dict[tuple[str, str, str], int] = {}  # runs with a final record in head/: its newest version
        for _, r in head.pairs:
            if r.phase >= 2:
                ended[r.run] = max(ended.get(r.run, 0), r.version_ns)
        newest: dict[tuple[str, str, str], tuple[int, str]] = {}
        parsed = []
        for o in live:
            name = o.key[len(names.CATALOG_LIVE):]
            try:
                run, version, *_ = rows.parse_live(name)
            except rows.BadRow as exc:
                log.warning("catalog: %s is not a live entry, left alone: %s", o.key, exc)
                st.bad.append(o.key)
                continue
            parsed.append((o.key, run, _run_head(name)))
            if run not in newest or version > newest[run][0]:
                newest[run] = (version, o.key)
        gone = [key for key, run, start in parsed
                if (start not in running and ended.get(run, 0) <= ripe)
                or (newest[run][1] != key and newest[run][0] <= ripe)]
        if gone:
            await self.store.delete(gone)
            st.deleted += len(gone)
            st.live_deleted += len(gone)

    async def _merge(self, head: Head, state: PartsState, st: Stats, consolidate: bool) -> bool:
        by_day: dict[str, list[tuple[str, Row]]] = defaultdict(list)
        folded = {i for m in state.metas.values() for i in m.inputs}  # already in a part, waiting for deletion
        for k, r in head.pairs:
            if k not in folded:
                by_day[day_of(r.started_ns)].append((k, r))
        in_force: dict[str, list[PartMeta]] = defaultdict(list)
        for m in state.in_force:
            in_force[m.day].append(m)
        days = set(by_day) | {d for d, ps in in_force.items()
                              if len(ps) > self.settings.day_parts or (consolidate and len(ps) > 1)}
        wrote = False
        for day in sorted(days):
            recs = by_day.get(day, [])
            olds = in_force.get(day, [])
            whole = consolidate or len(olds) + 1 > self.settings.day_parts or not recs
            merge_parts = olds if whole else []
            rows_: list[Row] = [r for _, r in recs]
            inputs = {k for k, _ in recs}
            for m in merge_parts:
                table = await self.reader.part(m.key)
                if table is None:
                    continue  # unreadable: left in force, not replaced
                rows_ += list(iter_table(table, None))
                inputs.add(m.key)
                if m.key not in state.done:
                    inputs |= set(m.inputs)
            created = self.clock()
            key = names.catalog_part_key(day, created, secrets.token_hex(8))
            kept = self._fold(rows_, created)
            await self.store.put(key, parts.encode_part(key, kept, inputs))
            await self._delete_running(k for k, _ in recs)
            st.parts_written += 1
            st.rows_written += len(kept)
            st.records += len(recs)
            wrote = True
        return wrote

    def _fold(self, rows_: list[Row], now_ns: int) -> list[Row]:
        """One row per run, the highest; tombstones older than tombstone_s dropped with their run."""
        best: dict[tuple[str, str, str], Row] = {}
        for r in rows_:
            b = best.get(r.run)
            if b is None or r.rank > b.rank:
                best[r.run] = r
        horizon = now_ns - int(self.settings.tombstone_s * 1e9)
        return [r for r in best.values() if not (r.status == rows.DELETED and r.version_ns < horizon)]

    async def _publish(self, head: Head, state: PartsState, st: Stats) -> None:
        force = state.in_force
        newest = await self.summary_parts(head.summaries[0]) if head.summaries else None
        if newest is not None and newest == {m.key for m in force}:
            pass  # nothing changed since the newest summary
        elif not (self.settings.grace_s > 0 and self.clock() - state.listed_ns > self.settings.grace_s / 2 * 1e9):
            key = names.catalog_summary_key(state.listed_ns, secrets.token_hex(4))
            await self.store.put(key, parts.encode_summary(state.listed_ns, force))
            self._summaries[key] = {m.key for m in force}
            st.summaries += 1
        # Old summaries go, but never the newest readable one (a garbage object may sort before it).
        keep = None
        for k in head.summaries:
            if await self.summary_parts(k) is not None:
                keep = k
                break
        keep_after = self.clock() - int(4 * self.settings.grace_s * 1e9)
        old = [k for k in head.summaries if k != keep and k in self._summaries
               and (n := names.parse_catalog_summary_key(k)) is not None and n < keep_after]
        if old:
            await self.store.delete(old)
            st.deleted += len(old)
