"""Reading a log back from the store: its manifest, segments (and checkpoint), and chunk index.

The API streams through these; tests and `logship cat` use them whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import zstandard

from . import index, manifest, names
from .store import Store


async def load_manifest(store: Store, task: str, host: str) -> dict[str, Any]:
    """The log's manifest; ObjectNotFound if the store has no such log."""
    return manifest.loads(await store.get(names.manifest_key(task, host)))


def parts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Segments in order, then the checkpoint of the open segment if there is one."""
    return doc["segments"] + ([doc["checkpoint"]] if doc.get("checkpoint") else [])


def part_keys(doc: dict[str, Any], part: dict[str, Any]) -> tuple[str, str]:
    """(bytes key, index key) of a segment or checkpoint entry of the manifest `doc`."""
    task, host, comp = doc["task"], doc["host"], part["compression"]
    if doc.get("checkpoint") is part:
        return names.checkpoint_keys(task, host, part["seq"], part["raw_size"], comp)
    return names.segment_key(task, host, part["seq"], comp), names.index_key(task, host, part["seq"], comp)


async def part_bytes(store: Store, doc: dict[str, Any], part: dict[str, Any]) -> bytes:
    key, _ = part_keys(doc, part)
    data = await store.get(key)
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=part["raw_size"]) \
        if part["compression"] == "zstd" else data


async def part_index(store: Store, doc: dict[str, Any], part: dict[str, Any]) -> list[index.Chunk]:
    _, key = part_keys(doc, part)
    data = await store.get(key)
    if part["compression"] == "zstd":
        data = zstandard.ZstdDecompressor().decompress(data)
    return list(index.unpack(data))


async def iter_bytes(store: Store, doc: dict[str, Any], stream: str | None = None) -> AsyncIterator[bytes]:
    """The log's bytes in order, segment by segment; with `stream`, only that stream's chunks."""
    code = index.STREAM_CODES[stream] if stream else None
    for part in parts(doc):
        data = await part_bytes(store, doc, part)
        if code is None:
            yield data
            continue
        base = part["offset"]
        view = memoryview(data)
        yield b"".join(view[c.offset - base:c.end - base] for c in await part_index(store, doc, part)
                       if c.stream == code)


async def read_all(store: Store, task: str, host: str, stream: str | None = None) -> bytes:
    doc = await load_manifest(store, task, host)
    return b"".join([b async for b in iter_bytes(store, doc, stream)])
