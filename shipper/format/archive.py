"""Checking a log read back from the store: its manifest, segments (and checkpoint), and chunk index, each
against what the manifest recorded when the object was uploaded (docs/format.md, "Integrity"); and the
digests the watcher records at upload.

shipper/format/reader.py reads logs through these checks (the API and `logship cat`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import zstandard

from shipper.errors import DamagedObject, LogshipError, ObjectNotFound
from shipper.format import index, names
from shipper.format.manifest import DELETING, Dropped, Manifest, ManifestError, Segment
from shipper.store import Store

# The watcher records a digest per BLOCK bytes of each stored object (the manifest entry's `blocks`),
# so that a reader checks a block before any of its bytes go out, and a Range reads from the block
# that holds its start. 1 MiB: the store's read piece; a block's SHA-256 takes ≈ 0.5 ms here.
BLOCK = 1 << 20
BLOCK_DIGEST = 16  # bytes of each block's SHA-256 kept in the manifest (32 hex characters)


class IntegrityError(DamagedObject):
    """A stored object is missing, short, longer, or not the one the manifest names: never served."""

    code = "integrity_error"

    def __init__(self, key: str, detail: str, hint: str = "") -> None:
        super().__init__(f"{key}: {detail}", hint or "the object was damaged, truncated, deleted or replaced "
                         "behind logship's back; other logs are not affected (restore it from a backup, "
                         "or re-upload it from the spool with `logship watch` if the host still holds it)")
        self.key = key


class BytesMissing(LogshipError):
    """Bytes of the log that no part holds (dropped at the spool quota, or lost): their offsets are
    kept, so a reader of [start, end) stops at the first missing byte and says which range it is."""

    code = "bytes_missing"

    def __init__(self, task: str, host: str, missing: list[tuple[int, int]], why: str = "") -> None:
        a, b = missing[0]
        more = f" (and {len(missing) - 1} more range{'s' * (len(missing) > 2)})" if len(missing) > 1 else ""
        super().__init__(f"bytes {a}-{b - 1} of {task}/{host} are not in the archive{why}{more}",
                         f"ask for the bytes before {a} or from {b} on (Range: bytes={b}-); "
                         f"GET /api/v1/tasks/{task}/hosts/{host} lists `dropped`")
        self.missing = missing


# --- what the watcher records at upload --------------------------------------------------------------


class StoredDigest:
    """The `stored_sha256` and `blocks` of an object, fed its bytes in order as they are uploaded."""

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self.size = 0  # bytes fed
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._filled = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._whole.update(data)
        mv = memoryview(data)
        while len(mv):
            take = mv[:self.block - self._filled]
            self._part.update(take)
            self._filled += len(take)
            mv = mv[len(take):]
            if self._filled == self.block:
                self._digests.append(self._part.digest()[:BLOCK_DIGEST])
                self._part, self._filled = hashlib.sha256(), 0

    def fields(self) -> dict[str, Any]:
        """{"stored_sha256", "blocks"} for manifest.Segment.build."""
        digests = self._digests + ([self._part.digest()[:BLOCK_DIGEST]] if self._filled or not self._digests else [])
        return {"stored_sha256": self._whole.hexdigest(),
                "blocks": {"size": self.block, "sha256": b"".join(digests).hex()}}


def digest_fields(data: bytes | memoryview) -> dict[str, Any]:
    d = StoredDigest()
    d.update(data)
    return d.fields()


# --- checking what is read ---------------------------------------------------------------------------


def block_digests(key: str, entry: Segment) -> tuple[int, list[bytes]] | None:
    """(block size, digests) of an entry that has `blocks`, else None (a manifest older than them)."""
    blocks = entry.blocks
    if blocks is None:
        return None
    try:
        size, hexes = blocks["size"], blocks["sha256"]
        raw = bytes.fromhex(hexes)
        n = max(1, -(-entry.stored_size // size))
        if not (isinstance(size, int) and size > 0 and len(raw) == n * BLOCK_DIGEST):
            raise ValueError
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise IntegrityError(key, "its manifest entry's `blocks` does not fit its `stored_size`",
                             "the manifest is damaged") from None
    return size, [raw[i:i + BLOCK_DIGEST] for i in range(0, len(raw), BLOCK_DIGEST)]


def check_stored(key: str, entry: Segment, data: bytes) -> None:
    """A whole stored object against its entry: size, then each block (or the whole sha256)."""
    if len(data) != entry.stored_size:
        raise IntegrityError(key, f"{len(data)} bytes, not the {entry.stored_size} its manifest says")
    blocks = block_digests(key, entry)
    if blocks is not None:
        size, digests = blocks
        for i, want in enumerate(digests):
            if hashlib.sha256(memoryview(data)[i * size:(i + 1) * size]).digest()[:BLOCK_DIGEST] != want:
                raise IntegrityError(key, f"bytes {i * size}-{min(len(data), (i + 1) * size) - 1} do not match "
                                     "the digest its manifest recorded")
    elif entry.stored_sha256 and hashlib.sha256(data).hexdigest() != entry.stored_sha256:
        raise IntegrityError(key, "its sha256 is not the one its manifest recorded")


def check_raw(key: str, entry: Segment, raw: bytes) -> None:
    if len(raw) != entry.raw_size or hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise IntegrityError(key, f"its {len(raw)} bytes of log are not the {entry.raw_size} its manifest "
                             "recorded (size or sha256)")


def unzstd(key: str, data: bytes, limit: int) -> bytes:
    """Decompress a whole zstd object, at most `limit` bytes out (a damaged frame may claim any size)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
            out = r.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise IntegrityError(key, f"not a valid zstd object ({exc})") from None
    if len(out) > limit:
        raise IntegrityError(key, f"decompresses to more than the {limit} bytes its manifest allows")
    return out


def check_index(key: str, entry: Segment, data: bytes) -> list[index.Chunk]:
    """An index object, checked (size, `index_sha256`), decompressed, and its records against the entry:
    they must cover [offset, offset + raw_size) with no hole, from chunk chunks[0] to chunks[1]."""
    if len(data) != entry.index_size:
        raise IntegrityError(key, f"{len(data)} bytes, not the {entry.index_size} its manifest says")
    if entry.index_sha256 and hashlib.sha256(data).hexdigest() != entry.index_sha256:
        raise IntegrityError(key, "its sha256 is not the one its manifest recorded")
    first, last = entry.chunks
    want = (last - first + 1) * index.RECORD_SIZE
    raw = unzstd(key, data, want) if entry.compression == "zstd" else data
    chunks = list(index.unpack(raw))
    pos = entry.offset
    for c in chunks:
        if c.offset != pos:
            break
        pos = c.end
    else:
        if (len(raw) == want and chunks and chunks[0].seq == first and chunks[-1].seq == last
                and pos == entry.end):
            return chunks
    raise IntegrityError(key, "its records do not cover the segment its manifest describes")


# C901: one pass that checks each block, hashing one while the next is read; split, it would be slower
async def verified(pieces: AsyncIterator[bytes], key: str, entry: Segment, start: int = 0,  # noqa: C901
                   end: int | None = None) -> AsyncGenerator[bytes, None]:
    """The bytes [start, end) of a stored object as `pieces` reads them, each let through only once the
    whole block it lies in matched its digest in the manifest (`start` on a block boundary, `end` on
    one or None: to the object's end). A short, longer or different object raises IntegrityError;
    nothing of a bad block comes out. The entry must have `blocks` (see block_digests).

    A block after the first is hashed in a worker thread (hashlib lets go of the GIL) while the next one
    is read, and handed out as soon as its digest is in: hashing on the event loop cost a third of a zstd
    passthrough's speed, the loop being its bottleneck (bench/README.md). So at most two blocks are held.
    A piece that spans two blocks comes out as two memoryviews of it (no copy): bytes-like, typed bytes."""
    blocks = block_digests(key, entry)
    assert blocks is not None
    bs, digests = blocks
    size = entry.stored_size
    end = size if end is None else min(end, size)
    loop = asyncio.get_running_loop()
    i = start // bs
    pos, stop = start, min(start + bs, size)  # object offset of the next byte; end of the block it is in
    held: list[bytes | memoryview] = []
    pending: tuple[asyncio.Future[bytes], list[bytes | memoryview], int] | None = None  # being hashed

    def check(done: tuple[asyncio.Future[bytes], list[bytes | memoryview], int]) -> list[bytes | memoryview]:
        fut, out, n = done
        if fut.result() != digests[n]:
            raise IntegrityError(key, f"bytes {n * bs}-{min(size, (n + 1) * bs) - 1} do not match the digest "
                                 "its manifest recorded")
        return out

    try:
        async for piece in pieces:
            rest: bytes | memoryview = piece
            while len(rest):
                if pos >= end:
                    raise IntegrityError(key, f"longer than the {size} bytes its manifest says")
                take = rest
                if len(rest) > stop - pos:
                    mv = memoryview(rest)
                    take, rest = mv[:stop - pos], mv[stop - pos:]
                else:
                    rest = b""
                held.append(take)
                pos += len(take)
                if pos == stop and i == start // bs:  # the first block at once, on the loop: the first byte waits
                    for x in check((_done(loop, _digest(held)), held, i)):
                        yield cast(bytes, x)
                    held, i, stop = [], i + 1, min(stop + bs, size)
                elif pos == stop:
                    if pending is not None:
                        fut = pending[0]
                        await fut
                        for x in check(pending):
                            yield cast(bytes, x)
                    pending = (loop.run_in_executor(None, _digest, held), held, i)
                    held, i, stop = [], i + 1, min(stop + bs, size)
            if pending is not None and pending[0].done():
                done, pending = pending, None
                for x in check(done):
                    yield cast(bytes, x)
        if pending is not None:
            done, pending = pending, None
            await done[0]
            for x in check(done):
                yield cast(bytes, x)
    finally:
        if pending is not None:  # closed early: let the thread finish its block, the result unread
            pending[0].cancel()
    if pos < end:
        raise IntegrityError(key, f"ended at byte {pos} of the {size} its manifest says")


def _done(loop: asyncio.AbstractEventLoop, value: bytes) -> asyncio.Future[bytes]:
    fut: asyncio.Future[bytes] = loop.create_future()
    fut.set_result(value)
    return fut


def _digest(pieces: list[bytes | memoryview]) -> bytes:
    h = hashlib.sha256()
    for p in pieces:
        h.update(p)
    return h.digest()[:BLOCK_DIGEST]


# --- the manifest and whole parts --------------------------------------------------------------------


async def load_manifest(store: Store, task: str, host: str) -> Manifest:
    """The log's manifest; ObjectNotFound if the store has no such log, or `logship gc` is deleting it;
    IntegrityError if it is not a valid manifest."""
    key = names.manifest_key(task, host)
    data = await store.get(key)
    try:
        doc = Manifest.load(data, task, host)
    except ManifestError as exc:
        raise IntegrityError(key, f"not a valid manifest of {task}/{host} ({exc})", "the manifest was damaged or "
                             "written by something else; other logs are not affected") from None
    if doc.status == DELETING:
        raise ObjectNotFound(f"{task}/{host} is being deleted (logship gc)", "it is gone once gc finishes")
    return doc


def why_missing(d: Dropped | None) -> str:
    """What BytesMissing says of a hole: the dropped range it lies in, if the manifest records one."""
    return f" (segment {d.seq} was {d.reason or 'dropped at the spool quota'})" if d is not None else ""
