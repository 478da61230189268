"""A spool segment read once for upload: its bytes hashed and (with zstd) compressed in the same pass, and the
digests of the object the store will hold (shipper/format/archive.py), which readers check it against.
In threads (the watcher's to_thread): nothing here touches the event loop."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import zstandard

from shipper.format import archive, index

ZSTD_LEVEL = 1  # 3.5x smaller at ~230 MB/s a core; higher levels make compression the bottleneck
READ_PIECE = 1 << 20
# A thread's read buffer is kept up to this size (a 300 KB/s log's 5 s checkpoint is 1.5 MB; a delta is at most
# 16 MiB, read into a buffer of its own).
HELD_MAX = 4 << 20
_held = threading.local()


def read_at(fd: int, n: int, offset: int) -> memoryview:
    """Up to `n` bytes of `fd` at `offset` (fewer at its end), in this thread's buffer: valid until the thread's next
    read_at. A fresh bytes object per checkpoint cost ≈ 1 ms of page faults a 1.5 MB read in the watcher's threads
    (malloc gives such a block back to the kernel when it is freed), ten times the read itself."""
    if n > HELD_MAX:
        return memoryview(os.pread(fd, n, offset))
    buf: bytearray | None = getattr(_held, "buf", None)
    if buf is None or len(buf) < n:
        buf = _held.buf = bytearray(max(n, READ_PIECE))
    view = memoryview(buf)[:n]
    return view[:os.preadv(fd, [view], offset)]


def read_whole(log_path: Path, idx_path: Path, compression: str, size: int | None = None
               ) -> tuple[list[index.Chunk], str, bytes | None, bytes, archive.StoredDigest] | None:
    """Read a segment once: its chunks, sha256, (when compressing) its zstd bytes, and the digests of
    the object the store will hold (what readers check it against)."""
    raw_idx = index.read_raw(idx_path)
    chunks = list(index.unpack(raw_idx))
    if not chunks:
        return None
    size = chunks[-1].end - chunks[0].offset if size is None else size
    sha = hashlib.sha256()
    stored = archive.StoredDigest(archive.block_for(size))  # size: the raw bytes, near enough for zstd
    blob = None
    with open(log_path, "rb") as f:
        if compression == "zstd":
            cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=size)
            out = []
            left = size
            while left > 0 and (piece := f.read(min(READ_PIECE, left))):
                sha.update(piece)
                out.append(cobj.compress(piece))
                left -= len(piece)
            out.append(cobj.flush())
            blob = b"".join(out)
            stored.update(blob)
        else:  # the file is the object (put_file): sealed, so it does not change before the upload
            for piece in iter(lambda: f.read(READ_PIECE), b""):
                sha.update(piece)
                stored.update(piece)
    idx_blob = zstandard.ZstdCompressor(level=3).compress(raw_idx) if compression == "zstd" else raw_idx
    return chunks, sha.hexdigest(), blob, idx_blob, stored


def read_prefix(log_path: Path, raw_size: int, compression: str) -> tuple[str, bytes, dict[str, Any]]:
    """The first `raw_size` bytes of an open segment for a prefix checkpoint: sha256, stored bytes, digests."""
    with open(log_path, "rb") as f:
        raw = f.read(raw_size)
    if len(raw) < raw_size:
        raise FileNotFoundError(log_path)  # cannot happen with an intact spool; skip this round
    blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw) if compression == "zstd" else raw
    return hashlib.sha256(raw).hexdigest(), blob, archive.digest_fields(blob)


def sha256_file(path: Path, size: int) -> str:
    """The sha256 of a file's first `size` bytes, read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0 and (piece := f.read(min(READ_PIECE, size))):
            h.update(piece)
            size -= len(piece)
    return h.hexdigest()
