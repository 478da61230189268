"""Adoption of a segment stored as its deltas (docs/checkpoints.md §8): the store has no manifest, so the
frame table's `frames_sha256` is unknown and the table is not trusted; the chain of the segment's deltas
is read instead, each delta checked alone (shipper/format/delta.py), their bytes against their own index as
a whole segment's are (shipper/watcher/adopt.py), and the table is written again from them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from shipper.format import delta, frames, index, names
from shipper.format.manifest import Segment

from ..errors import ObjectNotFound
from ..spool import MISSING, SpoolDamaged, SpoolLog, check_segment, lost_range
from ..store import Store
from .damage import Damage, segment_start
from .state import ADOPT_MAX, LogState

log = logging.getLogger("logship.watcher")


def framed(task: str, host: str, keys: dict[str, int]) -> dict[int, dict[tuple[int, int], str]]:
    """Segments of which the store holds a frame table (their seal got that far), with their deltas by span."""
    prefix = names.log_prefix(task, host)
    tables: set[int] = set()
    out: dict[int, dict[tuple[int, int], str]] = {}
    for k in keys:
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        parsed = names.parse_delta_name(name)
        if parsed is not None:
            out.setdefault(parsed[0], {})[(parsed[1], parsed[2])] = k
            continue
        head = name.split(".", 1)[0]
        if head.isdigit() and names.frames_key(task, host, int(head)) == k:
            tables.add(int(head))
    return {seq: spans for seq, spans in out.items() if seq in tables}


async def adopt_framed(store: Store, damage: Damage, sl: SpoolLog, st: LogState, seq: int,
                       spans: dict[tuple[int, int], str], compression: str,
                       dropped: list[dict[str, Any]]) -> Segment | None:
    """Segment `seq` from its chain of deltas, checked; its frame table written again. None: not taken back."""
    start, nxt = segment_start(sl.dir, st, seq, dropped)
    ours = {s: k for s, k in spans.items() if k.endswith(".zst" if compression == "zstd" else ".raw")}
    if not ours:
        return None
    starts = {s[0] for s in ours}
    links = frames.chain(ours, start if start in starts else min(starts))  # later: a gap check_segment judges
    if not links or links[-1][1] - links[0][0] > ADOPT_MAX:  # the log bytes held in memory at once
        return None
    out: list[frames.Frame] = []
    data: list[bytes] = []
    raw_idx: list[bytes] = []
    for span in links:
        key = ours[span]
        try:
            blob = await store.get(key)
            d = delta.parse(key, blob)
        except (ObjectNotFound, delta.DeltaDamaged) as exc:
            log.error("%s: segment %d not taken back: %s", key, seq, exc)
            return None
        out.append(frames.Frame(d.start, d.end, len(blob), d.data_offset, sum(c.lines for c in d.chunks),
                                hashlib.sha256(blob).hexdigest()))
        data.append(d.data)
        raw_idx += [index.pack(c.seq, c.ts_ns, c.offset, c.length, c.lines, c.stream, c.flags) for c in d.chunks]
    raw = b"".join(data)
    key = names.frames_key(sl.task, sl.host, seq)
    chunks = await checked(damage, sl, seq, b"".join(raw_idx), raw, start, nxt, key, "its deltas' index")
    if chunks is None:
        return None
    table = frames.dumps(seq, out)
    try:
        same = await store.get(key) == table
    except ObjectNotFound:
        same = False
    if not same:  # the one a seal of these deltas writes (deterministic): one key, one content
        await store.put(key, table, checked=True)
    return Segment.build(seq, chunks, sum(f.stored_size for f in out),
                         sum(f.data_offset - delta.HEADER_MIN for f in out), hashlib.sha256(raw).hexdigest(),
                         compression, frames=len(out), frames_sha256=hashlib.sha256(table).hexdigest())


async def checked(damage: Damage, sl: SpoolLog, seq: int, raw_idx: bytes, raw: bytes, start: int | None,
                  nxt: int | None, key: str, what: str) -> list[index.Chunk] | None:
    """The chunks of a segment taken back from the store, if its index and bytes agree (else logged, None); the
    bytes before it that neither the spool nor the store holds are recorded as lost."""
    try:
        check = check_segment(raw_idx, len(raw), start, nxt, lambda a, b: raw[a:b], key, 0)
    except SpoolDamaged:
        return None
    if check.problem is not None or not check.chunks:
        log.error("%s: not taken back: %s and bytes disagree (%s)", key, what, check.problem)
        return None
    if check.gap and start is not None:
        await asyncio.to_thread(damage.record_lost, sl.dir, seq - 1, [lost_range(
            start, check.gap, 0, f"the {check.gap} bytes before {key} are in neither the spool nor the store",
            MISSING)], key)
    return check.chunks
