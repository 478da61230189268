"""The CLI's HTTP client of a running `logship serve`, and the commands that use it: `logship tail`
(shipper/commands/tail.py) and `logship download` (shipper/commands/download.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from shipper.config import Config
from shipper.errors import LogshipError
from shipper.format import names

API_PREFIX = "/api/v1"
TOKEN_ENV = "LOGSHIP_TOKEN"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # a silent socket this long is dropped; followers and downloads then resume

# `bytes FIRST-LAST/SIZE`; LAST may be -1: the API answers a suffix Range on an empty log with `0--1`
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(-?\d+)/(\d+|\*)")


class ApiError(LogshipError):
    """The API answered with an error status; `detail` and `hint` come from its JSON body."""

    code = "api_error"

    def __init__(self, detail: str, hint: str = "", status: int = 0, body: dict[str, Any] | None = None) -> None:
        super().__init__(detail, hint)
        self.status = status
        self.body = body or {}  # the API's JSON error, e.g. `error`, and `missing` for bytes_missing

    @property
    def missing(self) -> list[tuple[int, int]]:
        """The [from, to) ranges a 416 bytes_missing names: bytes the log does not hold."""
        if self.body.get("error") != "bytes_missing":
            return []
        try:
            return [(int(a), int(b)) for a, b in self.body.get("missing") or [] if 0 <= int(a) < int(b)]
        except (TypeError, ValueError):
            return []


class ApiUnreachable(LogshipError):
    code = "api_unreachable"


# --- the connection ------------------------------------------------------------------------------


def base_url(cfg: Config, url: str | None) -> str:
    """The API's base URL: --url, else http://<api.listen> (a wildcard address means this machine)."""
    if url:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
            raise LogshipError(f"--url {url!r} is not an http(s) URL", "e.g. --url http://127.0.0.1:8080")
        return url.rstrip("/")
    host, port = cfg.api.listen.rsplit(":", 1)
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def token_for(cfg: Config) -> str | None:
    return os.environ.get(TOKEN_ENV) or (cfg.api.tokens[0] if cfg.api.tokens else None)


class Client:
    """One aiohttp session against one API; requests fail with ApiError / ApiUnreachable."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self.answered = False  # a request got an answer other than an error

    async def __aenter__(self) -> Client:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # No compression: the bytes on the wire are the log's bytes, and Range offsets are theirs.
        headers["Accept-Encoding"] = "identity"
        self._session = aiohttp.ClientSession(timeout=timeout, headers=headers, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def log_url(self, task: str, host: str) -> str:
        return f"{self.base}{API_PREFIX}/tasks/{task}/hosts/{host}/log"

    @contextlib.asynccontextmanager
    async def get(self, url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                  ok: tuple[int, ...] = (200, 206)) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`; a status outside `ok` raises ApiError, no answer at all raises ApiUnreachable."""
        assert self._session is not None
        try:
            resp = await self._session.get(url, params=params, headers=headers)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise ApiUnreachable(f"cannot reach the API at {self.base}: {reason(exc)}",
                                 f"is `logship serve` running at {self.base}? (api.listen in the config, "
                                 "or pass --url)") from exc
        async with resp:
            if resp.status not in ok:
                raise await self.error(resp)
            self.answered = True
            yield resp

    async def error(self, resp: aiohttp.ClientResponse) -> ApiError:
        """The API's error answer as an ApiError (its JSON's detail and hint, the status, the body)."""
        code, detail, hint = "", "", ""
        body: Any = None
        try:
            body = await resp.json(content_type=None)
            if isinstance(body, dict):
                code, detail, hint = (str(body.get(k) or "") for k in ("error", "detail", "hint"))
        except (ValueError, aiohttp.ClientError):
            pass
        if not detail:  # not our API's JSON: a proxy in between, or another server on that port
            detail = f"{resp.reason or 'error'}"
        if resp.status == 401:
            hint = f"set ${TOKEN_ENV} (or api.tokens in the config) to a token of that API"
        where = f"HTTP {resp.status}{' ' + code if code else ''} from {self.base}"
        return ApiError(f"{detail} ({where})", hint, resp.status, body if isinstance(body, dict) else None)


def reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):  # "Connection refused", not "Connect call failed (…)"
        errno = exc.os_error.errno
        return os.strerror(errno) if errno else str(exc.os_error)
    return str(exc) or type(exc).__name__


def run_of(etag: str | None) -> str | None:
    """The run id in the API's ETag `"<run_id>-<size>"`: a change means another run of the log."""
    return etag.strip().strip('"').rpartition("-")[0] if etag else None


# --- the commands --------------------------------------------------------------------------------


def main(cfg: Config, args: Any) -> int:
    """`logship tail` and `logship download`."""
    from shipper.agent import default_host

    from .download import Progress, download
    from .tail import DEFAULT_LINES, tail

    task = names.check_id("task", args.task)
    asked = names.check_id("host", args.host) if args.host else None
    client = Client(base_url(cfg, args.url), token_for(cfg))
    path = Path(args.output) if args.cmd == "download" else None
    if path is not None and path.is_dir():
        raise LogshipError(f"-o {args.output} is a directory", "give a file name, e.g. -o ./task.log")

    async def work(c: Client, host: str) -> int:
        if args.cmd == "tail":
            return await tail(c, task, host, follow=args.follow, start=args.start,
                              lines=DEFAULT_LINES if args.lines is None else args.lines, out=sys.stdout.buffer)
        assert path is not None
        return await download(c, task, host, path, Progress(f"{task}/{host}", sys.stderr, sys.stderr.isatty()))

    command = (f"logship tail {'-f ' if args.follow else ''}{task}" if path is None
               else f"logship download {task} -o {shlex.quote(args.output)}")
    return asyncio.run(_with(client, lambda c: _on_host(c, command, task, asked, asked or default_host(), work)))


async def _on_host(c: Client, command: str, task: str, asked: str | None, tried: str,
                   work: Callable[[Client, str], Awaitable[int]]) -> int:
    """`work` on the log of `tried` (--host, else this machine's name); when the API has no such log, on the
    task's only host if --host was not given, else the error naming the hosts the task has logs on."""
    from .hosts import pick

    try:
        return await work(c, tried)
    except ApiError as exc:
        if exc.status != 404 or c.answered:  # answered: the log went away while it was read (gc)
            raise
        try:
            hosts = await task_hosts(c, task)
        except ApiError:
            raise exc from None  # not a logship API that lists tasks: its own answer says more
    host = pick(command, task, asked, tried, hosts, 0, f" at {c.base}",
                "check the task id (ids are case-sensitive), and that the API reads the store (or the spool) "
                "the task's logs are in (--url)")
    return await work(c, host)


async def task_hosts(c: Client, task: str) -> list[str]:
    """The hosts the API lists logs of `task` on (its store and its spool): GET /api/v1/tasks?task=."""
    async with c.get(f"{c.base}{API_PREFIX}/tasks", params={"task": task, "limit": "1000"}, ok=(200,)) as resp:
        try:
            rows = (await resp.json(content_type=None))["logs"]
            return sorted({r["host"] for r in rows if isinstance(r, dict) and names.ID_RE.fullmatch(r["host"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError("the API's task listing is not logship's", "is --url the logship API?") from exc


async def _with(client: Client, work: Callable[[Client], Awaitable[int]]) -> int:
    try:
        async with client as c:
            return await work(c)
    except (TimeoutError, aiohttp.ClientError) as exc:  # a connection broke where no retry applies
        raise ApiUnreachable(f"the connection to {client.base} failed: {reason(exc)}",
                             "check the API's log; run the command again") from exc
    except BrokenPipeError:
        raise  # `logship tail | head`: cli.main handles it
    except OSError as exc:  # the output file
        raise LogshipError(f"{exc.filename or 'the output'}: {exc.strerror or exc}",
                           "check the output path, its permissions and free space") from exc
