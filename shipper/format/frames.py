"""A sealed segment stored as its deltas (docs/checkpoints.md §4): the chain of deltas that covers an open
segment, and the frame table that names them once the segment is sealed.

The frame table `NNNNNNNN.frames.zst` is zstd of JSON
`{"seq": N, "frames": [[start, end, stored_size, data_offset, lines, sha256], …]}`, one row per delta in
log order; the manifest's segment entry binds it with `frames` (the row count) and `frames_sha256` (of the
stored table), and each row binds its delta by `sha256` (of the stored object): every stored byte a reader
serves is checked against the manifest, as for whole segments.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import zstandard

from shipper.errors import DamagedObject
from shipper.format import delta, index, names
from shipper.format.manifest import Segment
from shipper.store import Store

MAX_FRAMES = 1 << 20  # a table with more rows is not one a watcher wrote (a 5 s delta per row: 60 days)
MAX_TABLE = 256 << 20  # raw JSON bytes
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Frame:
    """One delta of a segment: where its bytes are in the log, and what its stored object is."""

    start: int
    end: int
    stored_size: int
    data_offset: int  # where the data frame begins inside the object (after the header and index)
    lines: int
    sha256: str  # of the stored object

    def row(self) -> list[int | str]:
        return [self.start, self.end, self.stored_size, self.data_offset, self.lines, self.sha256]


class FramesDamaged(DamagedObject):
    code = "damaged_frames"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}", "the segment's frame table is damaged or foreign; the watcher that "
                         "holds the spool can write it again (it is deterministic)")
        self.key = key


def chain(spans: Iterable[tuple[int, int]], pos: int) -> list[tuple[int, int]]:
    """The deltas a log's bytes are read from, from offset `pos`: repeatedly the longest delta that starts
    where the last one ended, to the first offset no delta starts at. A re-cut after a crash ([a, b) and
    [a, c), same bytes at the same offsets) is read once; nothing overlaps, nothing is skipped."""
    longest: dict[int, int] = {}
    for start, end in spans:
        if end > longest.get(start, start):
            longest[start] = end
    out = []
    while pos in longest:
        out.append((pos, longest[pos]))
        pos = longest[pos]
    return out


def dumps(seq: int, frames: list[Frame]) -> bytes:
    """The stored table (deterministic: the same frames give the same bytes, so the same key one content)."""
    doc = {"seq": seq, "frames": [f.row() for f in frames]}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)


def loads(key: str, blob: bytes, *, seq: int, offset: int, raw_size: int, count: int, sha256: str) -> list[Frame]:
    """Check a stored table against its manifest entry (`frames_sha256`, `frames`, `offset`, `raw_size`)."""
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise FramesDamaged(key, "its sha256 is not the manifest's frames_sha256")
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_TABLE))
    except (zstandard.ZstdError, ValueError, RecursionError) as exc:
        raise FramesDamaged(key, f"not a frame table ({exc.__class__.__name__})") from None
    rows = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or doc.get("seq") != seq or len(rows) != count or not 0 < count <= MAX_FRAMES:
        raise FramesDamaged(key, f"not the table of segment {seq} with {count} frames")
    frames, pos = [], offset
    for i, r in enumerate(rows):
        if not (isinstance(r, list) and len(r) == 6 and all(_uint(v) for v in r[:5]) and isinstance(r[5], str)
                and _HEX64.fullmatch(r[5])):
            raise FramesDamaged(key, f"row {i + 1} is not [start, end, stored_size, data_offset, lines, sha256]")
        f = Frame(*r)
        if f.start != pos or f.end <= f.start or f.end - f.start > delta.MAX_RAW or f.data_offset < delta.HEADER_MIN \
                or f.data_offset >= f.stored_size:
            raise FramesDamaged(key, f"row {i + 1} does not follow the one before it in the segment")
        frames.append(f)
        pos = f.end
    if pos != offset + raw_size:
        raise FramesDamaged(key, f"its frames end at {pos}, the segment at {offset + raw_size}")
    return frames


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63


def frame_key(task: str, host: str, seq: int, f: Frame, compression: str) -> str:
    return names.delta_key(task, host, seq, f.start, f.end, compression)


async def read_table(store: Store, task: str, host: str, entry: Segment) -> list[Frame]:
    """The checked frame table of a manifest's segment entry that has `frames`."""
    assert entry.frames is not None and entry.frames_sha256 is not None
    key = names.frames_key(task, host, entry.seq)
    blob = await store.get(key)
    return loads(key, blob, seq=entry.seq, offset=entry.offset, raw_size=entry.raw_size, count=entry.frames,
                 sha256=entry.frames_sha256)


async def read_frame(store: Store, task: str, host: str, seq: int, f: Frame, compression: str) -> delta.Delta:
    """One frame's delta, checked against its row (size, sha256) and alone (delta.parse)."""
    key = frame_key(task, host, seq, f, compression)
    blob = await store.get(key)
    if len(blob) != f.stored_size or hashlib.sha256(blob).hexdigest() != f.sha256:
        raise FramesDamaged(key, "not the object its segment's frame table names (size or sha256)")
    return delta.parse(key, blob)


async def read_segment(store: Store, task: str, host: str, entry: Segment) -> tuple[list[index.Chunk], bytes]:
    """A whole segment stored as frames: its chunks and raw bytes, every object checked, and the bytes
    against the entry's `sha256` (for `logship cat`-like whole reads and the watcher's query copy)."""
    chunks: list[index.Chunk] = []
    parts: list[bytes] = []
    for f in await read_table(store, task, host, entry):
        d = await read_frame(store, task, host, entry.seq, f, entry.compression)
        chunks += d.chunks
        parts.append(d.data)
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise FramesDamaged(names.frames_key(task, host, entry.seq), "its frames' bytes are not the segment's "
                            "sha256")
    return chunks, data
