"""Reading a log back from the store: its manifest, segments (and checkpoint), and chunk index.

The API streams through these; tests and `logship cat` use them whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import zstandard

from . import index, manifest, names
from .errors import DamagedObject, ObjectNotFound
from .store import Store


async def load_manifest(store: Store, task: str, host: str) -> dict[str, Any]:
    """The log's manifest; ObjectNotFound if the store has no such log, or `logship gc` is deleting it."""
    key = names.manifest_key(task, host)
    data = await store.get(key)
    try:
        doc = manifest.loads(data, task, host)
    except manifest.ManifestError as exc:
        raise DamagedObject(f"the manifest of {task}/{host} ({key}) is damaged: {exc}",
                            "the store holds something logship did not write there; rewrite or delete that object "
                            "(the watcher of its host rewrites a running log's manifest)") from None
    if doc.get("status") == manifest.DELETING:
        raise ObjectNotFound(f"{task}/{host} is being deleted (logship gc)", "it is gone once gc finishes")
    return doc


def parts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Segments in order, then the checkpoint of the open segment if there is one."""
    segments: list[dict[str, Any]] = doc["segments"]
    return segments + ([doc["checkpoint"]] if doc.get("checkpoint") else [])


def entry_keys(task: str, host: str, entry: dict[str, Any], checkpoint: bool) -> tuple[str, str]:
    """(bytes key, index key) of a manifest's segment or checkpoint entry."""
    if checkpoint:
        return names.checkpoint_keys(task, host, entry["seq"], entry["raw_size"], entry["compression"])
    return (names.segment_key(task, host, entry["seq"], entry["compression"]),
            names.index_key(task, host, entry["seq"], entry["compression"]))


def part_keys(doc: dict[str, Any], part: dict[str, Any]) -> tuple[str, str]:
    return entry_keys(doc["task"], doc["host"], part, doc.get("checkpoint") is part)


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
