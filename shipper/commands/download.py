"""`logship download`: a whole log into a file, resumed where an earlier run (or a dropped connection) left it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import IO

import aiohttp

from shipper.retry import Backoff

from .client import CONTENT_RANGE, ApiError, ApiUnreachable, Client, reason

DOWNLOAD_RETRIES = 8  # drops in a row without progress before a download gives up
PIECE = 1 << 20
PROGRESS_EVERY_S = 0.1
ETAG_SUFFIX = ".logship-etag"


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
                                     f"{reason(exc)}", "run the same command again: it resumes where it "
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
            m = CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
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
