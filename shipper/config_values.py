"""What a config value may be: sizes, durations, choices, tokens, URLs, labels — each checker takes the
raw value (YAML or an environment string) and returns it parsed, or raises ValueError saying what it
should be (shipper/config.py puts the key and its origin in front)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

MIN_TOKEN = 16  # characters of a bearer token at least
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2, "mib": MiB,
               "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.I)
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(str(value).strip())
    if not m:
        raise ValueError
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION_RE.fullmatch(str(value).strip())
    if not m:
        raise ValueError
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]


def _size(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise ValueError
        return n

    check.__doc__ = f"a size like 16777216 or '16MiB', from {_human(lo)} to {_human(hi)}"
    return check


def _duration(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError
        return s

    check.__doc__ = f"a duration in seconds like 30 or '30s', '5m', '2h', from {lo:g}s to {hi:g}s"
    return check


def _off_or(check: Callable[[Any], float]) -> Callable[[Any], float]:
    def off_or(v: Any) -> float:
        return 0.0 if parse_duration(v) == 0 else check(v)

    off_or.__doc__ = f"0 (off) or {check.__doc__}"
    return off_or


def _count(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not re.fullmatch(r"\d+", str(v).strip()) or not lo <= int(v) <= hi:
            raise ValueError
        return int(v)

    check.__doc__ = f"a whole number from {lo} to {hi}"
    return check


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError
        return str(v)

    check.__doc__ = "one of " + ", ".join(allowed)
    return check


def _bool(v: Any) -> bool:
    """true or false"""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise ValueError


def _text(v: Any) -> str:
    """a string"""
    if not isinstance(v, str):
        raise ValueError
    return v


def _store_url(v: Any) -> str:
    """s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH (or file://RELATIVE/PATH)"""
    if not isinstance(v, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?|file://.+", v):
        raise ValueError
    return v


def _listen(v: Any) -> str:
    """HOST:PORT, e.g. 127.0.0.1:8080"""
    if not isinstance(v, str) or not re.fullmatch(r"[\w.:\[\]-]+:\d{1,5}", v) or int(v.rsplit(":", 1)[1]) > 65535:
        raise ValueError
    return v


def _tokens(v: Any) -> list[str]:
    """a list of bearer tokens (at least 16 characters each); in the environment, comma-separated"""
    if isinstance(v, str):
        v = [t for t in v.split(",") if t.strip()]
    if not isinstance(v, list):
        raise ValueError(f"it is {_kind(v)}, not a list")
    for i, t in enumerate(v, 1):  # the message names the entry, never its text: it may be a valid token
        if not isinstance(t, str) or len(t.strip()) < MIN_TOKEN:
            raise ValueError(f"entry {i} of {len(v)} is {_kind(t)}")
    return [t.strip() for t in v]


def _token(v: Any) -> str:
    """a bearer token of at least 16 characters, or empty"""
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or len(v.strip()) < MIN_TOKEN:
        raise ValueError(f"it is {_kind(v)}")
    return v.strip()


def _kind(v: Any) -> str:
    """What a secret's value is, without a character of it."""
    return f"{len(v)} characters long" if isinstance(v, str) else f"a {type(v).__name__}"


# A host name of api.proxy_allow: labels of letters, digits and '-', with '*' for any run of those within
# one label (node-*.example). The last label is literal and not a number: 10.1 or 0x7f000001 are
# addresses to a resolver, not names, and an address is allowed only by a CIDR.
_LABEL = r"(?!-)[a-z0-9*-]{1,63}(?<!-)"
_NAME_PATTERN_RE = re.compile(rf"(?:{_LABEL}\.)*(?!-)[a-z0-9-]{{1,63}}(?<!-)")


def proxy_allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """An entry of api.proxy_allow: a network (CIDR, or one address) or a host-name pattern (lower case)."""
    entry = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    last = entry.rpartition(".")[2]
    if (len(entry) > 253 or not _NAME_PATTERN_RE.fullmatch(entry) or re.fullmatch(r"[0-9]+|0x[0-9a-f]*", last)
            or "/" in entry):
        raise ValueError(f"{entry!r} is neither a CIDR nor a host name")
    return entry


def _proxy_allow(v: Any) -> list[str]:
    """a list of host names (node-1.example, or node-*.example: '*' within one label) and CIDRs
    (10.0.0.0/8, fd00::/8, 192.0.2.7); in the environment, comma-separated"""
    if v is None:
        return []
    if isinstance(v, str):
        v = [e for e in v.split(",") if e.strip()]
    if not isinstance(v, list) or not all(isinstance(e, str) for e in v):
        raise ValueError
    return [str(proxy_allow_entry(e)) for e in v]


def _api_url(v: Any) -> str:
    """an http(s)://HOST:PORT URL of the API beside this spool, or empty"""
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or not re.fullmatch(r"https?://[\w.\[\]:-]+(:\d{1,5})?/?", v):
        raise ValueError
    return v.rstrip("/")


def _statuses(v: Any) -> list[str]:
    """a list of finished and lost (running logs are never deleted); in the environment, comma-separated"""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not v or not all(s in ("finished", "lost") for s in v):
        raise ValueError
    return sorted(set(v))


def _label_map(v: Any) -> dict[str, str]:
    """a mapping of label to value, all of which a log must have; in the environment, k=v,k2=v2"""
    if isinstance(v, str):
        pairs = [p.partition("=") for p in v.split(",") if p.strip()]
        if not all(sep and k.strip() for k, sep, _ in pairs):
            raise ValueError
        v = {k.strip(): val.strip() for k, _, val in pairs}
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and k and isinstance(x, str) for k, x in v.items()):
        raise ValueError
    return dict(v)


def _log_level(v: Any) -> str:
    """a level (debug, info, warning, error), optionally followed by LOGGER=LEVEL pairs: info,watchfiles=debug"""
    from .logs import parse_level

    if not isinstance(v, str):
        raise ValueError
    parse_level(v)
    return v.strip()


def _human(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _opt_text(v: Any) -> str:
    """a string (empty for none)"""
    if v is None:
        return ""
    return _text(v)
