"""Content-Encoding of log answers: which coding a request gets (Accept-Encoding, q-values), the validator of
each representation, and the encoded bytes: a finished log's stored zstd frames passed through as they are,
every other byte compressed on the fly (zstd or gzip, cheap levels, bounded memory, big pieces off the loop).

Only whole representations are encoded (the whole log, `follow=`, `stream=`, all hosts; and a running log's
whole answer a central API forwards, api/proxy.py: asked of the node in identity, checked, encoded here).
A request with a Range (or `?start=`) is answered in identity: its offsets are the log's bytes, and a client
resuming a download it decoded (`curl --compressed -C -`) counts decoded bytes. So each encoding has only a
weak ETag (`W/"<run_id>-<size>-zstd"`, `-gzip`): its bytes depend on where the log's parts lie (spool or
store), which a strong validator could not promise, and If-Range (strong only) never resumes an encoded answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import zlib
from collections.abc import AsyncGenerator, Callable

import zstandard

from .source import LogView, Part, Source

IDENTITY, ZSTD, GZIP = "identity", "zstd", "gzip"
# Server preference when the client weighs codings alike: zstd compresses ≈ 2× faster than gzip at a better
# ratio, and a finished log's stored frames go out as they are.
PREFERENCE = (ZSTD, GZIP)
ALIASES = {"x-gzip": GZIP}  # RFC 9110 §8.4.1.3
# On the fly, on the bench's log-like text, one core: zstd -1 245 MB/s, 3.6× smaller; gzip -1 107 MB/s, 3.2×.
ZSTD_LEVEL = 1
GZIP_LEVEL = 1
# A 1 MiB piece takes 4.3 ms (zstd) or 9.8 ms (gzip): too long on the loop that serves tails in 1–3 ms, so
# pieces from this size are compressed in a thread (zlib and zstandard release the GIL).
THREAD_MIN = 64 << 10
# Threads of their own, so that downloads being compressed never queue the default executor's short jobs
# (every view of a log reads the spool there); two, as many as the cores this runs on.
COMPRESS_THREADS = 2
_pool: concurrent.futures.ThreadPoolExecutor | None = None
UNLISTED_IDENTITY = 0.0001  # identity is acceptable unless excluded, but below any coding the client names


def choose(accept: str | None) -> str:
    """The coding for an Accept-Encoding header (RFC 9110 §12.5.3): the highest q-value among zstd, gzip and
    identity, ties to PREFERENCE. `*` is not taken as a promise to decode zstd or gzip; a coding with q=0 is
    refused; identity is the answer when nothing else is acceptable (also when the header excludes it: a 406
    would help no one)."""
    if not accept:
        return IDENTITY
    q: dict[str, float] = {}
    for item in accept.split(","):
        coding, *params = (x.strip() for x in item.split(";"))
        coding = ALIASES.get(coding.lower(), coding.lower())
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:  # also NaN
                    weight = 0.0
        q.setdefault(coding, weight)  # the first mention counts
    ident = q.get(IDENTITY, q.get("*", UNLISTED_IDENTITY))
    best = max(PREFERENCE, key=lambda c: q.get(c, 0.0))  # max keeps the first of equals: PREFERENCE order
    return best if q.get(best, 0.0) > 0 and q[best] >= ident else IDENTITY


def etag(identity_tag: str, coding: str) -> str:
    """The validator of the log in `coding`: the identity's strong tag, or a weak one per encoding."""
    return identity_tag if coding == IDENTITY else f'W/"{identity_tag.strip(chr(34))}-{coding}"'


def none_match(header: str | None, tag: str) -> bool:
    """Whether If-None-Match names the representation `tag` (weak comparison, RFC 9110 §13.1.2)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or tag.removeprefix("W/") in tags


def headers(coding: str) -> dict[str, str]:
    return {} if coding == IDENTITY else {"Content-Encoding": coding}


# --- the bytes ---------------------------------------------------------------------------------------------


class _Encoder:
    """One stream's compressor: `step` for each piece (flushed when `live`), `end` for the trailer."""

    def __init__(self, coding: str) -> None:
        if coding == ZSTD:
            z = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
            self._compress: Callable[[bytes], bytes] = z.compress
            self._flush: Callable[[int], bytes] = z.flush
            self._sync, self._finish = zstandard.COMPRESSOBJ_FLUSH_BLOCK, zstandard.COMPRESSOBJ_FLUSH_FINISH
        else:
            g = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip wrapper
            self._compress, self._flush = g.compress, g.flush
            self._sync, self._finish = zlib.Z_SYNC_FLUSH, zlib.Z_FINISH

    def step(self, data: bytes, live: bool) -> bytes:
        out = self._compress(data)
        return out + self._flush(self._sync) if live else out

    def end(self) -> bytes:
        return self._flush(self._finish)


async def compress(pieces: AsyncGenerator[bytes, None], coding: str,
                   live: bool = False) -> AsyncGenerator[bytes, None]:
    """`pieces` as one stream in `coding` (a gzip member, or a zstd frame with its checksum). `live` (a
    followed log): every piece is flushed at once, so a reader decodes each line as it comes, not at the end.
    Memory is one compressor's (≈ 1.4 MB for zstd level 1, 256 KiB for gzip) and a piece or two, whatever the
    log's size.

    Pieces of a log read to its end are pipelined: one is compressed in a thread while the one before is
    written to the client and the next is read (one at a time: a compressor is not shared between threads).
    A followed log's piece is compressed and sent at once."""
    enc = _Encoder(coding)
    loop = asyncio.get_running_loop()
    job: asyncio.Future[bytes] | None = None  # the piece being compressed
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            out = await job if job is not None else b""
            if len(piece) >= THREAD_MIN:
                job = loop.run_in_executor(_threads(), enc.step, piece, live)
            else:
                job = loop.create_future()
                job.set_result(enc.step(piece, live))
            if live:
                out, job = out + await job, None
            if out:
                yield out
    if job is not None and (out := await job):
        yield out
    yield enc.end()


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="logship-compress")
    return _pool


def passthrough_size(view: LogView, coding: str) -> int | None:
    """The length of a finished log's zstd answer when every part goes out as stored (known in advance, so
    the answer has a Content-Length, and it runs at the store's speed); else None (compressed on the fly)."""
    if coding != ZSTD or not view.finished or not view.size or not all(_stored(view, p) for p in view.parts):
        return None
    return Source.zstd_size(view)


async def whole(source: Source, view: LogView, coding: str) -> AsyncGenerator[bytes, None]:
    """A finished log in `coding`. zstd: each run of parts the store holds as zstd goes out as stored
    (Source.read_zstd), the others (spool files, uncompressed objects) as frames compressed on the fly;
    concatenated frames are one zstd stream (RFC 8878). gzip: the log's bytes compressed."""
    if coding != ZSTD or not view.parts:
        async for piece in compress(source.read(view, 0, view.size), coding):
            yield piece
        return
    for stored, run in itertools.groupby(view.parts, key=lambda p: _stored(view, p)):
        parts = list(run)
        body = (source.read_zstd(dataclasses.replace(view, parts=parts)) if stored
                else compress(source.read(view, parts[0].offset, parts[-1].end), ZSTD))
        async with contextlib.aclosing(body):
            async for piece in body:
                yield piece


def _stored(view: LogView, part: Part) -> bool:
    """Whether read_zstd sends `part` as stored: its share of a view of it alone. Asked of the reader, so
    that what it passes through stays its decision (a part it frames raw would still be valid zstd)."""
    return Source.zstd_share(dataclasses.replace(view, parts=[part])) > 0
