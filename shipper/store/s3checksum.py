"""Which checksum an S3 PUT carries, so that a body cut short is refused, not stored.

SeaweedFS keeps an empty object when a PUT's connection closes before its body (a writer killed at that
instant): over a manifest, that would lose the log. With a checksum of the body the server refuses the PUT
instead. Small objects carry Content-MD5; larger ones are segments, which no manifest names before their PUT
returned, and hashing them would cost upload speed. `checked` objects (deltas, frame tables) are found by
listing, with no manifest before them: always. A checked body whose sha256 the caller has already (a delta's,
for its frame-table row) is checked by that instead (x-amz-checksum-sha256) where the server checks that
header: MD5 is the costlier hash (≈ 600 MB/s here against sha256's 1.5 GB/s), 0.7 ms a 1.5 MB checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from . import s3errors
from .s3ops import S3Ops

log = logging.getLogger("logship.store")

MD5_MAX = 1 << 20  # PUTs up to this size carry Content-MD5
# What the server does with x-amz-checksum-sha256, as learned.
UNKNOWN, REFUSES_WRONG, CHECKED, IGNORED = "unknown", "refuses a wrong one", "checked", "ignored"


class Checksums:
    """The PUTs of one store, each with the checksum it should carry."""

    def __init__(self, ops: S3Ops, probe_key: str, endpoint: str | None) -> None:
        self._ops = ops
        self._probe_key = probe_key  # full key
        self._endpoint = endpoint
        self._lock = asyncio.Lock()
        self.sha256 = UNKNOWN

    async def put(self, full: str, data: bytes, checked: bool, sha256: bytes | None) -> None:
        """PUT `data` at the full key `full`; errors raw (botocore's ClientError, aiohttp's) for s3.py."""
        if checked and sha256 is not None and await self._may_send_sha256():
            try:
                await self._ops.put(full, data, None, sha256)
            except ClientError as exc:
                if self.sha256 != REFUSES_WRONG or s3errors.http_status(exc) != 400:
                    raise
                # Not confirmed yet: a server may refuse the header itself. Content-MD5 for good.
                self.sha256 = IGNORED
                log.info("the store at %s refused a PUT with x-amz-checksum-sha256 (%s): checked PUTs carry "
                         "Content-MD5 instead", self._endpoint or "AWS", s3errors.error_code(exc))
            else:
                self.sha256 = CHECKED
                return
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode() if len(data) <= MD5_MAX or checked else None
        await self._ops.put(full, data, md5)

    async def _may_send_sha256(self) -> bool:
        """Whether to send a checked PUT's sha256 rather than its MD5: once the server refused a wrong one (one
        probe a store, S3Ops.ignores_sha256) and until it refuses the header itself; confirmed by the first PUT
        that carries it and is taken."""
        if self.sha256 == UNKNOWN:
            async with self._lock:
                if self.sha256 == UNKNOWN:
                    self.sha256 = IGNORED if await self._ops.ignores_sha256(self._probe_key) else REFUSES_WRONG
        return self.sha256 != IGNORED
