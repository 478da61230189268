"""S3's GET, PUT, HEAD, ListObjectsV2, DeleteObjects, ListMultipartUploads and AbortMultipartUpload for
s3.py: as requests of our own (signed by sigv4.py, sent by s3http.py, their answers parsed here: untrusted, a
malformed one is BadAnswer, never a wrong listing), or botocore's where ours cannot go. Both give the same
shapes (`Page`, DeleteObjects' Errors, `Uploads`).

With static credentials (the config's keys, or AWS_* variables) our requests never touch botocore: its S3
client (≈ 16 MB of service model) is created only for botocore's requests (multipart, the fallback) or to
ask its credential chain for the keys of the moment.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import aiohttp
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from .s3errors import BadAnswer, error_code, http_status
from .s3http import S3Http
from .sigv4 import Presigner

# A page of 1,000 keys of S3's longest (1,024 bytes, up to 3 bytes each URL-encoded) is ≈ 3.2 MB.
ANSWER_MAX = 8 << 20
# A GET botocore presigns (the fallback) is sent at once; the lifetime only has to outlast a stalled connection's retry.
PRESIGN_SECONDS = 900
# What a server answers when it cannot check our header signature but may check botocore's.
SIGNATURE_CODES = {"SignatureDoesNotMatch", "AuthorizationHeaderMalformed"}

log = logging.getLogger("logship.store")
T = TypeVar("T")


@dataclass
class Page:
    """One ListObjectsV2 answer: (full key, size, etag) of each object, the common prefixes (with a
    delimiter), and the continuation token when there is more."""

    objects: list[tuple[str, int, str]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    token: str = ""

    @classmethod
    def of_botocore(cls, resp: dict[str, Any]) -> Page:
        return cls([(o["Key"], int(o["Size"]), str(o.get("ETag", ""))) for o in resp.get("Contents", ())],
                   [p["Prefix"] for p in resp.get("CommonPrefixes", ())],
                   str(resp.get("NextContinuationToken") or "") if resp.get("IsTruncated") else "")


@dataclass
class Uploads:
    """One ListMultipartUploads answer: (full key, upload id) of each upload, and the markers of the next
    page (key-marker, upload-id-marker) when there is more."""

    uploads: list[tuple[str, str]] = field(default_factory=list)
    next: tuple[str, str] | None = None

    @classmethod
    def of_botocore(cls, resp: dict[str, Any]) -> Uploads:
        more = (str(resp.get("NextKeyMarker") or ""), str(resp.get("NextUploadIdMarker") or ""))
        return cls([(u["Key"], u["UploadId"]) for u in resp.get("Uploads", ())],
                   more if resp.get("IsTruncated") else None)


class S3Ops:
    """The requests of one bucket: ours, or botocore's for the store's life once a server refused our
    signature and took botocore's (logged once at WARNING).

    Ours are not checked against botocore at run time: tests/test_sigv4.py checks our signatures against
    botocore's signer, and the server checks every signature, which is what the fallback is for.
    """

    def __init__(self, http: S3Http, bucket: str, client: Callable[[], Awaitable[Any]], endpoint: str | None,
                 static: Presigner | None = None) -> None:
        self.http = http
        self.bucket = bucket
        self._client = client  # botocore's, created on first use
        self._endpoint = endpoint
        self.ours = True
        self._static = static  # the signer of static credentials: botocore's client is not needed to sign
        self._signer: Presigner | None = None
        self._which: tuple[str, str, str, str, str | None] | None = None  # what _signer was made of

    async def signer(self) -> Presigner | None:
        """The static credentials' signer, or one of botocore's credentials of the moment (a refresh gives new
        ones); None without any."""
        if self._static is not None:
            return self._static
        s3 = await self._client()
        creds = getattr(getattr(s3, "_request_signer", None), "_credentials", None)
        frozen = await creds.get_frozen_credentials() if creds is not None else None
        if frozen is None or not frozen.access_key or not frozen.secret_key or not s3.meta.region_name:
            return None
        which = (s3.meta.endpoint_url, s3.meta.region_name, frozen.access_key, frozen.secret_key, frozen.token)
        if self._signer is None or which != self._which:  # else the kept one, with its day's keys
            self._signer, self._which = Presigner(*which), which
        return self._signer

    async def _call(self, ours: Callable[[Presigner], Awaitable[T]], botos: Callable[[Any], Awaitable[T]]) -> T:
        signer = await self.signer() if self.ours else None
        if signer is None:
            return await botos(await self._client())
        try:
            return await ours(signer)
        except ClientError as exc:
            # A HEAD's answer has no error document: its bare 403 may be a refused signature too.
            if error_code(exc) not in SIGNATURE_CODES and error_code(exc) != "403":
                raise
            # refused too: the credentials are wrong, not our signing; raised
            result = await botos(await self._client())
            if self.ours:
                self.ours = False
                log.warning("the store at %s refused a request signed by logship (%s) and took botocore's; "
                            "botocore sends this store's requests from now on (slower: please report it)",
                            self._endpoint or "AWS", error_code(exc))
            return result

    # --- the requests, each ours or botocore's ----------------------------------------------

    async def get(self, key: str, headers: dict[str, str], chunk: int = 0) -> aiohttp.ClientResponse:
        """A GET of an object (`headers`: its Range, if any), the answer's body unread (S3Http.get)."""
        async def ours(signer: Presigner) -> aiohttp.ClientResponse:
            url, signed = signer.request("GET", self.bucket, key, headers=headers)
            return await self.http.get(url, signed, chunk)

        async def botos(s3: Any) -> aiohttp.ClientResponse:
            # botocore's URL, our pool: its own GET would wrap the body in a reader of its own (s3http.py)
            url = await s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=PRESIGN_SECONDS)
            return await self.http.get(str(url), headers, chunk)

        return await self._call(ours, botos)

    async def put(self, key: str, body: bytes, md5: str | None, sha256: bytes | None = None) -> None:
        """A PUT; the server checks the body by `md5` (Content-MD5, base64) and/or `sha256` (its digest, sent as
        x-amz-checksum-sha256) where given."""
        extra = {"Content-MD5": md5} if md5 else {}
        if sha256 is not None:
            extra["x-amz-checksum-sha256"] = base64.b64encode(sha256).decode()

        async def ours(signer: Presigner) -> None:
            url, headers = signer.request("PUT", self.bucket, key, headers=extra or None)
            await _read(self.http, await self.http.send("put_object", "PUT", url, headers, body))

        async def botos(s3: Any) -> None:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body, **({"ContentMD5": md5} if md5 else {}),
                                **({"ChecksumSHA256": extra["x-amz-checksum-sha256"]} if sha256 is not None else {}))

        await self._call(ours, botos)

    async def ignores_sha256(self, key: str) -> bool:
        """Whether the server takes a body that does not match its x-amz-checksum-sha256 (rclone's gofakes3 does;
        AWS S3 and SeaweedFS refuse it, and a server that ignores the header would store a body cut short, which
        Content-MD5 prevents). Asked with a small object at `key`, deleted if taken. Any other refusal than a 400
        (a 501 of a server that does not know the header, credentials, a missing bucket) is no verdict: counted
        as ignored, so the PUT that asked goes with Content-MD5 as before (and meets the same refusal if it is
        the credentials')."""
        body = b"logship: does this server check x-amz-checksum-sha256?"
        try:
            await self.put(key, body, None, hashlib.sha256(b"not " + body).digest())
        except ClientError as exc:
            if http_status(exc) == 400:
                return False
            log.debug("the checksum probe %s was refused (%s): Content-MD5 it is", key, error_code(exc))
            return True
        await self._forget(key)
        return True

    async def _forget(self, key: str) -> None:
        try:
            await self.delete([key])
        except ClientError as exc:  # the verdict stands; a probe object left behind is harmless
            log.debug("could not delete the checksum probe %s: %s", key, exc)

    async def head(self, key: str) -> int:
        async def ours(signer: Presigner) -> int:
            url, headers = signer.request("HEAD", self.bucket, key)
            resp = await self.http.send("head_object", "HEAD", url, headers)
            resp.release()
            try:
                return int(resp.headers["Content-Length"])
            except (KeyError, ValueError):
                raise BadAnswer("a HEAD answer without a Content-Length") from None

        async def botos(s3: Any) -> int:
            return int((await s3.head_object(Bucket=self.bucket, Key=key))["ContentLength"])

        return await self._call(ours, botos)

    async def list_page(self, prefix: str, *, start_after: str = "", token: str = "", delimiter: str = "",
                        max_keys: int = 1000) -> Page:
        """One ListObjectsV2 request (full keys, as stored)."""
        async def ours(signer: Presigner) -> Page:
            # encoding-type=url: a key may hold characters XML 1.0 cannot carry; botocore asks it too.
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(max_keys)}
            query.update((name, value) for name, value in (("start-after", start_after), ("continuation-token", token),
                                                           ("delimiter", delimiter)) if value)
            url, headers = signer.request("GET", self.bucket, "", query)
            return parse_list(await _read(self.http, await self.http.send("list_objects_v2", "GET", url, headers)))

        async def botos(s3: Any) -> Page:
            extra = {name: value for name, value in (("StartAfter", start_after), ("ContinuationToken", token),
                                                     ("Delimiter", delimiter)) if value}
            return Page.of_botocore(await s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=max_keys,
                                                             **extra))

        return await self._call(ours, botos)

    async def delete(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """Delete up to 1,000 keys in one request; the errors S3 answers for some of them."""
        async def ours(signer: Presigner) -> list[dict[str, str]]:
            body = ('<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys)
                    + "<Quiet>true</Quiet></Delete>").encode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # S3 requires it for DeleteObjects
            url, headers = signer.request("POST", self.bucket, "", {"delete": ""}, {"Content-MD5": md5})
            root, ns = _root(await _read(self.http, await self.http.send("delete_objects", "POST", url, headers, body)))
            return [{"Key": e.findtext(f"{ns}Key") or "", "Code": e.findtext(f"{ns}Code") or "",
                     "Message": e.findtext(f"{ns}Message") or ""} for e in root.iterfind(f"{ns}Error")]

        async def botos(s3: Any) -> list[dict[str, str]]:
            resp = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys],
                                                                        "Quiet": True})
            return list(resp.get("Errors", ()))

        return await self._call(ours, botos)

    async def list_uploads(self, prefix: str, key_marker: str = "", upload_id_marker: str = "",
                           max_uploads: int = 1000) -> Uploads:
        """One ListMultipartUploads request: the uploads under `prefix` (full keys) after the markers."""
        async def ours(signer: Presigner) -> Uploads:
            query = {"uploads": "", "prefix": prefix, "max-uploads": str(max_uploads)}
            query.update((name, value) for name, value in (("key-marker", key_marker),
                                                           ("upload-id-marker", upload_id_marker)) if value)
            url, headers = signer.request("GET", self.bucket, "", query)
            answer = await _read(self.http, await self.http.send("list_multipart_uploads", "GET", url, headers))
            return parse_uploads(answer, prefix)

        async def botos(s3: Any) -> Uploads:
            extra = {name: value for name, value in (("KeyMarker", key_marker), ("UploadIdMarker", upload_id_marker))
                     if value}
            return Uploads.of_botocore(await s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix,
                                                                       MaxUploads=max_uploads, **extra))

        return await self._call(ours, botos)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; a gone upload is S3's NoSuchUpload (ClientError), for the caller."""
        async def ours(signer: Presigner) -> None:
            url, headers = signer.request("DELETE", self.bucket, key, {"uploadId": upload_id})
            await _read(self.http, await self.http.send("abort_multipart_upload", "DELETE", url, headers))

        async def botos(s3: Any) -> None:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

        await self._call(ours, botos)


def parse_uploads(body: bytes, prefix: str) -> Uploads:
    """A ListMultipartUploadsResult: each upload must have a key under `prefix` (a server that ignored it
    would have us abort other writers' uploads) and an id; a truncated one must say where to go on from."""
    root, ns = _root(body)
    if root.tag != f"{ns}ListMultipartUploadsResult":
        raise BadAnswer(f"a {root.tag[len(ns):]!r} document for a list of multipart uploads")
    decode = _unquote if root.findtext(f"{ns}EncodingType") == "url" else str
    out = Uploads()
    for u in root.iterfind(f"{ns}Upload"):
        key, upload_id = u.findtext(f"{ns}Key"), u.findtext(f"{ns}UploadId")
        if not key or not upload_id:
            raise BadAnswer("a multipart upload without a key or an id")
        if not (key := decode(key)).startswith(prefix):
            raise BadAnswer(f"a multipart upload of {key!r}, not under the prefix {prefix!r} asked for")
        out.uploads.append((key, upload_id))
    if root.findtext(f"{ns}IsTruncated") == "true":
        out.next = (decode(root.findtext(f"{ns}NextKeyMarker") or ""), root.findtext(f"{ns}NextUploadIdMarker") or "")
        if out.next == ("", ""):  # SeaweedFS sends only NextUploadIdMarker (botocore's paginator goes on from it)
            raise BadAnswer("a truncated list of multipart uploads without a marker to go on from")
    return out


def parse_list(body: bytes) -> Page:
    """A ListBucketResult, its keys and prefixes decoded when it says they are URL-encoded."""
    root, ns = _root(body)
    decode = _unquote if root.findtext(f"{ns}EncodingType") == "url" else str
    page = Page()
    key_tag, size_tag, etag_tag = f"{ns}Key", f"{ns}Size", f"{ns}ETag"
    try:
        for c in root.iterfind(f"{ns}Contents"):
            key = size = None
            etag = ""
            for e in c:  # one pass over the children: ≈ 3× faster than findtext for each
                if e.tag == key_tag:
                    key = e.text
                elif e.tag == size_tag:
                    size = int(e.text or "")
                elif e.tag == etag_tag:
                    etag = e.text or ""
            if not key or size is None or size < 0:
                raise BadAnswer("a listed object without a key or a size")
            page.objects.append((decode(key), size, etag))
    except ValueError:
        raise BadAnswer("a listed object's size is not a number") from None
    for p in root.iterfind(f"{ns}CommonPrefixes"):
        if not (name := p.findtext(f"{ns}Prefix")):
            raise BadAnswer("a common prefix without a name")
        page.prefixes.append(decode(name))
    if root.findtext(f"{ns}IsTruncated") == "true":
        page.token = root.findtext(f"{ns}NextContinuationToken") or ""
        if not page.token:
            raise BadAnswer("a truncated listing without a continuation token")
    return page


def _unquote(text: str) -> str:
    """unquote_plus, as botocore decodes (S3 encodes a space as "+"), skipped when there is nothing to
    decode: it costs ≈ 3 µs a key, as much as parsing the XML of a page of 1,000."""
    return urllib.parse.unquote_plus(text) if "%" in text or "+" in text else text


def _root(body: bytes) -> tuple[ET.Element, str]:
    """The document's root and its namespace as a tag prefix ("" for servers that send none)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadAnswer(f"an answer that is not XML ({exc})") from None
    return root, root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""


async def _read(http: S3Http, resp: aiohttp.ClientResponse) -> bytes:
    """The whole answer, at most ANSWER_MAX bytes; the connection goes back to the pool."""
    protocol = http.protocol(resp)
    try:
        if (resp.content_length or 0) > ANSWER_MAX:
            raise BadAnswer(f"an answer of {resp.content_length} bytes")
        body = bytearray()
        while chunk := await resp.content.read(ANSWER_MAX + 1 - len(body)):
            body += chunk
            if len(body) > ANSWER_MAX:
                raise BadAnswer(f"an answer over {ANSWER_MAX} bytes")
        return bytes(body)
    finally:
        http.finished(resp, protocol)
