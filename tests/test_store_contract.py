"""One contract for every store backend (file, SeaweedFS and `rclone serve s3`), plus S3 error translation and the
local SeaweedFS.

Ranges behave like Python slices of the object: [start, end) is clamped to the object's size, so a
range that starts at or past the end gives b"" (the API turns that into 416 itself, from head()).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.commands import s3local
from shipper.config import StoreConfig
from shipper.errors import LogshipError, ObjectNotFound, StoreError, StoreUnavailable
from shipper.format import archive
from shipper.store import Store, open_store, s3checksum, s3errors, s3http, s3ops, sigv4
from shipper.store.fs import FileStore
from shipper.store.s3 import READ_TIMEOUT, S3Store

from . import support
from .support import Proxy, free_port

# The store fixture's loop is the session's; the tests must run in the same one.
pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1 << 20


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _cut_under_a_put(store: Store, got: object) -> bool:
    """Whether `got` is a read that `rclone serve s3` cut short while a PUT replaced the object: gofakes3 sends
    the old size, then fewer bytes (its file is not replaced atomically for a reader). The store refuses such an
    answer (StoreUnavailable), never passes it on as the object; SeaweedFS and the file store never do it."""
    rclone = isinstance(store, S3Store) and not store.url.startswith(f"s3://{s3local.DEFAULT_BUCKET}/")
    if isinstance(got, BaseException) and not (rclone and isinstance(got, StoreUnavailable)):
        raise got
    return isinstance(got, StoreUnavailable)


async def test_round_trip(store: Store) -> None:
    await store.put("logs/t/h/00000000.log", b"hello\n")
    assert await store.get("logs/t/h/00000000.log") == b"hello\n"
    assert (await store.head("logs/t/h/00000000.log")).size == 6
    await store.put("logs/t/h/m", memoryview(bytearray(b"from a memoryview")))
    assert await store.get("logs/t/h/m") == b"from a memoryview"
    await store.put("logs/t/h/empty", b"")
    assert await store.get("logs/t/h/empty") == b""
    assert (await store.head("logs/t/h/empty")).size == 0


async def test_abort_uploads_with_none_to_abort(store: Store) -> None:
    """Early in this file: rclone's gofakes3 answers NoSuchUpload to a listing of a bucket that never had an upload."""
    await store.put("logs/t/h/00000000.log", b"small: no upload")
    assert await store.abort_uploads("logs/") == 0
    assert await store.abort_uploads("") == 0


@pytest.mark.parametrize(("start", "end", "want"), [
    (0, 1, slice(0, 1)),                 # first byte
    (999, None, slice(999, None)),       # last byte
    (999, 1000, slice(999, 1000)),
    (100, 300, slice(100, 300)),         # middle
    (100, None, slice(100, None)),       # to the end
    (0, None, slice(0, None)),
    (900, 5000, slice(900, 1000)),       # end past the size: clamped
    (1000, None, slice(0, 0)),           # start at the size: empty
    (1500, 2000, slice(0, 0)),           # start past the size: empty
    (5, 5, slice(0, 0)),                 # empty range
    (10, 5, slice(0, 0)),                # inverted range: empty
])
async def test_ranges(store: Store, start: int, end: int | None, want: slice) -> None:
    data = bytes(range(250)) * 4  # 1000 bytes
    await store.put("obj", data)
    assert await store.get("obj", start, end) == data[want]
    assert b"".join([c async for c in store.open("obj", start, end, chunk=64)]) == data[want]


async def test_range_of_empty_object(store: Store) -> None:
    await store.put("empty", b"")
    assert await store.get("empty", 0, 10) == b""
    assert await store.get("empty", 3) == b""
    assert [c async for c in store.open("empty")] == []


async def test_negative_range_is_a_bug(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.get("obj", -1)


async def test_open_streams_what_get_returns(store: Store) -> None:
    data = os.urandom(3 * MiB + 123)
    await store.put("big", data)
    chunks = [c async for c in store.open("big", chunk=256 << 10)]
    assert b"".join(chunks) == await store.get("big") == data
    assert max(len(c) for c in chunks) <= 256 << 10
    part = b"".join([c async for c in store.open("big", MiB - 7, 2 * MiB + 9, chunk=100_000)])
    assert part == await store.get("big", MiB - 7, 2 * MiB + 9) == data[MiB - 7:2 * MiB + 9]


async def test_open_stopped_early_releases_its_connection(store: Store) -> None:
    await store.put("big", os.urandom(4 * MiB))
    # More early stops than the S3 client's connection pool (32): a leak would hang here.
    for _ in range(40):
        async with contextlib.aclosing(store.open("big", chunk=64 << 10)) as it:
            async for chunk in it:
                assert chunk
                break
    assert len(await store.get("big", 0, 10)) == 10


async def test_large_object_put_and_put_file(store: Store, tmp_path: Path) -> None:
    data = os.urandom(40 * MiB + 5)  # multipart on S3 (more than 16 MiB, 8 MiB parts)
    await store.put("large/a", data)
    assert (await store.head("large/a")).size == len(data)
    assert sha(await store.get("large/a")) == sha(data)
    # Across the first part boundary
    assert await store.get("large/a", 8 * MiB - 3, 8 * MiB + 3) == data[8 * MiB - 3:8 * MiB + 3]

    path = tmp_path / "segment"
    path.write_bytes(data)
    await store.put_file("large/b", path)
    assert sha(b"".join([c async for c in store.open("large/b")])) == sha(data)
    small = tmp_path / "small"
    small.write_bytes(b"small file")
    await store.put_file("large/c", small)
    assert await store.get("large/c") == b"small file"


async def test_put_file_of_a_missing_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        await store.put_file("x", tmp_path / "absent")
    assert not isinstance(info.value, (ObjectNotFound, StoreUnavailable))
    assert info.value.hint
    with pytest.raises(ObjectNotFound):
        await store.head("x")


async def test_list_is_sorted_and_filtered_by_prefix(store: Store) -> None:
    keys = ["logs/t/h/00000002.log", "logs/t/h/00000000.log", "logs/t/h/00000001.idx", "logs/t/h/manifest.json",
            "logs/t/h2/00000000.log", "logs/t/hx", "lines/date=2024-01-01/task=t/host=h/00000000.parquet"]
    for i, k in enumerate(keys):
        await store.put(k, b"x" * i)
    got = await store.list("logs/t/h/")
    assert [o.key for o in got] == sorted(k for k in keys if k.startswith("logs/t/h/"))
    assert {o.key: o.size for o in got}["logs/t/h/00000002.log"] == 0
    assert {o.key: o.size for o in got}["logs/t/h/manifest.json"] == 3
    assert [o.key for o in await store.list("logs/t/h")] == sorted(k for k in keys if k.startswith("logs/t/h"))
    assert [o.key for o in await store.list("logs/t/h/0000000")] == sorted(keys[:3])
    assert [o.key for o in await store.list("")] == sorted(keys)
    assert await store.list("nothing/") == []


async def test_list_page_starts_after_a_key_and_shows_when_an_object_was_written_again(store: Store) -> None:
    """One LIST from a key on (a follower's poll of a log's new deltas, shipper/format/chained.py), each
    object with an etag that changes when it is written again (how that poll sees a new manifest)."""
    root = f"page-{os.urandom(4).hex()}/"
    keys = [f"{root}00000001.d{i:015d}-{i + 1:015d}.zst" for i in range(5)] + [f"{root}manifest.json"]
    for k in keys:
        await store.put(k, b"one")
    before = store.stats.snapshot()["requests"].get("list_objects_v2", 0)
    page = await store.list_page(root, keys[2])
    assert [o.key for o in page] == keys[3:] and all(o.etag for o in page)
    assert store.stats.snapshot()["requests"]["list_objects_v2"] - before == 1
    assert [o.key for o in await store.list_page(root, f"{root}00000001.~")] == keys[-1:]
    assert [o.key for o in await store.list_page(root, "", 2)] == keys[:2]
    tag = page[-1].etag
    assert (await store.list_page(root, keys[4]))[0].etag == tag  # unchanged: the same etag
    await store.put(keys[-1], b"two")  # the same size, other bytes
    assert (await store.list_page(root, keys[4]))[0].etag != tag


async def test_a_read_takes_the_listed_etag_only_of_the_bytes_it_read(store: Store) -> None:
    """How a view of a running log records its manifest's etag (archive.listed_tag, so that its first refresh
    reads no manifest): read, then list. The listed etag is taken when it is of the bytes read (the file store's
    GET tells the inode, mtime and size it read from; S3's etag of a plain PUT is their MD5), never when the object
    was replaced between the read and the LIST or between a LIST and the read, nor under concurrent PUTs."""
    key = f"tag-{os.urandom(4).hex()}/manifest.json"
    await store.put(key, b"one")

    async def listed() -> str:
        return (await store.list_page(key.split("/")[0] + "/"))[0].etag

    read = await archive.get_tagged(store, key)
    assert read == b"one" and archive.listed_tag(read, await listed()) == await listed() != ""
    assert store.stats.requests["get_object"] == 1  # the read and its etag: one GET
    await store.put(key, b"two")  # replaced after the read: the same size, other bytes
    assert archive.listed_tag(read, await listed()) == ""
    before = await listed()
    await store.put(key, b"six")  # replaced between a LIST and the read
    assert archive.listed_tag(await archive.get_tagged(store, key), before) == ""

    versions = [bytes([i]) * (64 << 10) for i in range(8)]
    got = await asyncio.gather(*(store.put(key, v) for v in versions),
                               *(archive.get_tagged(store, key) for _ in range(8)), return_exceptions=True)
    last = await listed()
    final = await store.get(key)
    for data in got[len(versions):]:
        if _cut_under_a_put(store, data):
            continue
        assert isinstance(data, bytes)
        assert archive.listed_tag(data, last) in ("", last)
        assert archive.listed_tag(data, last) == "" or data == final, "an etag taken for bytes it is not of"
    assert archive.listed_tag(await archive.get_tagged(store, key), last) == last


async def test_list_dirs_names_one_level_in_one_request(store: Store) -> None:
    """The hosts of a task, say: one LIST with a delimiter, however many objects lie below each name."""
    root = f"dirs-{os.urandom(4).hex()}/"
    keys = [f"{root}t/h1/{i:08d}.log" for i in range(1200)]  # more than a listing page of objects
    keys += [f"{root}t/h2/a/b/manifest.json", f"{root}t/h10/x", f"{root}t/file", f"{root}t2/h9/x"]
    await asyncio.gather(*(store.put(k, b"x") for k in keys))
    before = store.stats.snapshot()["requests"].get("list_objects_v2", 0)
    assert await store.list_dirs(f"{root}t/") == ["h1", "h10", "h2"]
    assert store.stats.snapshot()["requests"]["list_objects_v2"] - before == 1
    assert await store.list_dirs(root) == ["t", "t2"]
    assert await store.list_dirs(f"{root}none/") == []
    await store.delete([f"{root}t/h2/a/b/manifest.json"])
    # A name with nothing below it is gone from a file store and AWS S3; SeaweedFS keeps the emptied
    # "folder" a while (20 s and more here), so callers check what they find (shipper/format/hosts.py).
    left = await store.list_dirs(f"{root}t/")
    assert left == ["h1", "h10"] or (isinstance(store, S3Store) and left == ["h1", "h10", "h2"])
    with pytest.raises(StoreError):
        await store.list_dirs(f"{root}t")  # a prefix of names ends with "/"


async def test_missing_objects(store: Store) -> None:
    with pytest.raises(ObjectNotFound) as info:
        await store.get("logs/none/h/manifest.json")
    assert info.value.hint
    with pytest.raises(ObjectNotFound):
        await store.get("logs/none/h/manifest.json", 5, 10)
    with pytest.raises(ObjectNotFound):
        await store.get("logs/none/h/manifest.json", 5, 5)
    with pytest.raises(ObjectNotFound):
        await store.head("logs/none/h/manifest.json")
    with pytest.raises(ObjectNotFound):
        [c async for c in store.open("logs/none/h/manifest.json")]
    await store.put("logs/t/h/x", b"1")
    with pytest.raises(ObjectNotFound):  # a "directory" is not an object
        await store.get("logs/t/h")


async def test_delete_is_idempotent(store: Store) -> None:
    await store.put("d/a", b"a")
    await store.put("d/b", b"b")
    await store.delete(["d/a", "d/missing"])
    with pytest.raises(ObjectNotFound):
        await store.head("d/a")
    await store.delete(["d/a"])
    await store.delete([])
    assert [o.key for o in await store.list("d/")] == ["d/b"]
    await store.put("d/a", b"again")  # a deleted key (and its emptied directory) can be written again
    assert await store.get("d/a") == b"again"


async def test_delete_many(store: Store) -> None:
    keys = [f"many/{i:05d}" for i in range(1001)]  # more than one DeleteObjects batch
    await asyncio.gather(*(store.put(k, b"") for k in keys))
    assert len(await store.list("many/")) == 1001
    await store.delete(keys)
    assert await store.list("many/") == []


async def test_requests_and_bytes_are_counted_as_s3_bills_them(store: Store) -> None:
    """One request per call of a small object, one per listing page; bytes sent are the bodies'."""
    prefix = f"counted-{os.urandom(4).hex()}/"
    before = store.stats.snapshot()
    await store.put(prefix + "a", b"x" * 1000)
    await store.get(prefix + "a")
    await store.get(prefix + "a", 10, 20)
    await store.head(prefix + "a")
    await store.list(prefix)
    await store.delete([prefix + "a"])
    after = store.stats.snapshot()
    ops = {op: n - before["requests"].get(op, 0) for op, n in after["requests"].items()}
    assert {op: n for op, n in ops.items() if n} == {
        "put_object": 1, "get_object": 2, "head_object": 1, "list_objects_v2": 1, "delete_objects": 1}
    assert after["bytes_sent"] - before["bytes_sent"] >= 1000
    assert after["bytes_sent"] - before["bytes_sent"] < 1000 + 2000  # DeleteObjects' XML body, nothing more
    assert after["bytes_received"] - before["bytes_received"] == 1010


async def test_a_checked_put_with_its_sha256_is_checked_by_it_where_the_server_does(store: Store) -> None:
    """A delta goes up with its frame row's sha256: S3 sends it as x-amz-checksum-sha256 once the server has
    refused a wrong one (one probe a store: SeaweedFS does; rclone's gofakes3 takes it, so the probe is deleted
    and Content-MD5 stays); a server that checks it refuses a body that does not match, and keeps the old object."""
    prefix = f"sha-{os.urandom(4).hex()}/"
    body, other = b"delta " * 1000, b"other " * 1000
    before = store.stats.snapshot()["requests"]
    await store.put(prefix + "d", body, checked=True, sha256=hashlib.sha256(body).digest())
    assert await store.get(prefix + "d") == body
    first = {op: n - before.get(op, 0) for op, n in store.stats.snapshot()["requests"].items() if n > before.get(op, 0)}
    checks = isinstance(store, S3Store) and store._checksums.sha256 == s3checksum.CHECKED
    if isinstance(store, S3Store):
        seaweedfs = store.url.startswith(f"s3://{s3local.DEFAULT_BUCKET}/")  # else rclone's
        assert store._checksums.sha256 == (s3checksum.CHECKED if seaweedfs else s3checksum.IGNORED)
        # the probe, then the PUT; a probe taken is deleted
        assert first == ({"put_object": 2, "get_object": 1} if checks else
                         {"put_object": 2, "delete_objects": 1, "get_object": 1})
        assert await store.list(".logship/") == []
    else:
        assert first == {"put_object": 1, "get_object": 1}
    before = store.stats.snapshot()["requests"]
    await store.put(prefix + "e", other, checked=True, sha256=hashlib.sha256(other).digest())
    after = store.stats.snapshot()["requests"]
    assert after["put_object"] - before.get("put_object", 0) == 1  # asked once a store
    if checks:  # a body that is not what the digest says is refused, whole
        with pytest.raises(StoreError):
            await store.put(prefix + "d", other, checked=True, sha256=hashlib.sha256(body).digest())
        assert await store.get(prefix + "d") == body


@pytest.mark.parametrize("refusal, puts", [(support.s3_error(400, "Bad Request", "InvalidArgument"), 3),
                                           (support.s3_error(501, "Not Implemented", "NotImplemented"), 2)])
async def test_a_server_that_refuses_the_checksum_header_gets_content_md5(s3_store_cfg: StoreConfig, refusal: bytes,
                                                                         puts: int) -> None:
    """A server that refuses x-amz-checksum-sha256 itself (an S3 look-alike that does not know it): with a 400
    the probe cannot tell, the first PUT that carries it is refused, and it goes again with Content-MD5, for good;
    with another refusal (501) the probe's answer is no verdict, and the PUT goes with Content-MD5 at once."""
    proxy = Proxy(_port(s3_store_cfg))
    proxy.refuse_header, proxy.refusal = b"x-amz-checksum-sha256", refusal
    body = b"delta " * 1000
    async with proxy as through:
        store = open_store(dataclasses.replace(s3_store_cfg, endpoint=through))
        try:
            assert isinstance(store, S3Store)
            await store.put("logs/t/h/d", body, checked=True, sha256=hashlib.sha256(body).digest())
            assert store._checksums.sha256 == s3checksum.IGNORED
            assert store.stats.snapshot()["requests"]["put_object"] == puts
            assert await store.get("logs/t/h/d") == body
            before = store.stats.snapshot()["requests"]["put_object"]
            await store.put("logs/t/h/e", body, checked=True, sha256=hashlib.sha256(body).digest())
            assert store.stats.snapshot()["requests"]["put_object"] == before + 1  # straight to Content-MD5
        finally:
            await store.close()


async def test_last_write_wins_and_readers_see_whole_objects(store: Store) -> None:
    await store.put("w", b"one")
    await store.put("w", b"two!")
    assert await store.get("w") == b"two!"
    versions = [bytes([i]) * (1 * MiB) for i in range(5)]
    results = await asyncio.gather(*(store.put("w", v) for v in versions), *(store.get("w") for _ in range(5)),
                                   return_exceptions=True)
    assert not [r for r in results[:5] if r is not None]
    for got in results[5:]:
        assert _cut_under_a_put(store, got) or got in versions or got == b"two!"
    assert await store.get("w") in versions


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../../b", "", "a/"])
async def test_keys_never_escape_the_root(store: Store, key: str) -> None:
    with pytest.raises(StoreError):
        await store.put(key, b"x")
    with pytest.raises(StoreError):
        await store.get(key)
    with pytest.raises(StoreError):
        await store.list("../")


async def test_abort_uploads_on_the_file_store(file_store_cfg: StoreConfig) -> None:
    store = open_store(file_store_cfg)
    assert isinstance(store, FileStore)
    await store.put("logs/t/h/a", b"a")
    stale = store.root / "logs/t/h/b.tmp-dead"
    fresh = store.root / "logs/t/h/c.tmp-live"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert [o.key for o in await store.list("logs/")] == ["logs/t/h/a"]  # temporary files do not exist
    assert await store.abort_uploads("logs/") == 0
    assert not stale.exists() and fresh.exists()
    await store.close()


async def _multipart_uploads(store: S3Store) -> list[dict[str, Any]]:
    s3 = await store._s3()  # reaching into the backend: this test only
    resp = await s3.list_multipart_uploads(Bucket=store.bucket, Prefix=store.root)
    uploads: list[dict[str, Any]] = resp.get("Uploads", [])
    return uploads


async def test_abort_uploads_on_s3(s3_store_cfg: StoreConfig) -> None:
    store = open_store(s3_store_cfg)
    assert isinstance(store, S3Store)
    try:
        # A put cancelled midway aborts its own multipart upload: cancelled at once (while the
        # server may be creating the upload), and cancelled while parts are being sent.
        data = os.urandom(64 * MiB)
        put = asyncio.create_task(store.put("big", data))
        await asyncio.sleep(0)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await _multipart_uploads(store) == []
        put = asyncio.create_task(store.put("big", data))
        deadline = time.monotonic() + 20
        while not await _multipart_uploads(store):
            assert time.monotonic() < deadline and not put.done()
            await asyncio.sleep(0.01)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await _multipart_uploads(store) == []
        with pytest.raises(ObjectNotFound):
            await store.head("big")

        # One left behind by a crashed writer is aborted by abort_uploads().
        s3 = await store._s3()
        key = store.root + "logs/t/h/00000001.log"
        upload = await s3.create_multipart_upload(Bucket=store.bucket, Key=key)
        await s3.upload_part(Bucket=store.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * MiB)
        assert len(await _multipart_uploads(store)) == 1
        assert await store.abort_uploads("logs/other/") == 0
        assert await store.abort_uploads("logs/") == 1
        assert await _multipart_uploads(store) == []
        assert await store.abort_uploads("") == 0
    finally:
        await store.close()


# --- S3 errors --------------------------------------------------------------------------


async def test_bad_credentials_are_a_store_error_with_a_hint(local_s3: s3local.LocalS3) -> None:
    for cfg in (StoreConfig(url="s3://logship/t/", endpoint=local_s3.endpoint, access_key=local_s3.access_key,
                            secret_key="wrong"),
                StoreConfig(url="s3://logship/t/", endpoint=local_s3.endpoint, access_key="nobody",
                            secret_key="wrong")):
        store = open_store(cfg)
        try:
            # Writes go through botocore, reads through presigned URLs: both say the same.
            for op in (store.put("x", b"x"), store.get("x"), _read_all(store, "x")):
                with pytest.raises(StoreError) as info:
                    await op
                assert not isinstance(info.value, (StoreUnavailable, ObjectNotFound))
                assert "store.secret_key" in info.value.hint
                assert isinstance(info.value.__cause__, Exception)
        finally:
            await store.close()


async def test_missing_bucket_names_store_url(local_s3: s3local.LocalS3) -> None:
    store = open_store(StoreConfig(url="s3://no-such-bucket-here/", endpoint=local_s3.endpoint,
                                   access_key=local_s3.access_key, secret_key=local_s3.secret_key))
    try:
        for op in (store.put("x", b"x"), store.list(""), store.get("x"), _read_all(store, "x")):
            with pytest.raises(StoreError) as info:
                await op
            assert not isinstance(info.value, ObjectNotFound)
            assert "store.url" in info.value.hint
    finally:
        await store.close()


def _port(cfg: StoreConfig) -> int:
    """The local S3 server's port, for a Proxy in front of it."""
    return int(cfg.endpoint.rsplit(":", 1)[1])


async def _read_all(store: Store, key: str) -> bytes:
    return b"".join([c async for c in store.open(key)])


async def test_reads_survive_a_dropped_connection_and_a_slow_down(s3_store_cfg: StoreConfig) -> None:
    # A NAT or the server's idle timeout resets the pooled connections between two reads; a busy
    # store answers 503 SlowDown.
    data = os.urandom(2 * MiB)
    proxy = Proxy(_port(s3_store_cfg))
    async with proxy as through:
        store = open_store(dataclasses.replace(s3_store_cfg, endpoint=through))
        try:
            await store.put("k", data)
            for _ in range(3):
                assert await store.get("k", 5, 9) == data[5:9]
                assert await _read_all(store, "k") == data
                before = proxy.connections
                proxy.cut_all()
                assert await store.get("k") == data  # on a fresh connection, not an error
                assert proxy.connections > before
            for read in (store.get("k"), _read_all(store, "k")):
                proxy.drop = 1  # the server resets the connection as the request arrives: sent again
                assert await read == data
            for read in (store.get("k"), _read_all(store, "k")):
                proxy.slow_down = 1  # S3's "SlowDown": sent again after a moment
                assert await read == data
            # Once, no more: an outage reaches the caller's own loop (capped backoff) at once.
            for fault in ("drop", "slow_down"):
                setattr(proxy, fault, 2)
                with pytest.raises(StoreUnavailable) as info:
                    await store.get("k")
                assert fault == "drop" or "SlowDown" in str(info.value)
                setattr(proxy, fault, 0)
        finally:
            await store.close()


@pytest.mark.parametrize("by_sha256", [False, True])
async def test_a_put_cut_after_its_headers_leaves_the_old_object(s3_store_cfg: StoreConfig, by_sha256: bool) -> None:
    # SeaweedFS stores an empty object when the body never comes; Content-MD5 makes it refuse, and so does
    # x-amz-checksum-sha256, which a delta's PUT sends instead (the row's digest, not a second hash).
    proxy = Proxy(_port(s3_store_cfg))
    old, new = b'{"old": true}', b'{"new": true}' * 100
    async with proxy as through:
        store = open_store(dataclasses.replace(s3_store_cfg, endpoint=through))
        try:
            await store.put("logs/t/h/manifest.json", old, checked=by_sha256,
                            sha256=hashlib.sha256(old).digest() if by_sha256 else None)
            assert isinstance(store, S3Store)
            assert store._checksums.sha256 == (s3checksum.CHECKED if by_sha256 else s3checksum.UNKNOWN)
            proxy.headers_only = 10  # every attempt (botocore's and aiohttp's own retry)
            with pytest.raises(StoreUnavailable):
                await store.put("logs/t/h/manifest.json", new, checked=by_sha256,
                                sha256=hashlib.sha256(new).digest() if by_sha256 else None)
            proxy.headers_only = 0
            assert await store.get("logs/t/h/manifest.json") == old
        finally:
            await store.close()


async def test_reads_use_the_proxy_of_the_environment(s3_store_cfg: StoreConfig,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # HTTP_PROXY / NO_PROXY as botocore honours them (multipart): our requests must go the same way.
    data = os.urandom(1000)
    proxy = Proxy(_port(s3_store_cfg))  # an HTTP proxy forwards to the store
    async with proxy as through:
        for env, via_proxy in (({"HTTP_PROXY": through}, True),
                               ({"HTTP_PROXY": through, "NO_PROXY": "127.0.0.1"}, False)):
            for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            s3http._proxy_for.cache_clear()
            store = open_store(s3_store_cfg)
            try:
                before = proxy.connections  # writes share the reads' pool (shipper/store/s3http.py)
                await store.put("p", data)
                assert await store.get("p") == data
                assert await _read_all(store, "p") == data
            finally:
                await store.close()
            assert (proxy.connections > before) == via_proxy
    s3http._proxy_for.cache_clear()


async def test_a_body_cut_short_is_an_error_not_a_short_object(s3_store_cfg: StoreConfig) -> None:
    data = os.urandom(4 * MiB)
    direct = open_store(s3_store_cfg)
    await direct.put("k", data)
    await direct.close()
    proxy = Proxy(_port(s3_store_cfg), cut_after=MiB)
    async with proxy as through:
        store = open_store(dataclasses.replace(s3_store_cfg, endpoint=through))
        try:
            for op in (store.get("k"), _read_all(store, "k")):
                with pytest.raises(StoreUnavailable) as info:
                    await op
                assert "store.endpoint" in info.value.hint
        finally:
            await store.close()
    assert proxy.cuts >= 2


async def test_crashed_or_frozen_server_is_unavailable_then_recovers(tmp_path: Path) -> None:
    # A server of its own: the session's one stays up for the other tests.
    inst = await asyncio.to_thread(s3local.start, tmp_path / "s3")
    store = open_store(inst.store_config("p/"))
    try:
        await store.put("kept", b"survives a crash")
        await asyncio.to_thread(s3local.kill, inst)  # refused connections: fails fast
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await store.get("kept")
        assert time.monotonic() - began < 5
        assert "store.endpoint" in info.value.hint
        await asyncio.to_thread(s3local.restart, inst)
        assert await store.get("kept") == b"survives a crash"  # same client, same endpoint, same data

        s3local.pause(inst)  # accepted but never answered: fails after the read timeouts
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("kept")
        assert time.monotonic() - began < 2 * READ_TIMEOUT + 5
        s3local.resume(inst)
        assert await store.get("kept") == b"survives a crash"
    finally:
        await store.close()
        await asyncio.to_thread(s3local.stop, inst)


async def test_unreachable_endpoint_is_unavailable() -> None:
    port = free_port()  # free once closed: nothing listens there
    store = open_store(StoreConfig(url="s3://logship/", endpoint=f"http://127.0.0.1:{port}",
                                   access_key="a", secret_key="b"))
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.head("x")
        assert time.monotonic() - began < 5
    finally:
        await store.close()


# --- the local SeaweedFS (`logship s3 start|stop|env`) -----------------------------------


async def test_local_s3_start_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s3"
    assert s3local.load(d) is None
    with pytest.raises(LogshipError):
        s3local.main(["env", "--dir", str(d)])

    began = time.monotonic()
    assert await asyncio.to_thread(s3local.main, ["start", "--dir", str(d)]) == 0
    started_in = time.monotonic() - began
    inst = s3local.load(d)
    assert inst is not None and (d / "state.json").is_file() and (d / "weed.log").is_file()
    out = capsys.readouterr().out
    assert f"export LOGSHIP_STORE_ENDPOINT={inst.endpoint}" in out
    assert "export LOGSHIP_STORE_URL=s3://logship/" in out
    assert inst.env()["AWS_ACCESS_KEY_ID"] == inst.access_key
    print(f"weed mini started in {started_in:.2f} s")

    again = await asyncio.to_thread(s3local.start, d)  # idempotent: the same server
    assert (again.pid, again.port) == (inst.pid, inst.port)
    assert s3local.main(["env", "--dir", str(d)]) == 0
    assert f"export AWS_SECRET_ACCESS_KEY={inst.secret_key}" in capsys.readouterr().out

    store = open_store(inst.store_config())
    try:
        await store.put("persisted", b"data")
    finally:
        await store.close()

    assert await asyncio.to_thread(s3local.main, ["stop", "--dir", str(d)]) == 0
    assert s3local.load(d) is None
    with socket.socket() as s:
        # Nothing listens there any more (SO_REUSEADDR: closed connections may linger in TIME_WAIT).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", inst.port))
        s.listen()
    await asyncio.to_thread(s3local.stop, d)  # stopping twice is fine

    back = await asyncio.to_thread(s3local.start, d)  # same dir: same ports, keys and data
    try:
        assert back.port == inst.port and back.pid != inst.pid
        store = open_store(back.store_config())
        try:
            assert await store.get("persisted") == b"data"
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(s3local.stop, back)


# --- S3 requests of our own (shipper/store/s3ops.py) ------------------------------------------


ODD = ["a b/c d.log", "plus+sign/x+y", "pct%25/100%", "ünï/cödé ✓", "tilde~/~x~", "amp&lt/<a>&'\"=?#",
       "semi;colon/a,b:c@d$e!f*g(h)", "star*/[x]{y}|z^`"]


async def test_odd_keys_round_trip(store: Store) -> None:
    """Keys that URL encoding, XML escaping or `encoding-type=url` could garble come back as written
    from every request: put, get, head, list, list_page, list_dirs, delete."""
    root = f"odd-{os.urandom(4).hex()}/"
    keys = sorted(f"{root}{k}" for k in ODD)
    for i, k in enumerate(keys):
        await store.put(k, f"body {i}".encode())
    for i, k in enumerate(keys):
        assert await store.get(k) == f"body {i}".encode()
        assert (await store.head(k)).size == len(f"body {i}")
    assert [o.key for o in await store.list(root)] == keys
    assert [o.key for o in await store.list_page(root)] == keys
    assert [o.key for o in await store.list_page(root, keys[1], 2)] == keys[2:4]
    assert [o.key for o in await store.list(f"{root}plus+")] == [f"{root}plus+sign/x+y"]
    dirs = sorted({k.split("/")[0] for k in ODD if "/" in k})
    assert await store.list_dirs(root) == dirs
    assert await store.list_dirs(f"{root}a b/") == []
    await store.delete(keys[:3])
    assert [o.key for o in await store.list(root)] == keys[3:]
    await store.delete(keys)
    assert await store.list(root) == []


async def test_listings_and_deletes_of_more_than_a_page(store: Store) -> None:
    """Over 1,000 keys: a LIST is two pages (continuation token), a DeleteObjects two batches."""
    root = f"paged-{os.urandom(4).hex()}/"
    keys = [f"{root}d{i % 3}/k {i:05d}+" for i in range(1003)]
    await asyncio.gather(*(store.put(k, b"x" * (i % 7)) for i, k in enumerate(keys)))
    before = store.stats.snapshot()["requests"]
    got = await store.list(root)
    assert [o.key for o in got] == sorted(keys)
    assert {o.key: o.size for o in got} == {k: i % 7 for i, k in enumerate(keys)}
    assert await store.list_dirs(root) == ["d0", "d1", "d2"]
    page = await store.list_page(root)
    assert [o.key for o in page] == sorted(keys)[:1000]
    assert [o.key for o in await store.list_page(root, page[-1].key)] == sorted(keys)[1000:]
    await store.delete(keys)
    assert await store.list(root) == []
    after = store.stats.snapshot()["requests"]
    if isinstance(store, S3Store):
        assert after["list_objects_v2"] - before.get("list_objects_v2", 0) == 2 + 1 + 2 + 1
        assert after["delete_objects"] - before.get("delete_objects", 0) == 2


async def test_every_request_survives_one_slow_down(s3_store_cfg: StoreConfig) -> None:
    """S3's 503 SlowDown is sent again once after a moment (counted twice, as billed); twice is an error.
    (Not HEAD: the proxy's SlowDown has a body, which no answer to a HEAD may have; HEAD shares the retry.)"""
    proxy = Proxy(_port(s3_store_cfg))
    async with proxy as through:
        store = open_store(dataclasses.replace(s3_store_cfg, endpoint=through))
        try:
            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("put_object", lambda: store.put("s/k", b"v" * 100)),
                ("list_objects_v2", lambda: store.list("s/")),
                ("list_objects_v2", lambda: store.list_dirs("")),
                ("delete_objects", lambda: store.delete(["s/gone"])),
            ]
            for op, call in calls:
                before = store.stats.requests[op]
                proxy.slow_down = 1
                await call()
                assert store.stats.requests[op] - before == 2 and proxy.slow_down == 0
            for _, call in calls:
                proxy.slow_down = 2
                with pytest.raises(StoreUnavailable) as info:
                    await call()
                assert "SlowDown" in str(info.value)
                assert info.value.hint
            proxy.slow_down = 0
            assert (await store.head("s/k")).size == 100
        finally:
            await store.close()


async def test_bad_credentials_on_every_request(local_s3: s3local.LocalS3) -> None:
    """Wrong secret, unknown key: a StoreError naming the settings, never the secret."""
    secret = "wrong-secret-Zq8x"
    for access_key in (local_s3.access_key, "nobody"):
        store = open_store(StoreConfig(url="s3://logship/t/", endpoint=local_s3.endpoint, access_key=access_key,
                                       secret_key=secret))
        try:
            for op in (store.put("x", b"x"), store.head("x"), store.get("x"), store.get("x", 1, 5), store.list(""),
                       store.list_page(""), store.list_dirs(""), store.delete(["x"])):
                with pytest.raises(StoreError) as info:
                    await op
                assert not isinstance(info.value, (StoreUnavailable, ObjectNotFound))
                assert "store.secret_key" in info.value.hint
                assert secret not in f"{info.value} {info.value.hint} {info.value.__cause__!r}"
            assert isinstance(store, S3Store) and store._ops.ours  # the credentials' fault, not our signing
        finally:
            await store.close()


async def test_a_refused_signature_falls_back_to_botocore_for_good(
        s3_store_cfg: StoreConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A server that refuses our signature (here: SeaweedFS, given a broken one) but takes botocore's:
    the request succeeds through botocore, and so does every later one, with one WARNING."""
    store = open_store(s3_store_cfg)
    assert isinstance(store, S3Store)
    try:
        await store.put("f/a", b"ours")  # our own signature, accepted
        assert store._ops.ours
        signed = sigv4.Presigner.request

        def broken(self: sigv4.Presigner, *args: Any, **kw: Any) -> tuple[str, dict[str, str]]:
            url, headers = signed(self, *args, **kw)
            headers["authorization"] = headers["authorization"][:-4] + "0000"
            return url, headers

        monkeypatch.setattr(sigv4.Presigner, "request", broken)
        with caplog.at_level(logging.WARNING, logger="logship.store"):
            await store.put("f/b", b"botocore's")
            assert not store._ops.ours
            assert [o.key for o in await store.list("f/")] == ["f/a", "f/b"]
            assert (await store.head("f/b")).size == len(b"botocore's")
            await store.delete(["f/a"])
            assert await store.list_dirs("") == ["f"]
        assert len([r for r in caplog.records if "refused a request signed by logship" in r.getMessage()]) == 1
        assert await store.get("f/b") == b"botocore's"
        # a delta's PUT through botocore: its checksum probe, then the PUT, checked by the row's sha256
        delta = b"delta " * 100
        await store.put("f/d", delta, checked=True, sha256=hashlib.sha256(delta).digest())
        assert store._checksums.sha256 == s3checksum.CHECKED and await store.get("f/d") == delta
        with pytest.raises(StoreError):
            await store.put("f/d", b"other", checked=True, sha256=hashlib.sha256(delta).digest())
        assert await store.get("f/d") == delta
        fresh = open_store(s3_store_cfg)  # its first request a HEAD, whose refusal is a bare 403
        try:
            assert (await fresh.head("f/b")).size == len(b"botocore's")
            assert isinstance(fresh, S3Store) and not fresh._ops.ours
        finally:
            await fresh.close()
        fresh = open_store(s3_store_cfg)  # its first request a GET, in a range, streamed
        try:
            assert b"".join([piece async for piece in fresh.open("f/b", 2, 8)]) == b"tocore"
            assert isinstance(fresh, S3Store) and not fresh._ops.ours
        finally:
            await fresh.close()
    finally:
        await store.close()


@pytest.mark.parametrize("body", [
    b"not xml", b"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>k</Key><Size>x</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
    b"<ListBucketResult><CommonPrefixes></CommonPrefixes></ListBucketResult>",
])
async def test_a_malformed_listing_is_refused(body: bytes) -> None:
    with pytest.raises(s3errors.BadAnswer):
        s3ops.parse_list(body)
    err = s3errors.translate(s3errors.BadAnswer("x"), "list", "s3://b/k", None, "b")
    assert isinstance(err, StoreUnavailable) and "store.endpoint" in err.hint
