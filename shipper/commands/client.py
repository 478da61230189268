"""The CLI's HTTP client: `logship tail` and `logship download` against a running `logship serve`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

import aiohttp

from shipper.config import Config
from shipper.errors import LogshipError
from shipper.format import names
from shipper.retry import Backoff

API_PREFIX = "/api/v1"
TOKEN_ENV = "LOGSHIP_TOKEN"
DEFAULT_LINES = 10  # as coreutils tail
TAIL_PROBE_BYTES = 64 * 1024  # first guess at how far back the last N lines start; grows 4x per miss
# A follower asks again this often at most when the server ended a response while the task still runs
# (`?start=` answers with what exists now): it bounds both the delay of a new line and the request rate.
# While answers come back empty the pause doubles up to POLL_IDLE_S: a quiet task, or a log seen only
# through the store's checkpoints, should not cost the API (and the store) 20 requests a second.
POLL_S = 0.05
POLL_IDLE_S = 0.4
FOLLOW_GIVE_UP_S = 120.0  # a follower stops after the API has been unreachable this long
DOWNLOAD_RETRIES = 8  # drops in a row without progress before a download gives up
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # a silent socket this long is dropped; followers and downloads then resume
PIECE = 1 << 20
PROGRESS_EVERY_S = 0.1
ETAG_SUFFIX = ".logship-etag"

# `bytes FIRST-LAST/SIZE`; LAST may be -1: the API answers a suffix Range on an empty log with `0--1`
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(-?\d+)/(\d+|\*)")


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
            raise ApiUnreachable(f"cannot reach the API at {self.base}: {_reason(exc)}",
                                 f"is `logship serve` running at {self.base}? (api.listen in the config, "
                                 "or pass --url)") from exc
        async with resp:
            if resp.status not in ok:
                raise await self.error(resp)
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):  # "Connection refused", not "Connect call failed (…)"
        errno = exc.os_error.errno
        return os.strerror(errno) if errno else str(exc.os_error)
    return str(exc) or type(exc).__name__


def _run_of(etag: str | None) -> str | None:
    """The run id in the API's ETag `"<run_id>-<size>"`: a change means another run of the log."""
    return etag.strip().strip('"').rpartition("-")[0] if etag else None


# --- tail ----------------------------------------------------------------------------------------


def lines_start(data: bytes, n: int, at_log_start: bool) -> int | None:
    """Where the last `n` lines of `data` start (an unterminated last line counts as one); None when
    `data` holds fewer than `n` lines and is not the whole log, so more must be read before it."""
    if n == 0:
        return len(data)
    at = len(data)
    for _ in range(n + data.endswith(b"\n")):
        at = data.rfind(b"\n", 0, at)
        if at < 0:
            return 0 if at_log_start else None
    return at + 1


async def last_lines(client: Client, url: str, n: int) -> tuple[int, bytes]:
    """(offset, bytes from it to the log's current end) for the last `n` lines: reads tail Ranges,
    each 4x longer than the last, until enough newlines are in hand. A range the log does not hold
    (the API's 416 bytes_missing) is where its lines start for us: it is said on stderr."""
    data, lo, etag = b"", -1, ""
    probe = TAIL_PROBE_BYTES
    while True:
        if lo < 0:
            headers = {"Range": f"bytes=-{probe}"}
        else:  # the range before what we have; If-Range: a new run of the log sends it whole instead
            headers = {"Range": f"bytes={max(0, lo - probe)}-{lo - 1}", "If-Range": etag}
        async with client.get(url, headers=headers, ok=(200, 206, 416)) as resp:
            if resp.status == 416:
                missing = (await client.error(resp)).missing
                if not missing:  # nothing to serve: an empty log
                    return 0, b""
                print(f"logship: bytes {missing[-1][0]}-{missing[-1][1] - 1} of the log are not in the archive; "
                      "the lines before them are not shown", file=sys.stderr, flush=True)
                if lo < 0:  # the bytes after them are what there is to show
                    async with client.get(url, headers={"Range": f"bytes={missing[-1][1]}-"}) as after:
                        data, lo = await after.read(), missing[-1][1]
                first = lines_start(data, n, True) or 0
                return lo + first, data[first:]
            body = await resp.read()
            if resp.status == 200:
                data, lo = body, 0
            else:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if m is None:
                    raise ApiError(f"the API sent a Content-Range of {resp.headers.get('Content-Range')!r}",
                                   "is --url the logship API?")
                data, lo = (body if lo < 0 else body + data), int(m.group(1))
                etag = etag or resp.headers.get("ETag", "")
        at = lines_start(data, n, lo == 0)
        if at is not None:
            return lo + at, data[at:]
        probe *= 4


async def tail(client: Client, task: str, host: str, *, follow: bool, start: int | None, lines: int,
               out: BinaryIO) -> int:
    """Print the log from `start` (else its last `lines` lines); with `follow`, until the task ends."""
    url = client.log_url(task, host)
    if start is None:
        start, data = await last_lines(client, url, lines)
        _emit(out, data)
        pos = start + len(data)
        if not follow:
            return 0
    else:
        pos = start
    return await _follow(client, url, pos, out, once=not follow)


async def _follow(client: Client, url: str, pos: int, out: BinaryIO, *, once: bool) -> int:
    """Print from `pos` on, asking `?start=pos` again after each answer until the log has ended.

    `follow=true` rides along: a server that keeps a `start=` response open streams it; one that
    answers with what exists now is asked again after POLL_S (longer while nothing new comes).
    Either way `pos` counts the bytes printed, so a dropped connection resumes there with no gap
    and no duplicate. An answer ends at the first byte the log does not hold (dropped at the spool
    quota); asked from there, the API names the range (416 bytes_missing): it is said on stderr and
    skipped, as the WebSocket tail's `skipped` event does.
    """
    params = {"start": str(pos)} if once else {"start": str(pos), "follow": "true"}
    run: str | None = None
    reached = False
    backoff = Backoff(initial=POLL_S, cap=2.0)
    down_since: float | None = None
    idle = 0  # answers in a row that brought nothing
    while True:
        began, before = time.monotonic(), pos
        params["start"] = str(pos)
        try:
            async with client.get(url, params=params) as resp:
                reached, down_since = True, None
                backoff.reset()
                this_run = _run_of(resp.headers.get("ETag"))
                if run is not None and this_run is not None and this_run != run:
                    raise ApiError("the log was replaced by another run while it was followed",
                                   "run `logship tail` again to follow the new run")
                run = run or this_run
                more = resp.headers.get("X-More-Data", "true") != "false"
                size = int(resp.headers.get("X-Log-Size", "0") or 0)
                async for piece in resp.content.iter_any():
                    _emit(out, piece)
                    pos += len(piece)
        except ApiError as exc:
            if exc.missing and exc.missing[0][0] == pos:
                a, b = exc.missing[0]
                print(f"logship: bytes {a}-{b - 1} of the log are not in the archive (see `dropped` in its "
                      "metadata); skipped", file=sys.stderr, flush=True)
                pos = b
                continue
            if exc.status == 416:
                raise ApiError(exc.detail, "give --from at most the log's size (or use --lines N)", 416) from None
            raise
        except (TimeoutError, ApiUnreachable, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if isinstance(exc, ApiUnreachable) and not reached:
                raise  # never reached the API: it is not there, say so now
            if once:
                raise ApiUnreachable(f"the connection to {client.base} dropped at offset {pos}: {_reason(exc)}",
                                     f"run again with --from {pos} to continue") from exc
            now = time.monotonic()
            if down_since is None:
                down_since = now
                print(f"logship: lost the API at {client.base} ({_reason(exc)}); resuming at offset {pos}",
                      file=sys.stderr, flush=True)
            elif now - down_since > FOLLOW_GIVE_UP_S:
                raise ApiUnreachable(f"the API at {client.base} has been unreachable for {FOLLOW_GIVE_UP_S:.0f}s",
                                     f"is `logship serve` running? `logship tail -f --from {pos}` continues "
                                     "where this stopped") from exc
            await asyncio.sleep(backoff.next())
            continue
        if (once or not more) and pos >= size:
            return 0
        idle = 0 if pos > before else idle + 1
        pause = min(POLL_IDLE_S, POLL_S * 2 ** min(idle, 8)) if idle else POLL_S
        await asyncio.sleep(max(0.0, pause - (time.monotonic() - began)))


def _emit(out: BinaryIO, data: bytes) -> None:
    if data:
        out.write(data)
        out.flush()  # a follower shows each piece as it comes


# --- download ------------------------------------------------------------------------------------


class Progress:
    """A progress line on a terminal (redrawn at most every PROGRESS_EVERY_S), else one final line."""

    def __init__(self, label: str, out: IO[str], tty: bool) -> None:
        self.label = label
        self.out = out
        self.tty = tty
        self.total: int | None = None
        self.first: int | None = None  # bytes the file held at the first answer
        self.resumed_at: int | None = None  # set when that answer continued an earlier run's file
        self.answered = False  # the API has answered at least once
        self.began = time.monotonic()
        self._drawn = 0.0

    def update(self, pos: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self._drawn < PROGRESS_EVERY_S):
            return
        self._drawn = now
        rate = (pos - (self.first or 0)) / max(now - self.began, 1e-6)
        if self.total:
            frac = min(1.0, pos / self.total)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {_human(pos)}/{_human(self.total)} {frac * 100:3.0f}%"
        else:
            text = f"{self.label} {_human(pos)}"
        self.out.write(f"\r{text} {_human(int(rate))}/s\x1b[K")
        self.out.flush()

    def finish(self, pos: int, message: str) -> None:
        if self.tty:
            self.update(pos, force=True)
            self.out.write("\n")
        self.out.write(message + "\n")
        self.out.flush()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def _write_sidecar(path: Path, etag: str) -> None:
    """Write the ETag beside the file: tmp, fsync, rename, so a sidecar is never half there."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(etag.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_sidecar(path: Path) -> str | None:
    try:
        etag = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return etag or None


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


RETRIABLE = (ApiUnreachable, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError)


class _Restart(Exception):
    """The partial file is not a prefix of this log: it was removed, start over from 0."""


async def download(client: Client, task: str, host: str, path: Path, progress: Progress) -> int:
    """The whole log into `path`, resuming what an earlier run left there (see `_fetch`); a connection
    that drops mid-way is resumed the same way, up to DOWNLOAD_RETRIES times in a row without progress.

    A resume after a drop in this run asks for exactly the next byte: if the API cut the answer because
    that byte's object failed its check (the API never sends such bytes), it now says so in a JSON error
    naming the object, and the download stops with it at once, keeping the good bytes for a later run."""
    url = client.log_url(task, host)
    sidecar = path.with_name(path.name + ETAG_SUFFIX)
    failures, restarts = 0, 0
    backoff = Backoff(initial=0.2, cap=5.0)
    dropped = False  # a connection of this run dropped: the file is a prefix of this log, as written
    while True:
        before = _size(path)
        try:
            pos, total = await _fetch(client, url, path, sidecar, progress, exact=dropped)
            break
        except _Restart:
            restarts += 1
            if restarts > 2:  # cannot happen with a consistent server: a fresh start never restarts
                raise ApiError("the API's answers do not agree with each other", "run the command again") from None
        except RETRIABLE as exc:
            if not progress.answered:
                raise  # never reached the API: it is not there, say so now
            dropped = True
            failures = 0 if _size(path) > before else failures + 1
            if failures >= DOWNLOAD_RETRIES:
                raise ApiUnreachable(f"the download from {client.base} broke off at {_size(path)} bytes: "
                                     f"{_reason(exc)}", "run the same command again: it resumes where it "
                                     "stopped") from exc
            await asyncio.sleep(0 if failures == 0 else backoff.next())
    elapsed = time.monotonic() - progress.began
    what = f"{task}/{host}: {_human(pos)} ({pos} bytes) to {path} in {elapsed:.1f}s"
    if progress.resumed_at:
        what += f", resumed at byte {progress.resumed_at}"
    if total is None:
        progress.finish(pos, f"logship: downloaded {what}; the task is still running: run the same command "
                             "again later to fetch the rest")
        return 0
    await asyncio.to_thread(sidecar.unlink, missing_ok=True)
    progress.finish(pos, f"logship: downloaded {what}")
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _fetch(client: Client, url: str, path: Path, sidecar: Path, progress: Progress,
                 exact: bool = False) -> tuple[int, int | None]:
    """One request: (bytes now in the file, the log's size if it has ended, else None).

    A partial file is continued only when its sidecar holds the ETag it was downloaded under. The
    request starts one byte early (`Range: bytes=<size-1>-` with `If-Range`): the byte the file and
    the answer share must agree, a cheap check that the file is a prefix of this log, and a complete
    file gets a one-byte answer rather than a 416. Another run of the log (If-Range fails: the server
    sends 200 and the whole log) starts over from 0; so does a byte that disagrees. `exact`: this run
    wrote the file, so the request starts at its end (short of the log's known size).

    Bytes the log does not hold (the API's 416 bytes_missing) end the download with that error: the
    file keeps its bytes, all at their offsets.
    """
    have = await asyncio.to_thread(_size, path)
    etag = await asyncio.to_thread(_read_sidecar, sidecar) if have else None
    overlap = 0 if exact and (progress.total is None or have < progress.total) else 1
    headers = {"Range": f"bytes={have - overlap}-", "If-Range": etag} if etag else {}
    async with client.get(url, headers=headers, ok=(200, 206, 416)) as resp:
        progress.answered = True
        total = resp.content_length
        if resp.status == 416:
            err = await client.error(resp)
            if err.missing:
                raise err
            await _discard(path, sidecar)  # the file is longer than the log: not a download of it
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != have - overlap:
                raise ApiError(f"the API answered Range bytes={have - overlap}- with Content-Range "
                               f"{resp.headers.get('Content-Range')!r}", "is --url the logship API?")
            total = None if m.group(3) == "*" else int(m.group(3))
            if overlap:
                shared = await resp.content.readexactly(1)
                if shared != await asyncio.to_thread(_last_byte, path, have):
                    await _discard(path, sidecar)
            pos = have
            if progress.first is None:
                progress.resumed_at = have
        else:
            # From 0: no sidecar while the file is emptied, then the sidecar before any byte, so a
            # sidecar never names bytes that are not a prefix of its run.
            await asyncio.to_thread(sidecar.unlink, missing_ok=True)
            await asyncio.to_thread(path.write_bytes, b"")
            await asyncio.to_thread(_write_sidecar, sidecar, resp.headers.get("ETag", ""))
            pos = 0
        if progress.first is None:
            progress.first = pos
        progress.total = total
        # Pieces of at most PIECE bytes go to the page cache: short enough to write inline.
        with open(path, "r+b") as f:
            f.seek(pos)
            try:
                async for piece in resp.content.iter_chunked(PIECE):
                    f.write(piece)
                    pos += len(piece)
                    progress.update(pos)
            finally:
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
        return pos, total


async def _discard(path: Path, sidecar: Path) -> None:
    await asyncio.to_thread(sidecar.unlink, missing_ok=True)
    await asyncio.to_thread(path.unlink, missing_ok=True)
    raise _Restart()


# --- the commands --------------------------------------------------------------------------------


def main(cfg: Config, args: Any) -> int:
    """`logship tail` and `logship download`."""
    from shipper.agent import default_host

    task = names.check_id("task", args.task)
    host = names.check_id("host", args.host or default_host())
    client = Client(base_url(cfg, args.url), token_for(cfg))
    if args.cmd == "tail":
        lines = DEFAULT_LINES if args.lines is None else args.lines
        return asyncio.run(_with(client, lambda c: tail(c, task, host, follow=args.follow, start=args.start,
                                                          lines=lines, out=sys.stdout.buffer)))
    path = Path(args.output)
    if path.is_dir():
        raise LogshipError(f"-o {args.output} is a directory", "give a file name, e.g. -o ./task.log")
    progress = Progress(f"{task}/{host}", sys.stderr, sys.stderr.isatty())
    return asyncio.run(_with(client, lambda c: download(c, task, host, path, progress)))


async def _with(client: Client, work: Callable[[Client], Awaitable[int]]) -> int:
    try:
        async with client as c:
            return await work(c)
    except (TimeoutError, aiohttp.ClientError) as exc:  # a connection broke where no retry applies
        raise ApiUnreachable(f"the connection to {client.base} failed: {_reason(exc)}",
                             "check the API's log; run the command again") from exc
    except BrokenPipeError:
        raise  # `logship tail | head`: cli.main handles it
    except OSError as exc:  # the output file
        raise LogshipError(f"{exc.filename or 'the output'}: {exc.strerror or exc}",
                           "check the output path, its permissions and free space") from exc
