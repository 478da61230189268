"""Reading a part stored as one object (a sealed segment, a prefix checkpoint: parts.WHOLE_KINDS), checked against
its manifest entry: by block before any byte of a block goes out, or, for a manifest older than the block
digests, as a whole after the fact (shipper/format/archive.py). A zstd object is streamed as stored, or
decompressed in bounded pieces (shipper/format/zstdio.py).

Apart from shipper/format/reader.py, as chained.py is for frames and deltas: this is the one place that knows how
one stored object is opened and checked; the reader plans a log's parts, orders their reads, asks for the next
object early and finds a part that moved away again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable

from shipper.format import archive, index
from shipper.format.archive import IntegrityError
from shipper.format.parts import PIECE, Part
from shipper.format.zstdio import ZSTD_IN, Early, decompress, slice_pieces
from shipper.store import Store


class Whole:
    """The whole-object parts of one reader (shipper/format/reader.py)."""

    def __init__(self, store: Store, note: Callable[[IntegrityError], None]) -> None:
        self.store = store
        self.note = note

    def open(self, task: str, host: str, part: Part, a: int, b: int, zstd_chunk: int = ZSTD_IN) -> Early:
        """The part's object, requested now: stored bytes from its start (zstd), or those of [a, b) (none).
        With the entry's block digests, each block is checked before its bytes come out, and an uncompressed
        Range reads from the block that holds its start. Without them (an older manifest), the whole object
        is read and `read` checks it as a whole."""
        key, entry = object_key(task, host, part), part.entry
        assert entry is not None
        try:
            blocks = archive.block_digests(key, entry)
        except IntegrityError as exc:
            self.note(exc)
            raise
        if blocks is None:
            return Early(self.store.open(key, chunk=zstd_chunk if entry.compression == "zstd" else PIECE))
        if entry.compression == "zstd":
            return Early(archive.verified(self.store.open(key, chunk=zstd_chunk), key, entry))
        bs = blocks.size
        lo, hi = a // bs * bs, min(-(-b // bs) * bs, entry.stored_size)
        checked = archive.verified(self.store.open(key, lo, hi, chunk=PIECE), key, entry, lo, hi)
        return Early(slice_pieces(checked, a - lo, b - a))

    async def read(self, task: str, host: str, part: Part, a: int, b: int, opened: Early | None,
                   hold: bool) -> AsyncGenerator[bytes, None]:
        """[a, b) of the part, checked: by block (see `open`), else whole, after the fact: an older manifest
        has only the sha256 of the log bytes, so the whole part is read and hashed, and a mismatch is raised
        at its end: the bytes before it may have gone out and the answer then fails, or, with `hold`, they
        are held until the whole part matched."""
        obj = opened if opened is not None else self.open(task, host, part, a, b)
        key, entry = object_key(task, host, part), part.entry
        assert entry is not None
        zstd = entry.compression == "zstd"
        async with contextlib.aclosing(obj):
            if entry.blocks is not None:
                async for piece in (decompress(obj, a, b, key) if zstd else obj):
                    yield piece
                return
            h, pos = hashlib.sha256(), 0
            held: list[bytes] = []
            async for piece in (decompress(obj, 0, part.size, key) if zstd else obj):
                h.update(piece)
                lo, hi = max(a - pos, 0), min(b - pos, len(piece))
                if lo < hi:
                    out = piece if (lo, hi) == (0, len(piece)) else piece[lo:hi]
                    if hold:
                        held.append(out)
                    else:
                        yield out
                pos += len(piece)
            if pos < part.size or h.hexdigest() != entry.sha256:
                raise IntegrityError(key, "its bytes do not match the sha256 its manifest recorded")
            for out in held:
                yield out

    async def chunks(self, task: str, host: str, part: Part) -> list[index.Chunk]:
        """The part's chunk index, checked against the manifest."""
        assert part.entry is not None
        key = index_key(task, host, part)
        return archive.check_index(key, part.entry, await self.store.get(key))


def object_key(task: str, host: str, part: Part) -> str:
    assert part.entry is not None
    return part.entry.keys(task, host)[0]


def index_key(task: str, host: str, part: Part) -> str:
    assert part.entry is not None
    return part.entry.keys(task, host)[1]
