"""Writing large objects to S3: a multipart upload, a few parts in flight, aborted on any failure
(cancellation included) so that no upload is left behind (S3Store.abort_uploads cleans up after a crash)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ObjectNotFound, StoreError

if TYPE_CHECKING:
    from .s3 import S3Store

MiB = 1 << 20
PART_SIZE = 8 * MiB
MAX_PARTS = 10_000  # S3's limit; larger objects get larger parts
UPLOAD_CONCURRENCY = 4  # parts in flight per object: memory is at most this many parts


async def put_multipart(store: S3Store, full: str, size: int, read: Callable[[int, int], Awaitable[bytes]]) -> None:
    """Upload in parts, UPLOAD_CONCURRENCY at a time; abort the upload on any failure, cancellation included."""
    s3 = await store._s3()
    part_size = max(PART_SIZE, _ceil_div(_ceil_div(size, MAX_PARTS), MiB) * MiB)
    jobs = iter(enumerate(range(0, size, part_size), start=1))  # shared by the workers
    etags: dict[int, str] = {}
    # Shielded, so that when we are cancelled while the server creates the upload, we still
    # learn its id and can abort it.
    create = asyncio.ensure_future(s3.create_multipart_upload(Bucket=store.bucket, Key=full))

    async def worker() -> None:
        # A part is read only when a worker is free to send it, so memory stays at
        # UPLOAD_CONCURRENCY * part_size whatever the object's size.
        for number, offset in jobs:
            body = await read(offset, min(part_size, size - offset))
            with store._errors(f"upload part {number} of", full):
                resp = await s3.upload_part(Bucket=store.bucket, Key=full, UploadId=upload_id,
                                            PartNumber=number, Body=body)
            etags[number] = resp["ETag"]

    upload_id = ""
    try:
        with store._errors("start a multipart upload of", full):
            upload_id = (await asyncio.shield(create))["UploadId"]
        n_workers = min(UPLOAD_CONCURRENCY, _ceil_div(size, part_size))
        workers = [asyncio.create_task(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        with store._errors("complete the multipart upload of", full):
            await s3.complete_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
    except BaseException:
        # Shielded: a second cancellation must not leave the upload (and its parts) behind.
        # If the abort itself fails, abort_uploads() cleans up on the watcher's next start.
        task = asyncio.create_task(_abort_created(store, full, create))
        store._aborts.add(task)
        task.add_done_callback(store._aborts.discard)
        with contextlib.suppress(Exception):
            await asyncio.shield(task)
        raise

async def _abort_created(store: S3Store, full: str, create: asyncio.Future[Any]) -> None:
    """Abort the upload `create` made, if it made one."""
    try:
        upload_id: str = (await create)["UploadId"]
    except Exception:
        return  # nothing was created
    with contextlib.suppress(StoreError):
        await abort(store, full, upload_id)

async def abort(store: S3Store, full: str, upload_id: str) -> None:
    s3 = await store._s3()
    try:
        with store._errors("abort the multipart upload of", full):
            await s3.abort_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload_id)
    except ObjectNotFound:
        pass  # already aborted or completed (NoSuchUpload)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
