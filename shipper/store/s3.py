"""The S3 store (`s3://bucket/prefix`, any S3-compatible server).

Requests are header-signed here (sigv4.py: GET, PUT, HEAD, LIST, DeleteObjects, and listing and aborting
multipart uploads) and sent over one aiohttp pool (s3http.py, s3ops.py). botocore's client is created only
when needed: for multipart uploads (s3write.py), for credentials that are not static (its chain: profiles,
SSO, instance roles, ...), and for every request once a server refused our signature. Errors of both become
ObjectNotFound / StoreUnavailable / StoreError (s3errors.py).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
from collections.abc import AsyncGenerator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from ..errors import ConfigError, ObjectNotFound, StoreError
from . import s3errors, s3write
from .base import ObjectInfo, StoreStats
from .keys import CHECKSUM_PROBE_KEY, check_dir_prefix, check_key
from .s3checksum import Checksums
from .s3http import S3Http
from .s3ops import Page, S3Ops
from .sigv4 import Presigner

if TYPE_CHECKING:
    from ..config import StoreConfig

MiB = 1 << 20
SINGLE_PUT_MAX = 16 * MiB  # above this, multipart
DELETE_BATCH = 1000  # S3's limit for DeleteObjects
UPLOADS_PAGE = 1000  # multipart uploads a listing page asks for (S3's most); tests page through fewer
CONNECT_TIMEOUT = 3.0
# How long the server may stay silent once a request is sent (aiohttp starts this clock after the
# body is written and stops it while our reader is paused). SeaweedFS answers a stored 8 MiB part
# in ≈ 60 ms; a frozen server costs 2 attempts x this before the caller sees StoreUnavailable.
READ_TIMEOUT = 5.0
ATTEMPTS = 2  # per request, by the SDK (see _client_config)
MAX_POOL_CONNECTIONS = 32
READ_BUFSIZE = 256 << 10  # per response; aiohttp pauses the socket at twice this, unread
# GETs in flight: an API reader holds two (its part and the next one, requested early), so this is
# room for 64 concurrent downloads before a new one waits for a connection.
READ_POOL = 128


def _client_config(read_timeout: float, attempts: int) -> AioConfig:
    return AioConfig(
        # DESIGN §7: botocore's default flexible checksums cost ≈ 20% on PUT and ≈ 40% on GET;
        # the manifest carries our own checksum of every segment.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # path style: SeaweedFS, MinIO and Ceph behind a plain host:port. No payload signing: over plain
        # http botocore would sha256 every body on the event loop (~9% of the watcher's CPU); the
        # manifest's sha256 is the integrity check, and over https the body is unsigned anyway.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        signature_version="s3v4",
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        # One quick SDK retry smooths a dropped keep-alive connection; the watcher's own loop
        # (backoff up to a cap, rate-limited logging) handles outages of any length above us,
        # so the SDK must not sit in long backoffs of its own. (botocore's "max_attempts" counts
        # retries, not attempts: 2 would mean 3 requests.)
        retries={"mode": "standard", "total_max_attempts": attempts},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # Load botocore's service model in a thread, not on the event loop.
        warm_up_loader_caches=True,
    )


class S3Store:
    """A bucket and an optional key prefix. The client is created on first use and closed by close()."""

    def __init__(self, cfg: StoreConfig, *, read_timeout: float = READ_TIMEOUT, attempts: int = ATTEMPTS) -> None:
        """`read_timeout` and `attempts` are for probes (s3local's readiness check), not for config."""
        self.url = cfg.url
        self.bucket, prefix = _parse_url(cfg.url)
        self.root = f"{prefix}/" if prefix else ""  # prepended to every key
        self.endpoint = _parse_endpoint(cfg.endpoint)
        self.region = cfg.region
        self._access_key = cfg.access_key or None  # None: botocore's chain (AWS_* variables, profiles, ...)
        self._secret_key = cfg.secret_key or None
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._aborts: set[asyncio.Task[None]] = set()  # multipart aborts that outlive a cancelled put
        self._config = _client_config(read_timeout, attempts)
        self.stats = StoreStats()
        self._reader = S3Http(stats=self.stats, connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout,
                              attempts=attempts, pool=READ_POOL, read_bufsize=READ_BUFSIZE)
        self._ops = S3Ops(self._reader, self.bucket, self._s3, self.endpoint,
                          _static_signer(self.endpoint, self.region, self._access_key, self._secret_key))
        self._checksums = Checksums(self._ops, self.root + CHECKSUM_PROBE_KEY, self.endpoint)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = contextlib.AsyncExitStack()
                    session = get_session()
                    # A LIST answer has a LastModified per key, which botocore parses with dateutil: most of the
                    # CPU of a LIST of 1,000 keys (docs/catalog.md, rebuild). Nothing here reads a timestamp, so
                    # they stay strings (as awscli's `cli_timestamp_format = none` does).
                    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
                    with self._errors("connect to", ""):
                        self._client = await stack.enter_async_context(session.create_client(
                            "s3", region_name=self.region, endpoint_url=self.endpoint,
                            aws_access_key_id=self._access_key, aws_secret_access_key=self._secret_key,
                            config=self._config,
                        ))
                    # Counted as each request leaves, so the SDK's retries and every listing page count.
                    self._client.meta.events.register("before-send.s3", self._count)
                    self._stack = stack
        return self._client

    def _count(self, request: Any, event_name: str = "", **_: Any) -> None:
        """botocore's before-send hook; returns None, or botocore would take the value for the answer."""
        op = _snake(event_name.rpartition(".")[2]) or "unknown"
        try:
            sent = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            sent = 0
        self.stats.count(op, sent)

    async def close(self) -> None:
        if self._aborts:
            await asyncio.gather(*self._aborts, return_exceptions=True)
        await self._reader.close()
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    def _key(self, key: str) -> str:
        return self.root + check_key(key)

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    # --- writing -----------------------------------------------------------------------

    async def put(self, key: str, data: bytes | memoryview, *, checked: bool = False,
                  sha256: bytes | None = None) -> None:
        full = self._key(key)
        view = memoryview(data).cast("B")
        if len(view) <= SINGLE_PUT_MAX or checked:
            await self._put_object(full, data if isinstance(data, bytes) else view.tobytes(), checked, sha256)
            return

        async def read(offset: int, n: int) -> bytes:
            return view[offset:offset + n].tobytes()  # botocore takes bytes, not memoryviews

        await s3write.put_multipart(self, full, len(view), read)

    async def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            _local_error(exc, path)
        try:
            size = (await asyncio.to_thread(os.fstat, fd)).st_size

            async def read(offset: int, n: int) -> bytes:
                try:
                    data = await asyncio.to_thread(_pread_exact, fd, n, offset)
                except OSError as exc:
                    _local_error(exc, path)
                if len(data) != n:
                    raise StoreError(f"{path} shrank while being uploaded to {self._where(full)}",
                                     "upload only sealed files, which never change")
                return data

            if size <= SINGLE_PUT_MAX:
                await self._put_object(full, await read(0, size))
            else:
                await s3write.put_multipart(self, full, size, read)
        finally:
            os.close(fd)  # closing a read-only descriptor does not wait on the disk

    async def _put_object(self, full: str, data: bytes, checked: bool = False, sha256: bytes | None = None) -> None:
        with self._errors("put", full):
            await self._checksums.put(full, data, checked, sha256)

    # --- reading -----------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) like a Python slice: a range past the end is short or empty."""
        full = self._key(key)
        _check_range(start, end)
        if end is not None and end <= start:
            await self.head(key)  # an empty range of a missing object is still "not found"
            return b""
        resp = await self._get(full, start, end)
        if resp is None:
            return b""
        protocol = S3Http.protocol(resp)
        try:
            with self._errors("get", full):
                data = await resp.read()
        finally:
            self._reader.finished(resp, protocol)
        self.stats.bytes_received += len(data)
        return data

    async def open(
        self, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        """Stream [start, end) in pieces of at most `chunk` bytes, as they arrive.

        The request is sent on the first iteration; the connection is released when the
        iterator finishes or is closed (use `contextlib.aclosing` when stopping early)."""
        full = self._key(key)
        _check_range(start, end)
        if end is not None and end <= start:
            await self.head(key)
            return
        resp = await self._get(full, start, end, chunk)
        if resp is None:
            return
        protocol = S3Http.protocol(resp)
        try:
            while True:
                with self._errors("read", full):
                    # A received piece as aiohttp holds it (S3Http.get sizes them to `chunk`): read(n) joined
                    # the tail of one piece and the head of the next into n bytes, a copy of every byte.
                    data, http_chunk_end = await resp.content.readchunk()
                if not data:
                    if http_chunk_end:
                        continue  # the end of one chunk of a chunked answer, not of the body
                    return
                self.stats.bytes_received += len(data)
                if len(data) <= chunk:
                    yield data
                else:  # a chunked answer's pieces, or a smaller chunk than S3Http receives
                    for i in range(0, len(data), chunk):
                        yield data[i:i + chunk]
        finally:
            # Sync: finally blocks of async generators may run during loop shutdown.
            self._reader.finished(resp, protocol)

    async def _get(self, full: str, start: int, end: int | None, chunk: int = 0) -> aiohttp.ClientResponse | None:
        """The answer to a GET of [start, end), body unread (read in pieces of up to `chunk`: S3Http.get);
        None when the range starts past the end."""
        try:
            with self._errors("get", full):
                return await self._ops.get(full, _range(start, end), chunk)
        except s3errors.RangeNotSatisfiable:
            return None

    async def head(self, key: str) -> ObjectInfo:
        full = self._key(key)
        with self._errors("head", full):
            return ObjectInfo(key, await self._ops.head(full))

    async def _pages(self, prefix: str, delimiter: str = "") -> AsyncGenerator[Page, None]:
        """Every page of a listing, by continuation token."""
        token = ""
        while True:
            page = await self._ops.list_page(prefix, token=token, delimiter=delimiter)
            yield page
            if not page.token:
                return
            if page.token == token:  # as botocore's paginator: a server that would loop forever
                raise s3errors.BadAnswer("the same continuation token twice")
            token = page.token

    async def list(self, prefix: str) -> list[ObjectInfo]:
        full = self.root + check_key(prefix, prefix=True)
        out: list[ObjectInfo] = []
        with self._errors("list", full):
            async for page in self._pages(full):
                # directory markers some servers show are not objects
                out += [ObjectInfo(k[len(self.root):], size, etag) for k, size, etag in page.objects
                        if not k.endswith("/")]
        out.sort(key=lambda o: o.key)  # S3 lists in UTF-8 order already; not every clone does
        return out

    async def list_page(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> builtins.list[ObjectInfo]:
        full = self.root + check_key(prefix, prefix=True)
        with self._errors("list", full):
            page = await self._ops.list_page(full, start_after=self.root + start_after if start_after else "",
                                             max_keys=max(1, min(max_keys, 1000)))
        out = [ObjectInfo(k[len(self.root):], size, etag) for k, size, etag in page.objects if not k.endswith("/")]
        out.sort(key=lambda o: o.key)
        return out

    async def list_dirs(self, prefix: str) -> builtins.list[str]:
        full = self.root + check_dir_prefix(prefix)
        out: builtins.list[str] = []
        with self._errors("list", full):
            async for page in self._pages(full, "/"):
                out += [name for p in page.prefixes if (name := p[len(full):-1])]
        return sorted(out)

    # --- removing ----------------------------------------------------------------------

    async def delete(self, keys: Iterable[str]) -> None:
        full = [self._key(k) for k in keys]
        for i in range(0, len(full), DELETE_BATCH):
            batch = full[i:i + DELETE_BATCH]
            with self._errors("delete", batch[0] if len(batch) == 1 else f"{batch[0]} (+{len(batch) - 1} more)"):
                errors = [e for e in await self._ops.delete(batch) if e.get("Code") != "NoSuchKey"]
            if errors:
                e = errors[0]
                raise s3errors.translate(ClientError({"Error": e, "ResponseMetadata": {}}, "DeleteObjects"),
                                         "delete", self._where(e.get("Key", "")), self.endpoint, self.bucket)

    async def abort_uploads(self, prefix: str) -> int:
        full = self.root + check_key(prefix, prefix=True)
        uploads: list[tuple[str, str]] = []
        markers = ("", "")
        with self._errors("list multipart uploads under", full):
            try:
                while True:
                    page = await self._ops.list_uploads(full, *markers, UPLOADS_PAGE)
                    uploads += page.uploads
                    if page.next is None:
                        break
                    if page.next == markers:  # as botocore's paginator: a server that would loop forever
                        raise s3errors.BadAnswer("the same markers of multipart uploads twice")
                    markers = page.next
            except ClientError as exc:
                # `rclone serve s3` (gofakes3) answers NoSuchUpload for a bucket that never had an upload: none.
                if s3errors.error_code(exc) != "NoSuchUpload":
                    raise
        for k, upload_id in uploads:
            with contextlib.suppress(ObjectNotFound), self._errors("abort the multipart upload of", k):
                await self._ops.abort_upload(k, upload_id)  # NoSuchUpload: aborted or completed meanwhile
        return len(uploads)

    # --- errors ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, op: str, full_key: str) -> Iterator[None]:
        """Translate botocore and aiohttp errors into the project's own, raised `from` the original."""
        try:
            yield
        except ClientError as exc:
            if s3errors.error_code(exc) == "InvalidRange" or s3errors.http_status(exc) == 416:
                raise s3errors.RangeNotSatisfiable() from exc
            raise s3errors.translate(exc, op, self._where(full_key), self.endpoint, self.bucket) from exc
        # OSError: TimeoutError, ConnectionError
        except (BotoCoreError, aiohttp.ClientError, OSError, s3errors.BadAnswer) as exc:
            raise s3errors.translate(exc, op, self._where(full_key), self.endpoint, self.bucket) from exc


def _static_signer(endpoint: str | None, region: str, access_key: str | None,
                   secret_key: str | None) -> Presigner | None:
    """The signer of the keys botocore's chain would find first when they are static: the config's, else
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN] (its first provider, which even
    AWS_PROFILE does not override). None, botocore's client then, for anything else: a credential file, a
    process, SSO, an instance role, keys that expire, or AWS's own endpoints (which botocore's rules pick)."""
    if not endpoint or not region:
        return None
    if access_key or secret_key:
        # one of the two alone is botocore's PartialCredentialsError, translated with its hint
        return Presigner(endpoint, region, access_key, secret_key) if access_key and secret_key else None
    env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not env_key or not env_secret or os.environ.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    token = os.environ.get("AWS_SECURITY_TOKEN") or os.environ.get("AWS_SESSION_TOKEN") or None  # botocore's order
    return Presigner(endpoint, region, env_key, env_secret, token)


def _parse_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://"):] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket or "?" in url or "#" in url:
        raise ConfigError(f"store.url = {url!r} is not s3://BUCKET[/PREFIX]",
                          "give the bucket (and an optional prefix) in store.url and the server in store.endpoint")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return bucket, prefix


def _parse_endpoint(endpoint: str) -> str | None:
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"store.endpoint = {endpoint!r} is not a URL", "write it like http://127.0.0.1:8333")
    return endpoint.rstrip("/")


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"byte range [{start}, {end}) has a negative bound")


def _range(start: int, end: int | None) -> dict[str, str]:
    if start == 0 and end is None:
        return {}
    return {"Range": f"bytes={start}-{'' if end is None else end - 1}"}


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    """os.pread until n bytes or the end of the file."""
    data = os.pread(fd, n, offset)
    if len(data) in (0, n):
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := os.pread(fd, n - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _local_error(exc: OSError, path: Path) -> NoReturn:
    raise StoreError(f"cannot read {path}: {exc.strerror or exc}",
                     "check that the local file exists and is readable") from exc


def _snake(name: str) -> str:
    """PutObject -> put_object, ListObjectsV2 -> list_objects_v2: the S3 operation as the metrics name it."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
