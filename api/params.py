"""Query parameters and the Range header, checked, with errors that say how to fix them."""

from __future__ import annotations

import re
import time
from datetime import datetime

from aiohttp import web

from shipper.config import parse_duration

from .errors import BadRequest


def choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise BadRequest(f"{name}={value!r} is not allowed", f"use one of: {', '.join(allowed)}")
    return value


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name}={value!r} is not a boolean", f"use {name}=true or {name}=false")


def integer(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"\d{1,19}", value) or not lo <= int(value) <= hi:
        raise BadRequest(f"{name}={value!r} is not allowed", f"{name} is a whole number from {lo} to {hi}")
    return int(value)


def since_ns(request: web.Request, name: str = "since") -> int | None:
    """`since` as ns: a duration back from now (7d, 12h, 90m), an ISO time, or Unix ns."""
    value = request.query.get(name)
    if not value:
        return None
    if value.isdigit() and len(value) > 12:
        return int(value)
    try:
        return time.time_ns() - int(parse_duration(value) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return int(dt.timestamp() * 1e9)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not a time", "use a duration back from now (7d, 12h, 30m), "
                         "an ISO time (2026-11-20T08:00:00Z) or Unix nanoseconds") from None


class RangeError(Exception):
    """The Range header cannot be served: 416 with Content-Range: bytes */SIZE."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as [start, end) within `size`; None without a header.

    Raises RangeError for a syntax we do not serve (several ranges, other units) or a range
    that starts past the end.
    """
    if header is None:
        return None
    if size == 0:
        raise RangeError("the log is empty: no byte range can be served")
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise RangeError(f"Range {header!r} is not one byte range; send e.g. 'bytes=0-1023' or 'bytes=-500'")
    first, last = m.group(1), m.group(2)
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            raise RangeError("Range bytes=-0 asks for nothing")
        return max(0, size - n), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        raise RangeError(f"Range {header!r} ends before it starts")
    if start >= size:
        raise RangeError(f"Range {header!r} starts at or past the end of the log ({size} bytes)")
    return start, end
