"""Adoption: the store has no manifest of a log in the spool (deleted while the log ran), yet may hold
segments of it the spool no longer has. Each is taken back only after its bytes match its own index."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import zstandard

from shipper.format import index, names
from shipper.format.manifest import Segment

from ..errors import ObjectNotFound
from ..quota import is_quota_drop, read_dropped
from ..spool import MISSING, SpoolDamaged, SpoolLog, lost_range, read_file
from ..store import ObjectInfo, Store
from . import adopt_frames
from .damage import Damage, segment_start
from .state import ADOPT_MAX, INDEX_MAX, LogState

log = logging.getLogger("logship.watcher")


async def adopt(store: Store, stats: dict[str, int], damage: Damage, sl: SpoolLog, st: LogState,
                listing: list[ObjectInfo], compression: str) -> None:
    """The store has no manifest of this log, yet may hold segments of it the spool no longer has (a
    manifest deleted while the log ran): take those back after checking each against its own index,
    so the new manifest names them; a range neither holds is recorded as missing, never claimed."""
    keys = {o.key: o.size for o in listing}
    held = {*sl.sealed, *sl.sealing, *([sl.open] if sl.open is not None else [])}
    dropped = await asyncio.to_thread(read_dropped, sl.dir)
    gone = {e["seq"] for e in dropped if is_quota_drop(e)}
    in_store: dict[int, str] = {}
    for k in keys:
        seg = names.SEGMENT_RE.fullmatch(k.rsplit("/", 1)[-1].removesuffix(".zst"))
        if seg and k.startswith(names.log_prefix(sl.task, sl.host)):
            in_store[int(seg.group(1))] = "zstd" if k.endswith(".zst") else "none"
    framed = adopt_frames.framed(sl.task, sl.host, keys)  # stored as deltas and a frame table (§8)
    top = max(held | set(in_store) | set(framed), default=0)
    missing: list[int] = []
    for seq in range(1, top + 1):
        if seq in held or seq in gone:
            continue
        comp = in_store.get(seq)
        entry = await _adopt_one(store, damage, sl, st, seq, comp, keys, dropped) if comp else None
        if entry is None and seq in framed:
            entry = await adopt_frames.adopt_framed(store, damage, sl, st, seq, framed[seq], compression, dropped)
        if entry is None:
            missing.append(seq)
            continue
        st.segments[seq] = entry
        st.dirty = True
        stats["adopted_segments"] += 1
    if st.segments or missing:
        log.warning("%s/%s: the store had no manifest; took back %d segments it holds%s", sl.task, sl.host,
                    len(st.segments), f", segments {missing} are nowhere" if missing else "")
    for seq in missing:
        start, _ = segment_start(sl.dir, st, seq, dropped)
        end = _known_start(sl, st, seq + 1, top)
        if start is not None and end is not None and end > start:
            damage.record_lost(sl.dir, seq, [lost_range(start, end - start, 0, f"segment {seq} is in neither the "
                                                        "spool nor the store", MISSING)], f"{sl.task}/{sl.host}")
            dropped = await asyncio.to_thread(read_dropped, sl.dir)


def _known_start(sl: SpoolLog, st: LogState, seq: int, top: int) -> int | None:
    """The log offset of the first segment from `seq` on that we hold (store or spool)."""
    for s in range(seq, top + 1):
        if s in st.segments:
            return st.segments[s].offset
        for open_ in (False, True):
            try:
                raw = read_file(names.spool_index(sl.dir, s, open_=open_), INDEX_MAX)
            except SpoolDamaged:
                raw = None
            recs = list(index.unpack(raw or b""))
            if recs:
                return recs[0].offset
    return None


async def _adopt_one(store: Store, damage: Damage, sl: SpoolLog, st: LogState, seq: int, comp: str,
                     keys: dict[str, int], dropped: list[dict[str, Any]]) -> Segment | None:
    key, idx_key = names.segment_key(sl.task, sl.host, seq, comp), names.index_key(sl.task, sl.host, seq, comp)
    if idx_key not in keys or keys[key] > ADOPT_MAX or keys[idx_key] > INDEX_MAX:
        return None
    try:
        blob, idx_blob = await store.get(key), await store.get(idx_key)
    except ObjectNotFound:
        return None
    try:
        raw, raw_idx = blob, idx_blob
        if comp == "zstd":
            raw, raw_idx = _unzstd(blob, ADOPT_MAX), _unzstd(idx_blob, INDEX_MAX)
    except zstandard.ZstdError as exc:
        log.error("%s: not taken back: it does not decompress (%s)", key, exc)
        return None
    start, nxt = segment_start(sl.dir, st, seq, dropped)
    chunks = await adopt_frames.checked(damage, sl, seq, raw_idx, raw, start, nxt, key, "its index")
    if chunks is None:
        return None
    sha = hashlib.sha256(raw).hexdigest()
    return Segment.build(seq, chunks, len(blob), len(idx_blob), sha, comp)


def _unzstd(data: bytes, limit: int) -> bytes:
    """Decompress a store object whose frame must say its size, and that size at most `limit`."""
    size = zstandard.frame_content_size(data)
    if size < 0 or size > limit:
        raise zstandard.ZstdError(f"frame size {size} unknown or above {limit}")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
