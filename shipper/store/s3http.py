"""The S3 store's one HTTP client: signed requests (sigv4.py) over a plain aiohttp pool, retried and
counted in one place. GETs of object bodies, PUTs, HEADs, LISTs, DeleteObjects and the listing and abort of
multipart uploads all go through it; botocore keeps only multipart uploads themselves (over 16 MiB) and the
credential chain (s3.py).

botocore spends ≈ 2 ms of event-loop CPU on every request (parameter validation, the event hooks, the
endpoint ruleset, the User-Agent, signing, response parsing) and then wraps a body in a reader of its
own; a 2 GiB download through the API is ≈ 130 GETs of 16 MiB segments, a running log's checkpoint one
PUT every 5 s, a catalog rebuild a LIST page per 1,000 logs: that work was most of their CPU
(bench/README.md, docs/checkpoints.md §12).

Errors stay raw here (aiohttp's, or botocore's ClientError built from the S3 error document) so that
s3.py translates reads and writes in one place.
"""

from __future__ import annotations

import asyncio
import functools
import random
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping

import aiohttp
import yarl
from aiohttp.client_proto import ResponseHandler
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from .base import StoreStats

_RETRY_STATUS = {429, 500, 502, 503, 504}
_ERROR_BODY_MAX = 64 << 10  # an S3 error document is a few hundred bytes
# aiohttp sends a GET, HEAD, PUT or DELETE once more itself when the connection breaks before the answer
# (a keep-alive connection the server had closed); a POST (DeleteObjects, which is idempotent) it does not.
_RESEND_BROKEN = {"POST"}
_WITH_BODY = {"PUT", "POST"}  # an empty body is still sent as one, with Content-Length: 0
# asyncio reads a socket 256 KiB per recv() (its transports' `max_size`), so a passthrough download went
# through the whole chain (parser, reader, checks, the client's write) once per 256 KiB. A GET whose body
# is read in pieces of `chunk` bytes receives `chunk` per recv() (within RECV_MIN..RECV_MAX): 1 MiB pieces
# (zstd passed through) mean a quarter of the syscalls and wake-ups (bench/README.md, "download"). What is
# received and not read yet waits in the answer's buffer: aiohttp stops reading the socket once it holds
# more than 2 x HELD, so at most about one recv() more (the rest waits in the kernel's socket buffer, which
# is not the API's memory). With the default (2 x 256 KiB, and a recv() beyond) a download decompressed on
# the fly, slower than the store sends, kept ≈ 0.7 MB there per answer (bench/README.md, "memory"). Passed
# through (pieces of RECV_MAX), the small buffer paused the socket at every recv(): 0.79 of a plain GET's speed
# against 0.87 with the default, in the same hour's quiet bench runs; such a download is not slower than the
# store, so it keeps the default. Other GETs (whole small objects) keep the defaults too.
RECV_MIN, RECV_MAX, RECV_DEFAULT, HELD = 64 << 10, 1 << 20, 256 << 10, 64 << 10
# The S3 operation of each metrics name, for the ClientError that s3errors.py reads.
_OPERATION = {"get_object": "GetObject", "put_object": "PutObject", "head_object": "HeadObject",
              "list_objects_v2": "ListObjectsV2", "delete_objects": "DeleteObjects",
              "list_multipart_uploads": "ListMultipartUploads", "abort_multipart_upload": "AbortMultipartUpload"}


class S3Http:
    """One connection pool for the store's requests, created on first use (it needs a running loop)."""

    def __init__(self, *, stats: StoreStats, connect_timeout: float, read_timeout: float, attempts: int, pool: int,
                 read_bufsize: int) -> None:
        self._stats = stats
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._attempts = attempts
        self._pool = pool
        self._bufsize = read_bufsize
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool),
                timeout=self._timeout,
                # The bytes are the object's, exactly: never decode a Content-Encoding a writer set.
                auto_decompress=False,
                # Bigger pieces than aiohttp's 64 KiB: fewer trips through the API's copy loop.
                read_bufsize=self._bufsize,
                # With trust_env aiohttp looks up the proxy variables and ~/.netrc on every request, which
                # cost a quarter of a zstd download's speed (bench/README.md): the proxy is found once, below.
                trust_env=False,
            )
        return self._session

    async def get(self, url: str, headers: Mapping[str, str], chunk: int = 0) -> aiohttp.ClientResponse:
        """The response of a successful GET of a presigned URL, its body unread; the caller releases it.
        A body read in pieces of `chunk` bytes (0: read whole) is received in recv() calls of about that size,
        and little more than one is buffered unread."""
        recv = min(max(chunk, RECV_MIN), RECV_MAX) if chunk else RECV_DEFAULT
        resp = await self.send("get_object", "GET", url, headers, read_bufsize=HELD if 0 < chunk < RECV_MAX else None)
        transport = resp.connection.transport if resp.connection is not None else None
        if transport is not None and getattr(transport, "max_size", recv) != recv:
            transport.max_size = recv  # type: ignore[attr-defined]  # a pooled connection keeps it: set per answer
        return resp

    @staticmethod
    def protocol(resp: aiohttp.ClientResponse) -> ResponseHandler | None:
        """The connection an answer came on; taken before its body is read (aiohttp lets go of it at the body's
        end), for `finished`."""
        return resp.connection.protocol if resp.connection is not None else None

    def finished(self, resp: aiohttp.ClientResponse, protocol: ResponseHandler | None) -> None:
        """An answer read (or given up): its connection back to the pool, or closed if the body was not read
        to its end, and no read timer left running on it once it is idle.

        aiohttp 3.14 re-arms `sock_read` when a drained answer resumes reading a socket it had paused, also
        after the connection went back to the pool at the body's end (aio-libs/aiohttp#12953, fixed in 3.14.5
        only for a socket never paused). The timer then fires in the pool and the next request on that
        connection fails at once with a read timeout: the API's first download after a few idle seconds failed
        with "cannot reach the store" (tests/test_download_tuning.py).
        """
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()
        connector = self._session.connector if self._session is not None else None
        if (protocol is not None and connector is not None and protocol not in connector._acquired
                and protocol.is_connected()):  # idle in the pool: no read of ours is in flight on it
            protocol._drop_timeout()

    async def send(self, op: str, method: str, url: str, headers: Mapping[str, str],
                   body: bytes = b"", read_bufsize: int | None = None) -> aiohttp.ClientResponse:
        """The response of a successful request (status < 300), its body unread; the caller releases it.
        `url` is sent as it is (signed so); `op` names it in StoreStats, with the body's bytes; `read_bufsize`
        sizes the answer's buffer (None: the session's).

        Raises ClientError for an S3 error answer, after `attempts` tries when it is a transient one
        (5xx, 429), and aiohttp/OS errors for a failed connection. aiohttp itself sends an idempotent
        request once more when its connection breaks before the answer, so that is not retried here again
        (but for a POST): an outage reaches the caller's own loop at once.
        """
        target = yarl.URL(url, encoded=True)
        proxy = _env_proxy(url)
        for attempt in range(1, self._attempts + 1):
            self._stats.count(op, len(body))
            try:
                # No Content-Type of aiohttp's own on a body: botocore sends none, and S3 keeps what it is given.
                resp = await self._http().request(method, target, headers=headers, proxy=proxy,
                                                  data=body if method in _WITH_BODY else None,
                                                  skip_auto_headers=("Content-Type",), read_bufsize=read_bufsize)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if attempt == self._attempts or method not in _RESEND_BROKEN:
                    raise
                continue
            if resp.status < 300:
                return resp
            try:
                error = await _client_error(resp, _OPERATION.get(op, op))
            finally:
                resp.release()
            if attempt == self._attempts or resp.status not in _RETRY_STATUS:
                raise error
            await asyncio.sleep(random.uniform(0.05, 0.25))  # jitter, as botocore's standard mode
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _env_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY / NO_PROXY give for the store's host, as botocore uses it for multipart."""
    parts = urllib.parse.urlsplit(url)
    return _proxy_for(parts.scheme, parts.netloc)


@functools.cache
def _proxy_for(scheme: str, netloc: str) -> str | None:
    if urllib.request.proxy_bypass(netloc):
        return None
    return urllib.request.getproxies_environment().get(scheme)


async def _client_error(resp: aiohttp.ClientResponse, operation: str) -> ClientError:
    """The S3 error document (<Error><Code>…<Message>…) as botocore would have raised it."""
    try:
        body = await resp.content.read(_ERROR_BODY_MAX)
    except (TimeoutError, aiohttp.ClientError, OSError):
        body = b""
    code, message = str(resp.status), resp.reason or ""
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        root = None  # not S3's answer (a proxy's page, say): the status says enough
    if root is not None:
        code = root.findtext("Code") or code
        message = root.findtext("Message") or message
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": resp.status}}, operation)
