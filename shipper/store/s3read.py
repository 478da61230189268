"""GETs of presigned URLs over a plain aiohttp session: the S3 store's read path.

botocore spends ≈ 2 ms of event-loop CPU on every request (parameter validation, the event hooks,
signing, response parsing) and then wraps the body in a reader of its own; a 2 GiB download through
the API is ≈ 130 GETs of 16 MiB segments, and that work was half of the API's CPU (bench/README.md).
Presigning is the only part of it a GET needs (≈ 0.2 ms, with botocore's credential chain and
refresh), so s3.py presigns and this module sends the request and hands the body over as it arrives.

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
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from .base import StoreStats

_RETRY_STATUS = {429, 500, 502, 503, 504}
_ERROR_BODY_MAX = 64 << 10  # an S3 error document is a few hundred bytes


class PresignedReader:
    """One connection pool for the store's GETs, created on first use (it needs a running loop)."""

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

    async def get(self, url: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """The response of a successful GET, its body unread; the caller releases or closes it.

        Raises ClientError for an S3 error answer, after `attempts` tries when it is a transient one
        (5xx, 429), and aiohttp/OS errors for a failed connection. aiohttp itself sends a GET once
        more when its connection breaks before the answer (a keep-alive connection the server had
        closed), so that is not retried here again: an outage reaches the caller's own loop at once.
        """
        proxy = _env_proxy(url)
        for attempt in range(1, self._attempts + 1):
            self._stats.count("get_object")
            resp = await self._http().get(url, headers=headers, proxy=proxy)
            if resp.status < 300:
                return resp
            try:
                error = await _client_error(resp)
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
    """The proxy HTTP(S)_PROXY / NO_PROXY give for the store's host, as botocore uses it for the rest."""
    parts = urllib.parse.urlsplit(url)
    return _proxy_for(parts.scheme, parts.netloc)


@functools.cache
def _proxy_for(scheme: str, netloc: str) -> str | None:
    if urllib.request.proxy_bypass(netloc):
        return None
    return urllib.request.getproxies_environment().get(scheme)


async def _client_error(resp: aiohttp.ClientResponse) -> ClientError:
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
                        "ResponseMetadata": {"HTTPStatusCode": resp.status}}, "GetObject")
