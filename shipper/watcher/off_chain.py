"""Deltas no manifest will ever name (docs/checkpoints.md §7): a dead watcher's delta that the next one cut
again differently, a delta past what the seal kept, any delta of a segment stored whole. The seal notes them
(shipper/checkpoint.py, `Uploads.seal`); they are deleted right after the manifest that names their segment
is PUT — at the commit, not a grace period later: a reader holding a view with one of them takes a fresh
view when it 404s (`Reader._reread`), and the segment's frames hold the same bytes. A watcher killed between
the commit and the delete leaves them; the next one finds them in its listing at start (`found`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from shipper.format import frames, names
from shipper.format.manifest import Segment

from ..errors import DamagedObject, ObjectNotFound
from ..store import ObjectInfo, Store

if TYPE_CHECKING:
    from .state import LogState

log = logging.getLogger("logship.watcher")


async def found(store: Store, task: str, host: str, segments: dict[int, Segment], listing: list[ObjectInfo]
                ) -> list[str]:
    """The deltas of committed segments in `listing` that their manifest entry does not name. A framed
    segment's table is read (and checked) only when more deltas of it are listed than it has frames."""
    prefix = names.log_prefix(task, host)
    by_seq: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for o in listing:
        parsed = names.parse_delta_name(o.key[len(prefix):]) if o.key.startswith(prefix) else None
        if parsed is not None and parsed[0] in segments:
            by_seq[parsed[0]].append((parsed[1], parsed[2], o.key))
    out: list[str] = []
    for seq, listed in by_seq.items():
        entry = segments[seq]
        if entry.frames is None:  # stored whole: none of its deltas is read
            out += [k for _, _, k in listed]
            continue
        if len(listed) <= entry.frames:
            continue  # the usual case: no GET
        try:
            kept = {frames.frame_key(task, host, seq, f, entry.compression)
                    for f in await frames.read_table(store, task, host, entry)}
        except (DamagedObject, ObjectNotFound) as exc:  # not ours to judge here: readers report it
            log.warning("%s/%s: frame table of segment %d unreadable (%s); its deltas are kept",
                        task, host, seq, exc)
            continue
        out += [k for _, _, k in listed if k not in kept]
    return out


async def delete(store: Store, stats: dict[str, int], st: LogState) -> None:
    """After a manifest PUT: the off-chain deltas of the segments it names (all that were noted)."""
    if st.deltas.off_chain:
        keys, st.deltas.off_chain = st.deltas.off_chain, []
        try:
            await store.delete(keys)
        except BaseException:
            st.deltas.off_chain = keys + st.deltas.off_chain  # the next commit tries again
            raise
        stats["off_chain_deltas_deleted"] = stats.get("off_chain_deltas_deleted", 0) + len(keys)
