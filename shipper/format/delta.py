"""The delta object (docs/checkpoints.md §2): the bytes [start, end) an open segment gained since the
last checkpoint, with their chunk index, in one object that `zstdcat` prints as exactly those bytes.

```
skippable frame  u32 LE magic 0x184D2A5B, u32 LE length     (RFC 8878 §3.1.2: every zstd decoder skips it)
  "LSD1" | u64 start | u64 end | u32 chunks | u32 index_len | index (zstd level 3, or raw records)
data             one zstd frame, level 1, with content size and checksum (or the raw bytes)
```

Everything here is untrusted on the way in: `parse` checks a delta alone — its name against its
header, bounded sizes, the frame's content size and checksum, index records covering [start, end)
exactly — and raises DeltaDamaged (a DamagedObject), never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from shipper.errors import DamagedObject
from shipper.format import index, names

SKIPPABLE_MAGIC = 0x184D2A5B  # one of 0x184D2A50..5F; zstd's pzstd uses 0x184D2A50
MAGIC = b"LSD1"
_FRAME = struct.Struct("<II")  # magic, length of what follows
_HEAD = struct.Struct("<4sQQII")  # MAGIC, start, end, chunks, index_len
HEADER_MIN = _FRAME.size + _HEAD.size  # 36: the fixed part; the index follows
DATA_LEVEL = 1  # as sealed segments: deterministic single-threaded, so one key has one content
INDEX_LEVEL = 3
MAX_RAW = 1 << 30  # a delta holds at most one segment's bytes (spool.segment_bytes ≤ 1 GiB)
MAX_INDEX = 64 << 20  # as the watcher's INDEX_MAX: an index larger than this is not one the agent wrote


class DeltaDamaged(DamagedObject):
    """A delta that is not what a watcher wrote: its log is read up to the delta before it."""

    code = "damaged_delta"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}", "a damaged, truncated or foreign delta object; readers stop the "
                         "log's chain before it, and the watcher that holds the spool uploads it again")
        self.key = key


@dataclass(frozen=True)
class Header:
    start: int
    end: int
    chunks: int
    index_len: int

    @property
    def data_offset(self) -> int:
        """Where the data frame begins: a ranged GET from here is the bytes' zstd frame alone."""
        return HEADER_MIN + self.index_len


@dataclass(frozen=True)
class Delta:
    start: int
    end: int
    compression: str
    chunks: list[index.Chunk]
    data: bytes  # the raw log bytes [start, end)
    stored_size: int
    index_size: int  # of the index as stored in the header
    data_offset: int


def encode(start: int, raw_index: bytes, data: bytes | memoryview, compression: str) -> bytes:
    """The delta object of `data` (log bytes from `start`) and its index records `raw_index`."""
    end = start + len(data)
    if compression == "zstd":
        stored_index = zstandard.ZstdCompressor(level=INDEX_LEVEL, write_checksum=True).compress(raw_index)
        body = zstandard.ZstdCompressor(level=DATA_LEVEL, write_checksum=True).compress(data)
    else:
        stored_index, body = raw_index, bytes(data)
    head = _HEAD.pack(MAGIC, start, end, len(raw_index) // index.RECORD_SIZE, len(stored_index))
    return _FRAME.pack(SKIPPABLE_MAGIC, len(head) + len(stored_index)) + head + stored_index + body


def parse_header(key: str, blob: bytes | memoryview) -> Header:
    """The header of a delta from its first bytes (at least HEADER_MIN; the index needs index_len more)."""
    if len(blob) < HEADER_MIN:
        raise DeltaDamaged(key, f"{len(blob)} bytes, shorter than a delta's header")
    magic, length = _FRAME.unpack_from(blob, 0)
    tag, start, end, chunks, index_len = _HEAD.unpack_from(blob, _FRAME.size)
    if magic != SKIPPABLE_MAGIC or tag != MAGIC:
        raise DeltaDamaged(key, "not a logship delta (no LSD1 skippable frame at its start)")
    if length != _HEAD.size + index_len or index_len > MAX_INDEX:
        raise DeltaDamaged(key, f"header length {length} does not fit its index of {index_len} bytes")
    if not start < end or end - start > MAX_RAW or chunks == 0 or chunks > end - start:
        raise DeltaDamaged(key, f"header range [{start}, {end}) with {chunks} chunks is not one a watcher writes")
    return Header(start, end, chunks, index_len)


def parse(key: str, blob: bytes | memoryview) -> Delta:
    """Check a whole delta object stored under `key` and return its parts; raises DeltaDamaged."""
    named = names.parse_delta_name(key.rsplit("/", 1)[-1])
    if named is None:
        raise DeltaDamaged(key, "not the name of a delta (NNNNNNNN.d<start>-<end>.zst|raw)")
    _seq, start, end, compression = named
    head = parse_header(key, blob)
    if (head.start, head.end) != (start, end):
        raise DeltaDamaged(key, f"its header says [{head.start}, {head.end}), its name [{start}, {end})")
    if len(blob) < head.data_offset:
        raise DeltaDamaged(key, f"{len(blob)} bytes, cut inside its index")
    view = memoryview(blob)
    stored_index = view[HEADER_MIN:head.data_offset]
    body = view[head.data_offset:]
    try:
        if compression == "zstd":
            raw_index = _unzstd(stored_index, head.chunks * index.RECORD_SIZE)
            data = _unzstd(body, end - start)
        else:
            raw_index, data = bytes(stored_index), bytes(body)
    except zstandard.ZstdError as exc:
        raise DeltaDamaged(key, f"does not decompress ({exc})") from None
    if len(data) != end - start:
        raise DeltaDamaged(key, f"holds {len(data)} bytes of log, its name says {end - start}")
    if len(raw_index) != head.chunks * index.RECORD_SIZE:
        raise DeltaDamaged(key, f"its index is {len(raw_index)} bytes, not {head.chunks} records")
    chunks = list(index.unpack(raw_index))
    _check_cover(key, chunks, start, end)
    return Delta(start, end, compression, chunks, data, len(blob), len(stored_index), head.data_offset)


def _unzstd(data: memoryview, size: int) -> bytes:
    """One zstd frame that must say its size, be exactly `size`, carry a checksum and end the input."""
    params = zstandard.get_frame_parameters(data)
    if params.content_size != size or not params.has_checksum:
        raise zstandard.ZstdError(f"frame says {params.content_size} bytes (want {size}), "
                                  f"checksum {'set' if params.has_checksum else 'missing'}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(data)
    if not dobj.eof or dobj.unused_data:
        raise zstandard.ZstdError("the frame is cut, or bytes follow it")
    return out


def _check_cover(key: str, chunks: list[index.Chunk], start: int, end: int) -> None:
    pos, last_seq = start, -1
    for i, c in enumerate(chunks):
        if c.offset != pos or c.length == 0 or c.seq <= last_seq or c.stream not in index.STREAM_NAMES:
            raise DeltaDamaged(key, f"index record {i + 1} does not follow the one before it in [{start}, {end})")
        pos, last_seq = c.end, c.seq
    if pos != end:
        raise DeltaDamaged(key, f"its index covers [{start}, {pos}), its name [{start}, {end})")
