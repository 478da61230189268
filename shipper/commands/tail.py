"""`logship tail [-f]`: the last lines of a log, or from an offset; with -f, followed until the task ends."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import BinaryIO

import aiohttp

from shipper.retry import Backoff

from .client import CONTENT_RANGE, ApiError, ApiUnreachable, Client, reason, run_of

DEFAULT_LINES = 10  # as coreutils tail
TAIL_PROBE_BYTES = 64 * 1024  # first guess at how far back the last N lines start; grows 4x per miss
# A follower asks again this often at most when the server ended a response while the task still runs
# (`?start=` answers with what exists now): it bounds both the delay of a new line and the request rate.
# While answers come back empty the pause doubles up to POLL_IDLE_S: a quiet task, or a log seen only
# through the store's checkpoints, should not cost the API (and the store) 20 requests a second.
POLL_S = 0.05
POLL_IDLE_S = 0.4
FOLLOW_GIVE_UP_S = 120.0  # a follower stops after the API has been unreachable this long


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
                m = CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
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
                this_run = run_of(resp.headers.get("ETag"))
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
                raise ApiUnreachable(f"the connection to {client.base} dropped at offset {pos}: {reason(exc)}",
                                     f"run again with --from {pos} to continue") from exc
            now = time.monotonic()
            if down_since is None:
                down_since = now
                print(f"logship: lost the API at {client.base} ({reason(exc)}); resuming at offset {pos}",
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
