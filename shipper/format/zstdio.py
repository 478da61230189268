"""zstd and piece streams for reading logs back (shipper/format/reader.py): a store object's stream requested
before its turn (`Early`), a slice of a stream, decompression in bounded pieces, and the frame of raw blocks
that carries uncompressed bytes inside a zstd answer.

These loops are the speed of a download (bench/README.md): change them with the bench at hand.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import IO, cast

import zstandard

from shipper.errors import StoreError
from shipper.format.archive import IntegrityError

# Decompression runs on the event loop, in pieces of at most ZSTD_OUT bytes of log (well under a
# millisecond each), whatever the ratio: memory stays flat. Measured with 2 cores (bench/README.md):
# handing pieces to a thread (zstandard releases the GIL) or reading a piece ahead in a task of its own
# cost more CPU than they saved.
ZSTD_OUT = 256 << 10
# compressed bytes per recv() from the store, and per read of the decompressor (128 KiB took twice the
# recv()s and loop turns for the same bytes: shipper/store/s3http.py)
ZSTD_IN = 256 << 10
# A zstd frame of raw blocks (RFC 8878 §3.1.1): magic, a descriptor with no content size and no checksum,
# a window of 128 KiB (= the largest block), then blocks of a 3-byte header and their bytes as they are.
RAW_BLOCK = 128 << 10
RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00" + bytes([(17 - 10) << 3])


async def slice_pieces(pieces: AsyncGenerator[bytes, None], skip: int, n: int) -> AsyncGenerator[bytes, None]:
    """`n` bytes of `pieces` after the first `skip`."""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            if skip or len(piece) - skip > n:
                piece = cast(bytes, memoryview(piece)[skip:skip + n])
                skip = 0
            n -= len(piece)
            yield piece
            if n <= 0:
                return


class Early:
    """A store object's stream whose first piece is being fetched already (a task), so that the GET's
    latency overlaps the sending of what comes before it. Close it (aclose) if it is not read to its end."""

    def __init__(self, gen: AsyncGenerator[bytes, None]) -> None:
        self._gen = gen
        self._first: asyncio.Task[bytes] | None = asyncio.create_task(_first_piece(gen))

    def __aiter__(self) -> Early:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            piece = await self._first
            self._first = None
        else:
            piece = await anext(self._gen, b"")
        if not piece:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        if self._first is not None:
            self._first.cancel()
            await asyncio.wait([self._first])
            if not self._first.cancelled():
                self._first.exception()  # retrieved: an early GET that failed and was never read is no news
            self._first = None
        await self._gen.aclose()


async def _first_piece(gen: AsyncGenerator[bytes, None]) -> bytes:
    return await anext(gen, b"")


async def decompress(comp: AsyncIterator[bytes], a: int, b: int, key: str = "a zstd object") -> AsyncIterator[bytes]:
    """Decompress one zstd object from its start, dropping bytes before `a` and stopping at `b`.

    Pieces are at most ZSTD_OUT bytes however well the data compressed (a run of one byte shrinks
    30,000-fold: a whole piece of input must not become one piece of output).
    """
    feed = _Feed()
    # One decompressor per read: readers of one ZstdDecompressor share its context, and two requests
    # interleaving on it corrupt each other's output.
    reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], feed), read_size=ZSTD_IN, closefd=False)
    pos = 0
    while pos < b:
        try:
            raw = reader.read1(ZSTD_OUT)  # reads `feed` only while it has no output yet: _Starved loses nothing
        except _Starved:
            piece = await anext(comp, b"")
            feed.give(piece)
            continue
        except zstandard.ZstdError as exc:
            raise IntegrityError(key, f"not a valid zstd object ({exc})") from None
        if not raw:
            raise IntegrityError(key, f"its log bytes ended at {pos}, short of the {b} its manifest says")
        lo, hi = max(a - pos, 0), min(b - pos, len(raw))
        if lo < hi:
            yield raw[lo:hi] if (lo, hi) != (0, len(raw)) else raw
        pos += len(raw)


class _Starved(Exception):
    """The decompressor wants input that has not arrived yet."""


class _Feed:
    """Compressed bytes as they arrive, as the file zstandard's stream reader reads: read() hands out
    what is here and raises _Starved when nothing is (b"" would mean the end of the object)."""

    def __init__(self) -> None:
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._eof = False

    def give(self, piece: bytes) -> None:
        if piece:
            self._pieces.append(memoryview(piece))
        else:
            self._eof = True

    def read(self, n: int) -> memoryview | bytes:
        if not self._pieces:
            if self._eof:
                return b""
            raise _Starved()
        piece = self._pieces[0]
        if len(piece) <= n:
            return self._pieces.popleft()
        self._pieces[0] = piece[n:]
        return piece[:n]


def raw_frame_size(n: int) -> int:
    return len(RAW_FRAME_HEADER) + 3 * max(1, -(-n // RAW_BLOCK)) + n


async def raw_frame(pieces: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
    """The `n` bytes of `pieces` as one zstd frame of raw blocks of RAW_BLOCK bytes (the last one shorter)."""
    head = RAW_FRAME_HEADER  # sent with the first block
    carry = b""  # bytes short of a block, waiting for the next piece
    left = n  # bytes not yet sent in a block
    async for piece in pieces:
        data = carry + piece if carry else piece
        if len(data) > left:
            raise StoreError(f"a part of the log holds more than its {n} bytes",
                             "the spool or the store changed under the reader")
        mv, i = memoryview(data), 0
        while len(data) - i >= RAW_BLOCK or (i < len(data) and len(data) - i == left):
            size = min(RAW_BLOCK, len(data) - i)
            left -= size
            yield head + _block_header(size, left == 0) + mv[i:i + size]
            head, i = b"", i + size
        carry = mv[i:].tobytes()
    if left:
        raise StoreError(f"a part of the log held {n - left} bytes, not {n}",
                         "the spool or the store changed under the reader")
    if n == 0:
        yield head + _block_header(0, True)


def _block_header(size: int, last: bool) -> bytes:
    return (int(last) | size << 3).to_bytes(3, "little")  # block type 0: raw
