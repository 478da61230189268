"""The store protocol: what the watcher and the API need from object storage, and no more."""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass
class StoreStats:
    """What a store client sent: every request by operation (retries and listing pages included: what a
    provider bills), and the bytes of request bodies. Counted where the request leaves, in each backend."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0

    def count(self, op: str, sent: int = 0) -> None:
        self.requests[op] += 1
        self.bytes_sent += sent

    def snapshot(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    # Changes when the object is written again (S3: the ETag; the file store: inode, mtime and size), as
    # listings show it: a follower sees a new manifest in the LIST it makes anyway. "" where unknown (head).
    etag: str = field(default="", compare=False)


class Store(Protocol):
    """Keys are relative to the store's root (an S3 bucket/prefix or a directory).

    Backends translate their own errors into ObjectNotFound / StoreUnavailable / StoreError;
    nothing above a backend sees botocore or OSError.
    """

    url: str
    stats: StoreStats

    async def put(self, key: str, data: bytes | memoryview, *, checked: bool = False,
                  sha256: bytes | None = None) -> None:
        """Write an object atomically: readers see the old object, or the whole new one. `checked`: send
        a checksum of the body whatever its size (S3: Content-MD5), for objects found by listing alone;
        `sha256`: the body's digest when the caller has it already (S3: sent as x-amz-checksum-sha256 instead,
        where the server checks it)."""

    async def put_file(self, key: str, path: Path) -> None:
        """Write a local file as an object (multipart for large files; aborted on failure)."""

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of an object (end=None: to its end)."""

    def open(self, key: str, start: int = 0, end: int | None = None,
             chunk: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """Stream bytes [start, end) of an object in chunks of about `chunk` bytes.

        Ranges behave like Python slices: `end` is clamped to the size, a start at or past it gives
        nothing. Close the generator (`aclose()`) to stop early and release the connection.
        """

    async def head(self, key: str) -> ObjectInfo:
        """Size of an object; ObjectNotFound if absent."""

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """All objects whose key starts with `prefix`, sorted by key."""

    async def list_page(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> builtins.list[ObjectInfo]:
        """One LIST request (S3 StartAfter): at most `max_keys` (1-1000) objects under `prefix` whose key
        sorts after `start_after`, sorted by key, with their etag. Fewer than `max_keys` means there are no
        more."""

    async def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The names one level below `prefix` (empty or ending in "/") that hold at least one object,
        sorted: a LIST with delimiter "/", so its cost grows with those names, not with the objects below.
        Some servers (SeaweedFS) still show a name a while after its last object is deleted: check what
        matters (a manifest, say) before trusting a name."""

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; absent ones are not an error."""

    async def abort_uploads(self, prefix: str) -> int:
        """Abort incomplete multipart uploads under `prefix`; return how many."""

    async def close(self) -> None: ...


@runtime_checkable
class TaggedGet(Protocol):
    """A store whose GET can say which etag `list` shows for exactly the bytes it read (the file store: the
    inode, mtime and size of the descriptor it read from). S3's needs no such call: its listed etag of a plain
    PUT is the MD5 of the bytes (shipper.format.archive.listed_tag)."""

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The whole object and its etag as listed; a PUT after the read gives another etag, never these bytes'."""
