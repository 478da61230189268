"""Multipart uploads a crashed writer left behind, listed (paged) and aborted by logship's own requests on the
real servers (SeaweedFS, `rclone serve s3`) without botocore's client, and malformed listings refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from shipper.config import StoreConfig
from shipper.errors import StoreUnavailable
from shipper.store import open_store, s3
from shipper.store.s3 import S3Store

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1 << 20


async def _left_behind(writer: S3Store) -> list[str]:
    """The keys of the uploads under the writer's prefix, as botocore's client lists them (not under test)."""
    client = await writer._s3()
    resp = await client.list_multipart_uploads(Bucket=writer.bucket, Prefix=writer.root)
    return sorted(u["Key"][len(writer.root):] for u in resp.get("Uploads", ()))


@pytest.mark.parametrize(("server", "ours"), [("s3", True), ("rclone", True), ("s3", False)])
async def test_abort_uploads_pages_through_them(
        server: str, ours: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours (no botocore client), or botocore's as after a refused signature: the same pages, the same aborts."""
    cfg: StoreConfig = request.getfixturevalue(f"{server}_store_cfg")
    writer = open_store(cfg)  # a writer that crashed midway through its uploads (botocore's, as s3write.py)
    store = open_store(cfg)
    assert isinstance(writer, S3Store) and isinstance(store, S3Store)
    store._ops.ours = ours
    try:
        client = await writer._s3()
        keys = ["logs/t/h/00000001.log", "logs/t/h/00000001.log", "logs/t/h/a b+ü=&.log", "logs/u/h/00000002.log",
                "other/x"]
        for key in keys:
            upload = await client.create_multipart_upload(Bucket=writer.bucket, Key=writer.root + key)
            await client.upload_part(Bucket=writer.bucket, Key=writer.root + key, UploadId=upload["UploadId"],
                                     PartNumber=1, Body=b"x" * MiB)
        assert await _left_behind(writer) == sorted(keys)

        monkeypatch.setattr(s3, "UPLOADS_PAGE", 1)  # one upload a page: the markers carry the listing on
        assert await store.abort_uploads("logs/t/") == 3  # two uploads of one key, one of a key to encode
        assert await _left_behind(writer) == ["logs/u/h/00000002.log", "other/x"]
        assert store.stats.requests["list_multipart_uploads"] >= 3
        assert store.stats.requests["abort_multipart_upload"] == 3
        assert await store.abort_uploads("logs/t/") == 0
        assert await store.abort_uploads("") == 2
        assert await _left_behind(writer) == []
        assert (store._client is None) == ours  # ours, signed and sent without botocore's client
    finally:
        await writer.close()
        await store.close()


UPLOAD = b"<Upload><Key>p/logs/t/h/1.log</Key><UploadId>u1</UploadId></Upload>"
TRUNCATED = b"<IsTruncated>true</IsTruncated>"


def _result(inner: bytes) -> bytes:
    return b'<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + inner + \
        b"</ListMultipartUploadsResult>"


@pytest.fixture
async def fake_s3() -> AsyncIterator[Callable[[bytes | web.StreamResponse], S3Store]]:
    """A server that answers every ListMultipartUploads with the body given, and records its queries."""
    answers: list[bytes | web.StreamResponse] = []
    queries: list[dict[str, str]] = []

    async def handle(req: web.Request) -> web.StreamResponse:
        assert "uploads" in req.query and req.method == "GET", "only a listing of uploads is expected"
        queries.append(dict(req.query))
        answer = answers[0]
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/xml")
        await answer.prepare(req)  # a chunked answer without end: more than ANSWER_MAX, never a length
        for _ in range(20):
            await answer.write(b"<a>" * (1 << 18))
        return answer

    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("*", "/{tail:.*}", handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stores: list[S3Store] = []

    def make(answer: bytes | web.StreamResponse) -> S3Store:
        answers[:] = [answer]
        store = open_store(StoreConfig(url="s3://bk/p", endpoint=f"http://127.0.0.1:{port}", access_key="k",
                                       secret_key="s"))
        assert isinstance(store, S3Store)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for st in stores:
            await st.close()
        await runner.cleanup()


@pytest.mark.parametrize("answer", [
    b"not xml",
    b"<ListBucketResult></ListBucketResult>",  # another request's answer
    _result(b"<Upload><Key>p/logs/t/h/1.log</Key></Upload>"),  # no upload id
    _result(b"<Upload><UploadId>u1</UploadId></Upload>"),  # no key
    _result(b"<Upload><Key>p/other/1.log</Key><UploadId>u1</UploadId></Upload>"),  # not under the prefix asked for
    _result(b"<Upload><Key>q/logs/t/h/1.log</Key><UploadId>u1</UploadId></Upload>"),  # another writer's
    _result(UPLOAD + TRUNCATED),  # more, but no marker to go on from
    _result(UPLOAD + TRUNCATED + b"<NextKeyMarker>p/logs/t/h/1.log</NextKeyMarker>"
            b"<NextUploadIdMarker>u1</NextUploadIdMarker>"),  # the same page for ever
    _result(UPLOAD * ((9 << 20) // len(UPLOAD))),  # over ANSWER_MAX, with its length
    "endless",
], ids=lambda a: a if isinstance(a, str) else a[:60].decode())
async def test_a_malformed_list_of_uploads_is_refused(
        fake_s3: Callable[[bytes | web.StreamResponse], S3Store], answer: bytes | str) -> None:
    store = fake_s3(answer if isinstance(answer, bytes) else web.StreamResponse())
    with pytest.raises(StoreUnavailable, match="malformed answer") as err:
        await store.abort_uploads("logs/")
    assert "store.endpoint" in err.value.hint
    assert store.stats.requests["abort_multipart_upload"] == 0  # nothing aborted on a bad answer
    assert store._client is None
