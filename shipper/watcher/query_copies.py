"""The query copy (docs/query.md): built after the manifest names a segment, in a queue of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import zstandard

from shipper.format import frames, index, names
from shipper.query import copies

from ..errors import DamagedObject, StoreError
from ..retry import QuietLog
from ..spool import SpoolLog
from ..store import Store
from .state import LogState


class QueryCopies:
    """The query copies of one watcher's logs, one build at a time; counters go into the watcher's `stats`."""

    def __init__(self, store: Store, stats: dict[str, int], quiet: QuietLog, enabled: bool) -> None:
        self.store = store
        self.stats = stats
        self.quiet = quiet
        self.enabled = enabled  # cfg.query.copy
        self.tasks: set[asyncio.Task[None]] = set()
        self.sem = asyncio.Semaphore(1)  # builds are CPU-bound: one at a time leaves a core to the uploads
        self.unrecorded = False  # a copy stored since the last drain: a pass must mark it in its manifest

    def schedule(self, sl: SpoolLog, st: LogState) -> None:
        """Start the query copy of each committed segment that lacks one (docs/query.md).

        The copy is derived data: it is built after the manifest names the segment, one at a time in
        the background, so the bytes ship at full speed while the copies catch up. The manifest marks a
        segment `query_copy: true` once its copy is stored; a crash before that mark rebuilds it (same key).
        """
        if not self.enabled:
            return
        for seq in sorted(st.committed - st.copied - st.copying):
            st.copying.add(seq)
            task = asyncio.create_task(self._copy(sl, st, seq))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def all_copied(self, st: LogState) -> bool:
        return not self.enabled or (st.committed <= st.copied and not st.dirty)

    async def _copy(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        try:
            async with self.sem:
                lines = {s: e.lines for s, e in st.segments.items()}
                inputs = await self._inputs(sl, st, seq)
                copy = await copies.build_for_spool(sl.dir, sl.task, sl.host, seq, lines, inputs)
                if copy is not None:
                    await self.store.put(copy.key, copy.data)
                    self.stats["query_copies"] += 1
                    self.stats["query_copy_bytes"] += len(copy.data)
        except StoreError as exc:
            self.quiet.log(logging.WARNING, "copy", "%s/%s: query copy of segment %d waits for the store: %s",
                           sl.task, sl.host, seq, exc)
            return
        except DamagedObject as exc:  # its own segment's copy waits; nothing else does
            self.quiet.log(logging.ERROR, f"copy {sl.task}/{sl.host}", "%s/%s: no query copy of segment %d: %s",
                           sl.task, sl.host, seq, exc)
            return
        finally:
            st.copying.discard(seq)
        st.segments[seq] = dataclasses.replace(st.segments[seq], query_copy=True)
        st.copied.add(seq)
        st.dirty = True
        self.unrecorded = True

    async def _inputs(self, sl: SpoolLog, st: LogState, seq: int) -> copies.Inputs:
        """The segment's index and bytes: from the spool, or from the store when the quota dropped them."""
        log_path, idx_path = names.spool_segment(sl.dir, seq), names.spool_index(sl.dir, seq)
        try:
            chunks = await asyncio.to_thread(lambda: list(index.unpack(index.read_raw(idx_path))))
            return copies.Inputs(chunks, log_path, None)
        except FileNotFoundError:
            pass
        entry = st.segments[seq]
        if entry.frames is not None:  # stored as its deltas (shipper/checkpoint.py)
            chunks, data = await frames.read_segment(self.store, sl.task, sl.host, entry)
            return copies.Inputs(chunks, None, data)
        comp = entry.compression
        raw_idx = await self.store.get(names.index_key(sl.task, sl.host, seq, comp))
        data = await self.store.get(names.segment_key(sl.task, sl.host, seq, comp))
        if comp == "zstd":
            dctx = zstandard.ZstdDecompressor()
            raw_idx = dctx.decompress(raw_idx)
            data = dctx.decompress(data, max_output_size=entry.raw_size)
        return copies.Inputs(list(index.unpack(raw_idx)), None, data)

    async def drain(self) -> bool:
        """Wait for the query copies in flight; True if any was in flight or stored since the last drain.

        A copy may finish between the pass that scheduled it and this call (while the state file is
        written, say): it counts too, or `watch --once` would end before a pass marks it.
        """
        pending = bool(self.tasks)
        if pending:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        stored, self.unrecorded = self.unrecorded, False
        return pending or stored

    async def cancel(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)
