"""Checking a log read back from the store: its manifest, segments (and checkpoint), and chunk index, each
against what the manifest recorded when the object was uploaded (docs/format.md, "Integrity"); and the
digests the watcher records at upload.

shipper/format/reader.py reads logs through these checks (the API and `logship cat`).
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NamedTuple, Protocol, cast

import xxhash
import zstandard

from shipper.errors import DamagedObject, LogshipError, ObjectNotFound
from shipper.format import index, names
from shipper.format.manifest import BLOCK_HASHES, DELETING, Dropped, Manifest, ManifestError, Segment
from shipper.store import Store
from shipper.store.base import TaggedGet

# The watcher records a digest per block of each stored object (the manifest entry's `blocks`), so
# that a reader checks a block before any of its bytes go out, and a Range reads from the block that
# holds its start. BLOCK (256 KiB) up to 16 MiB objects, the default segment: the first byte of an object
# waits for one block (≈ 0.5 ms from the store here). Larger objects get larger blocks, up to BLOCK_MAX,
# so that an object has at most DIGESTS digests up to 64 MiB (2 KiB of hex in its manifest entry), and a
# reader holds at most 1 MiB per object it streams.
BLOCK, BLOCK_MAX, DIGESTS = 256 << 10, 1 << 20, 64
BLOCK_DIGEST = 16  # bytes of each block's digest kept in the manifest (32 hex characters)
# The block digest the watcher writes: XXH3-128 runs at ≈ 16 GB/s here (SHA-256 1.6), so a reader checks
# every byte on the event loop as it arrives for ≈ 1 % of a passthrough download's time. It guards against
# damage and accidental replacement, not forgery: whoever can replace an object can rewrite its manifest
# too (docs/security.md). `sha256` (its first 16 bytes) is what manifests written before it carry.
BLOCK_HASH = "xxh3_128"


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


HASHERS: dict[str, Callable[[], _Hasher]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
assert set(HASHERS) == set(BLOCK_HASHES)


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
        self._part = HASHERS[BLOCK_HASH]()
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
                self._part, self._filled = HASHERS[BLOCK_HASH](), 0

    def fields(self) -> dict[str, Any]:
        """{"stored_sha256", "blocks"} for manifest.Segment.build."""
        digests = self._digests + ([self._part.digest()[:BLOCK_DIGEST]] if self._filled or not self._digests else [])
        return {"stored_sha256": self._whole.hexdigest(),
                "blocks": {"size": self.block, BLOCK_HASH: b"".join(digests).hex()}}


def block_for(size: int) -> int:
    """The block size for an object of `size` bytes (a power of two from BLOCK to BLOCK_MAX)."""
    return min(BLOCK_MAX, max(BLOCK, 1 << max(0, -(-size // DIGESTS) - 1).bit_length()))


def digest_fields(data: bytes | memoryview) -> dict[str, Any]:
    d = StoredDigest(block_for(len(data)))
    d.update(data)
    return d.fields()


# --- checking what is read ---------------------------------------------------------------------------


class Blocks(NamedTuple):
    """An entry's block digests: the block size, one digest per block, and the hash they are of."""

    size: int
    digests: list[bytes]
    hasher: Callable[[], _Hasher]

    def digest(self, data: bytes | memoryview) -> bytes:
        h = self.hasher()
        h.update(data)
        return h.digest()[:BLOCK_DIGEST]


def block_digests(key: str, entry: Segment) -> Blocks | None:
    """The block digests of an entry that has `blocks` (`xxh3_128`, or `sha256` as written before it),
    else None (a manifest older than them)."""
    blocks = entry.blocks
    if blocks is None:
        return None
    try:
        (algo,) = [k for k in HASHERS if k in blocks]
        size, raw = blocks["size"], bytes.fromhex(blocks[algo])
        n = max(1, -(-entry.stored_size // size))
        if not (isinstance(size, int) and size > 0 and len(raw) == n * BLOCK_DIGEST):
            raise ValueError
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise IntegrityError(key, "its manifest entry's `blocks` does not fit its `stored_size`",
                             "the manifest is damaged") from None
    return Blocks(size, [raw[i:i + BLOCK_DIGEST] for i in range(0, len(raw), BLOCK_DIGEST)], HASHERS[algo])


def check_stored(key: str, entry: Segment, data: bytes) -> None:
    """A whole stored object against its entry: size, then each block (or the whole sha256)."""
    if len(data) != entry.stored_size:
        raise IntegrityError(key, f"{len(data)} bytes, not the {entry.stored_size} its manifest says")
    blocks = block_digests(key, entry)
    if blocks is not None:
        size = blocks.size
        for i, want in enumerate(blocks.digests):
            if blocks.digest(memoryview(data)[i * size:(i + 1) * size]) != want:
                raise _bad_block(key, i, size, len(data))
    elif entry.stored_sha256 and hashlib.sha256(data).hexdigest() != entry.stored_sha256:
        raise IntegrityError(key, "its sha256 is not the one its manifest recorded")


def _bad_block(key: str, i: int, block: int, size: int) -> IntegrityError:
    return IntegrityError(key, f"bytes {i * block}-{min(size, (i + 1) * block) - 1} do not match the digest its "
                          "manifest recorded")


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


async def verified(pieces: AsyncIterator[bytes], key: str, entry: Segment, start: int = 0,
                   end: int | None = None) -> AsyncGenerator[bytes, None]:
    """The bytes [start, end) of a stored object as `pieces` reads them, each let through only once the
    whole block it lies in matched its digest in the manifest (`start` on a block boundary, `end` on
    one or None: to the object's end). A short, longer or different object raises IntegrityError;
    nothing of a bad block comes out. The entry must have `blocks` (see block_digests).

    Each piece is hashed on the event loop as it arrives (XXH3 costs ≈ 0.06 ms per MiB; a worker thread
    cost more in hand-offs than it saved, bench/README.md), so at most one block is held. The checked
    bytes of a piece go out as one slice of it (no copy, and no more writes than pieces): bytes-like,
    typed bytes."""
    blocks = block_digests(key, entry)
    assert blocks is not None
    bs, digests = blocks.size, blocks.digests
    size = entry.stored_size
    end = size if end is None else min(end, size)
    i = start // bs  # the block being filled
    pos, stop = start, min(start + bs, size)  # object offset of the next byte; end of block i
    h = blocks.hasher()
    held: list[bytes] = []  # the bytes of block i so far (none of them checked yet)
    async for piece in pieces:
        mv, base, longer = memoryview(piece), pos, pos + len(piece) > end
        if longer:
            mv = mv[:end - pos]
        pos += len(mv)
        done = 0  # bytes of the piece hashed (and checked, up to a block's end)
        while stop <= pos and i < len(digests):
            h.update(mv[done:stop - base])
            if h.digest()[:BLOCK_DIGEST] != digests[i]:
                raise _bad_block(key, i, bs, size)
            done, i, stop, h = stop - base, i + 1, min(stop + bs, size), blocks.hasher()
        if done < len(mv):
            h.update(mv[done:])
        if done:
            for x in held:
                yield x
            yield piece if done == len(piece) else cast(bytes, mv[:done])
            held = [] if done == len(mv) else [cast(bytes, mv[done:])]
        elif len(mv):
            held.append(cast(bytes, mv) if len(mv) < len(piece) else piece)
        if longer:
            raise IntegrityError(key, f"longer than the {size} bytes its manifest says")
    if pos < end:
        raise IntegrityError(key, f"ended at byte {pos} of the {size} its manifest says")


# --- the manifest and whole parts --------------------------------------------------------------------


class ManifestCache:
    """Manifests parsed and checked before, by key and by their exact bytes: a reader that GETs a manifest
    it has seen skips Manifest.load, which checks every entry (≈ 3 ms for the 130 segments of a 2 GiB log,
    more than the GET: bench/README.md, "The API's first byte"). Only bytes equal to those it was checked
    from give a manifest back, so nothing unchecked is ever handed out. Bounded by the bytes it holds
    (least recently used go first)."""

    def __init__(self, max_bytes: int = 4 << 20) -> None:
        self.max_bytes, self.held = max_bytes, 0
        self._docs: OrderedDict[str, tuple[bytes, Manifest]] = OrderedDict()

    def get(self, key: str, data: bytes) -> Manifest | None:
        hit = self._docs.get(key)
        if hit is None or hit[0] != data:
            return None
        self._docs.move_to_end(key)
        return hit[1]

    def put(self, key: str, data: bytes, doc: Manifest) -> None:
        if len(data) > self.max_bytes // 4:
            return  # one huge manifest would push out all the others
        old = self._docs.pop(key, None)
        self.held += len(data) - (len(old[0]) if old is not None else 0)
        self._docs[key] = (data, doc)
        while self.held > self.max_bytes:
            self.held -= len(self._docs.popitem(last=False)[1][0])


async def load_manifest(store: Store, task: str, host: str, cache: ManifestCache | None = None) -> Manifest:
    """The log's manifest; ObjectNotFound if the store has no such log, or `logship gc` is deleting it;
    IntegrityError if it is not a valid manifest. With `cache`, bytes checked before are not parsed again."""
    return (await fetch_manifest(store, task, host, cache))[0]


async def fetch_manifest(store: Store, task: str, host: str, cache: ManifestCache | None = None
                         ) -> tuple[Manifest, bytes]:
    """load_manifest, and the bytes it was read from (for listed_tag)."""
    key = names.manifest_key(task, host)
    data = await get_tagged(store, key)
    doc = cache.get(key, data) if cache is not None else None
    if doc is None:
        try:
            doc = Manifest.load(data, task, host)
        except ManifestError as exc:
            raise IntegrityError(key, f"not a valid manifest of {task}/{host} ({exc})", "the manifest was damaged "
                                 "or written by something else; other logs are not affected") from None
        if cache is not None:
            cache.put(key, data, doc)
    if doc.status == DELETING:
        raise ObjectNotFound(f"{task}/{host} is being deleted (logship gc)", "it is gone once gc finishes")
    return doc, data


class ManifestBytes(bytes):
    """A manifest's bytes as fetch_manifest read them, and the etag the store lists for exactly them, as its GET
    told it (base.TaggedGet: the file store's inode, mtime and size)."""

    etag: str

    def __new__(cls, data: bytes, etag: str) -> ManifestBytes:
        self = super().__new__(cls, data)
        self.etag = etag
        return self


async def get_tagged(store: Store, key: str) -> bytes:
    """A whole object, as ManifestBytes where the store's GET tells its etag (base.TaggedGet), for listed_tag."""
    return ManifestBytes(*await store.get_tagged(key)) if isinstance(store, TaggedGet) else await store.get(key)


def listed_tag(data: bytes, listed: str) -> str:
    """A manifest's etag as listed after its GET, if it is of the bytes that GET gave, else "": the etag its GET
    told (ManifestBytes: the file store), or S3's etag of a plain PUT, the MD5 of the bytes (SeaweedFS, rclone, AWS
    without KMS). So a view's first refresh needs no second GET of the manifest, and never takes a commit made
    between the GET and the LIST for the one it was built from (Reader.refresh)."""
    if not listed:
        return ""
    if isinstance(data, ManifestBytes) and data.etag:
        return listed if listed == data.etag else ""
    return listed if listed.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest() else ""


def why_missing(d: Dropped | None) -> str:
    """What BytesMissing says of a hole: the dropped range it lies in, if the manifest records one."""
    return f" (segment {d.seq} was {d.reason or 'dropped at the spool quota'})" if d is not None else ""
