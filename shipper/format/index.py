"""The chunk index: one fixed-size record per chunk of a segment (docs/format.md).

A record is 40 bytes, little-endian: seq u64, ts_ns i64, offset u64 (in the whole log),
length u32, lines u32, stream u8, flags u8, 6 bytes of padding.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

RECORD = struct.Struct("<QqQIIBB6x")
RECORD_SIZE = RECORD.size  # 40

STDOUT, STDERR, UNKNOWN = 1, 2, 0
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr", UNKNOWN: "unknown"}
STREAM_CODES = {"stdout": STDOUT, "stderr": STDERR}

PARTIAL = 1  # the chunk does not end at a line end (idle flush or size cap)
RECOVERED = 2  # bytes found after an agent died, with no record of their stream


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    ts_ns: int
    offset: int
    length: int
    lines: int
    stream: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def stream_name(self) -> str:
        return STREAM_NAMES.get(self.stream, "unknown")


def pack(seq: int, ts_ns: int, offset: int, length: int, lines: int, stream: int, flags: int) -> bytes:
    return RECORD.pack(seq, ts_ns, offset, length, lines, stream, flags)


def unpack(data: bytes | memoryview) -> Iterator[Chunk]:
    """Records of `data`; a torn record at the end (a crash mid-write) is ignored."""
    whole = len(data) - len(data) % RECORD_SIZE
    for fields in RECORD.iter_unpack(memoryview(data)[:whole]):
        yield Chunk(*fields)


def read_raw(path: str | os.PathLike[str]) -> bytes:
    """The whole records of an index file (a torn last record is left out)."""
    with open(path, "rb") as f:
        data = f.read()
    return data[: len(data) - len(data) % RECORD_SIZE]


def read(path: str | bytes, *, missing_ok: bool = False) -> list[Chunk]:
    try:
        with open(path, "rb") as f:
            return list(unpack(f.read()))
    except FileNotFoundError:
        if missing_ok:
            return []
        raise
