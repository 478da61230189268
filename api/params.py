"""Query parameters, the Range header, the listing cursor and JSON bodies, checked and bounded, with errors
that say how to fix them. Nothing a client sends reaches int(), float() or json.loads() unbounded here:
a number has at most 19 ASCII digits (int64), a time is a pattern before it is a datetime, a body has a
size cap and a nesting limit. The same bounds are in the OpenAPI document (api/openapi.py)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from shipper.format import names

from .errors import BadRequest, TooLarge

INT64_MAX = (1 << 63) - 1
OFFSET_MAX = INT64_MAX  # byte offsets (from=, start=, end=, Last-Event-ID): int64, as the index stores them
DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII: str.isdigit() also takes '²', which int() refuses

# `since=` / `until=`: a duration back from now, Unix ns, a date or an RFC 3339 time (api/openapi.py: TIME_PATTERN)
_DURATION = re.compile(r"([0-9]{1,12})(\.[0-9]{1,9})?(ms|s|m|h|d|w)?", re.I | re.A)
_UNIX_NS = re.compile(r"[0-9]{13,19}")
_DATE_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
                        r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,32}))?)?"
                        r"([Zz]|[+-][0-9]{2}:[0-9]{2})?)?")
_DURATION_S = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TIME_HINT = ("use a duration back from now (90s, 30m, 12h, 7d, 2w), a date (2026-11-20), an RFC 3339 time "
             "(2026-11-20T08:00:00Z) or Unix nanoseconds (13 to 19 digits)")


def _given(request: web.Request, name: str) -> str | None:
    """The value of query parameter `name`, None if absent; an empty one is refused (the document says so)."""
    value = request.query.get(name)
    if value == "":
        raise BadRequest(f"{name}= is empty", f"give {name} a value, or leave it out")
    return value


def choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = _given(request, name)
    if value is None:
        return None
    if value not in allowed:
        raise BadRequest(f"{name}={_show(value)} is not allowed", f"use one of: {', '.join(allowed)}")
    return value


def flag(request: web.Request, name: str) -> bool:
    value = (_given(request, name) or "false").lower()
    if value in ("0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name}={_show(value)} is not a boolean", f"use {name}=true or {name}=false")


def integer(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """A whole number in [lo, hi] (at most int64); `default` if not given."""
    value = _given(request, name)
    if value is None:
        return default
    n = whole(value)
    if n is None or not lo <= n <= hi:
        raise BadRequest(f"{name}={_show(value)} is not allowed", f"{name} is a whole number from {lo} to {hi}")
    return n


def whole(value: str) -> int | None:
    """`value` as a non-negative int64 if it is 1-19 ASCII digits of one, else None."""
    if not DIGITS.fullmatch(value):
        return None
    n = int(value)
    return n if n <= INT64_MAX else None


def offset(request: web.Request, name: str) -> int | None:
    """A byte offset in the log (from=, start=, end=); None if not given."""
    return integer(request, name, None, 0, OFFSET_MAX)


def task_host(request: web.Request, name: str) -> str | None:
    """An optional task or host id filter; empty is the same as not given."""
    value = request.query.get(name) or None
    return names.check_id(name, value) if value is not None else None


def since_ns(request: web.Request, name: str = "since") -> int | None:
    """`since` (or `until`) as Unix ns, clamped to [0, int64]; None if not given. See parse_time."""
    value = _given(request, name)
    if value is None:
        return None
    t = parse_time(value)
    if t is None:
        raise BadRequest(f"{name}={_show(value)} is not a time", TIME_HINT)
    return t


def parse_time(value: str, now_ns: int | None = None) -> int | None:
    """A time as Unix ns clamped to [0, int64], or None if it is not one of: a duration back from now
    (`90s`, `12h`, `7d`, `1.5h`; a bare number of up to 12 digits is seconds), Unix ns (13-19 digits),
    a date (`2026-11-20`, UTC midnight) or an RFC 3339 time (`2026-11-20T08:00:00Z`, `...+02:00`;
    without an offset: UTC). Every form is matched by a bounded pattern first, so no input overflows."""
    if _UNIX_NS.fullmatch(value):
        return min(int(value), INT64_MAX)
    now = time.time_ns() if now_ns is None else now_ns
    if m := _DURATION.fullmatch(value):
        seconds = float(m.group(1) + (m.group(2) or "")) * _DURATION_S[(m.group(3) or "").lower()]
        return max(0, now - int(seconds * 1e9))  # at most 12 digits × a week: ~6e26 ns, a finite float
    if m := _DATE_TIME.fullmatch(value):
        y, mo, d, hh, mm, ss, frac, tz = m.groups()
        try:
            zone = UTC if tz in (None, "Z", "z") else \
                timezone((-1 if tz[0] == "-" else 1) * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
            dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), min(int(ss or 0), 59),
                          tzinfo=zone)  # a leap second :60 counts as :59
        except ValueError:  # 2026-02-30, hour 25, year 0, an offset of 24 h or more
            return None
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        ns = (delta.days * 86400 + delta.seconds) * 10**9 + int((frac or "0")[:9].ljust(9, "0"))
        return min(max(ns, 0), INT64_MAX)
    return None


# --- the listing cursor --------------------------------------------------------------------------
# A position in the listing's order (newest first, then task, then host): `<started_ns>~<task>~<host>`.
# Any well-formed position is a valid cursor (the page after it), so the document can describe it exactly.

CURSOR_PATTERN = r"^-?[0-9]{1,19}~[A-Za-z0-9][A-Za-z0-9._-]{0,127}~[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_CURSOR = re.compile(CURSOR_PATTERN[1:-1])


LABELS_MAX = 16  # label= filters in one request
LABEL_MAX = 256  # characters of one label=k=v
LABEL_HINT = "give label=key=value (a label the task was started with), at most 16 of them; all must match"


def labels(request: web.Request, name: str = "label") -> tuple[tuple[str, str], ...]:
    """The repeatable `label=k=v` filters (all must match), bounded before any of them is looked at."""
    given = request.query.getall(name, [])
    if len(given) > LABELS_MAX:
        raise BadRequest(f"{len(given)} {name}= filters is too many", LABEL_HINT)
    out = []
    for value in given:
        key, sep, v = value.partition("=")
        if not sep or not key or len(value) > LABEL_MAX:
            raise BadRequest(f"{name}={_show(value)} is not key=value", LABEL_HINT)
        out.append((key, v))
    return tuple(out)


def encode_cursor(started_ns: int, task: str, host: str) -> str:
    return f"{started_ns}~{task}~{host}"


def cursor(request: web.Request, name: str = "cursor") -> tuple[int, str, str] | None:
    """`cursor=` as (started_ns, task, host); None if not given."""
    value = _given(request, name)
    if value is None:
        return None
    if not _CURSOR.fullmatch(value):
        raise BadRequest(f"{name}={_show(value)} is not one this API gave out",
                         "pass next_cursor of the previous page as is")
    ns, task, host = value.split("~")
    return int(ns), task, host


# --- request bodies --------------------------------------------------------------------------------

JSON_BODY_MAX = 1 << 20  # bytes: a SQL text is a few KiB


async def read_json_body(request: web.Request, max_bytes: int = JSON_BODY_MAX, example: str = "{...}") -> Any:
    """The request's JSON body, refused with a 4xx before it costs anything: over `max_bytes` (413, read
    no further), not UTF-8 JSON, or nested deeper than the parser's stack (100,000 `[` is a RecursionError
    in json.loads: a 400 here, not a 500)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"the body is {request.content_length} bytes, over the limit of {max_bytes}",
                       f"send a smaller body: {example}")
    if request.content_length == 0 or not request.can_read_body:
        raise BadRequest("the request has no body", f"send a JSON body {example}")
    body = bytearray()
    async for piece in request.content.iter_chunked(64 << 10):  # chunked uploads have no Content-Length
        body += piece
        if len(body) > max_bytes:
            raise TooLarge(f"the body is over the limit of {max_bytes} bytes", f"send a smaller body: {example}")
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply", f"send a JSON body {example}") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON", f"send a JSON body {example}") from None


def _show(value: str) -> str:
    """A client's value for an error message: quoted, and cut if long (a 100 KB value is not echoed back)."""
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}… ({len(value)} characters)"


# --- the Range header ------------------------------------------------------------------------------


class RangeError(Exception):
    """The Range header cannot be served: 416 with Content-Range: bytes */SIZE."""


def _position(digits: str) -> int:
    """A Range position: past int64 it is only 'beyond any log', so it saturates instead of being parsed."""
    return int(digits) if len(digits) <= 19 else INT64_MAX + 1


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as [start, end) within `size`; None without a header.

    Raises RangeError for a syntax we do not serve (several ranges, other units) or a range
    that starts past the end. Positions of any length are taken (RFC 9110 sets no bound): a last
    position past the end is the end, a first one past it a 416.
    """
    if header is None:
        return None
    if size == 0:
        raise RangeError("the log is empty: no byte range can be served")
    m = re.fullmatch(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise RangeError(f"Range {_show(header)} is not one byte range; send e.g. 'bytes=0-1023' or 'bytes=-500'")
    first, last = m.group(1), m.group(2)
    if first == "":  # the last N bytes
        n = _position(last)
        if n == 0:
            raise RangeError("Range bytes=-0 asks for nothing")
        return max(0, size - n), size
    start = _position(first)
    end = size if last == "" else min(_position(last) + 1, size)
    if last != "" and _position(last) < start:
        raise RangeError(f"Range {_show(header)} ends before it starts")
    if start >= size:
        raise RangeError(f"Range {_show(header)} starts at or past the end of the log ({size} bytes)")
    return start, end
