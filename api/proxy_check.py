"""What a central API may forward to, and what it takes back (api/proxy.py does the forwarding).

A running log's manifest names the API beside its spool (`api_url`). A manifest is untrusted input:
any host with the store's credentials can write one. So its URL is used only if api.proxy_allow allows
its host, and whatever that API answers is held to the manifest before a byte of it is served: the
status, the run id and sizes in the headers, and the offsets of every tail message.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from multidict import CIMultiDictProxy
from yarl import URL

from shipper.config_values import proxy_allow_entry
from shipper.format import liveness

from . import params

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST_RE = re.compile(r"(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)*(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # a resolver reads 10.1 or 0x7f000001 as an address
MAX_URL = 2048


class NotAllowed(Exception):
    """The manifest's api_url is not one api.proxy_allow allows: it is never contacted."""


class BadAnswer(Exception):
    """The node's answer breaks a rule: none of it (or nothing more of it) is served."""


@dataclass(frozen=True)
class AllowList:
    networks: tuple[Network, ...]
    names: tuple[re.Pattern[str], ...]

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        networks: list[Network] = []
        names: list[re.Pattern[str]] = []
        for e in entries:
            got = proxy_allow_entry(e)
            if isinstance(got, str):
                names.append(re.compile(".".join(re.escape(label).replace(r"\*", "[a-z0-9-]*")
                                                 for label in got.split("."))))
            else:
                networks.append(got)
        return cls(tuple(networks), tuple(names))

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def base_url(self, url: Any) -> str:
        """The normalised `scheme://host:port` of an allowed API URL; NotAllowed says why not.

        Host names are compared as written (lower case, without a final dot), not resolved: a name the
        operator allows is trusted to resolve where the operator's DNS says. An address is allowed only
        inside a listed network. No user, password, path, query or fragment: an API URL is a base.
        """
        if not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isascii() or not url.isprintable() \
                or any(c.isspace() for c in url):
            raise NotAllowed("not a printable URL")
        try:
            u = URL(url)
        except (ValueError, TypeError):
            raise NotAllowed("not a URL") from None
        if u.scheme not in ("http", "https"):
            raise NotAllowed(f"the scheme is {u.scheme or 'missing'}, not http or https")
        if u.raw_user is not None or u.raw_password is not None or "@" in url:
            raise NotAllowed("it has a user or password")
        if u.raw_path not in ("", "/") or u.raw_query_string or u.raw_fragment or "?" in url or "#" in url:
            raise NotAllowed("it has a path, query or fragment (an API URL is http(s)://HOST:PORT)")
        host = (u.raw_host or "").lower().rstrip(".")
        if not host or u.port is None or not 0 < u.port < 65536:
            raise NotAllowed("no host or port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not any(ip in n for n in self.networks):
                raise NotAllowed(f"the address {ip} is in no network of api.proxy_allow")
            shown = f"[{ip}]" if ip.version == 6 else str(ip)
        else:
            if len(host) > 253 or not _HOST_RE.fullmatch(host) or _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
                raise NotAllowed("the host is neither a host name nor an address")
            if not any(p.fullmatch(host) for p in self.names):
                raise NotAllowed(f"the host {host} is not in api.proxy_allow")
            shown = host
        return f"{u.scheme}://{shown}:{u.port}"


def shown(url: Any) -> str:
    """An untrusted URL for a log line: quoted and cut short, so it cannot forge or flood the log."""
    return repr(url if isinstance(url, str) else type(url).__name__)[:160]


# --- the answer's head --------------------------------------------------------------------------------


def _etag(headers: CIMultiDictProxy[str], run_id: str, held: int) -> int:
    """The node's size of the log from its ETag ("<run_id>-<size>"), checked against the manifest."""
    tag = headers.get("ETag", "")
    run, _, size = tag.strip('"').rpartition("-")
    if not (tag.startswith('"') and tag.endswith('"') and size.isdigit() and len(size) <= 19):
        raise BadAnswer(f"ETag {tag[:80]!r} is not \"<run_id>-<size>\"")
    if run != run_id:
        raise BadAnswer(f"ETag names run {run[:40]!r}, the manifest run {run_id!r}")
    if int(size) < held:
        raise BadAnswer(f"ETag says {size} bytes, fewer than the {held} the manifest holds")
    return int(size)


def _int_header(headers: CIMultiDictProxy[str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise BadAnswer(f"{name} {value[:40]!r} is not a number")
    return int(value)


def check_log_head(status: int, headers: CIMultiDictProxy[str], *, run_id: str, held: int,
                   range_header: str | None, start: int | None, follow: bool) -> int | None:
    """Check a /log answer's status and headers; return the most body bytes it may have (None: a follow).

    `held`: bytes the manifest (and checkpoint) of this run hold; the node holds at least those.
    """
    if status not in (200, 206):
        raise BadAnswer(f"HTTP {status} is not an answer of …/log")
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise BadAnswer(f"Content-Encoding {encoding[:40]!r} was not asked for")
    size = _etag(headers, run_id, held)
    log_size = _int_header(headers, "X-Log-Size")
    if log_size is not None and log_size != size:
        raise BadAnswer(f"X-Log-Size {log_size} is not the ETag's size {size}")
    length = _int_header(headers, "Content-Length")
    content_range = headers.get("Content-Range")
    if status == 206:
        try:
            rng = params.byte_range(range_header, size) if range_header is not None and start is None else None
        except params.RangeError:
            rng = None
        if rng is None:
            raise BadAnswer(f"206 to a request whose Range it cannot satisfy ({range_header!r}, {size} bytes)")
        want = (f"bytes {rng[0]}-{rng[1] - 1}/*", f"bytes {rng[0]}-{rng[1] - 1}/{size}")
        if content_range not in want:
            raise BadAnswer(f"Content-Range {str(content_range)[:80]!r} is not {want[0]!r} for {range_header!r}")
        span: int | None = rng[1] - rng[0]
    else:
        if content_range is not None:
            raise BadAnswer("Content-Range on a 200")
        if start is not None:
            if log_size is None or headers.get("X-More-Data") not in ("true", "false"):
                raise BadAnswer("no X-Log-Size and X-More-Data for ?start=")
            if start > size:
                raise BadAnswer(f"200 to start={start}, past its end ({size})")
            span = None if follow else size - start
        else:
            span = None if follow else size
    if length is not None and span is not None and length > span:
        raise BadAnswer(f"Content-Length {length} is more than the {span} bytes asked for")
    return length if length is not None else span


def check_json_head(status: int, headers: CIMultiDictProxy[str], limit: int) -> None:
    if status != 200:
        raise BadAnswer(f"HTTP {status} where 200 was expected")
    if not headers.get("Content-Type", "").startswith("application/json"):
        raise BadAnswer(f"Content-Type {headers.get('Content-Type', '')[:60]!r} is not JSON")
    length = _int_header(headers, "Content-Length")
    if length is not None and length > limit:
        raise BadAnswer(f"{length} bytes of JSON, more than {limit}")


def _load(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise BadAnswer("not JSON") from None
    if not isinstance(doc, dict):
        raise BadAnswer("not a JSON object")
    return doc


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63


def check_meta(body: bytes, *, task: str, host: str, run_id: str, held: int) -> None:
    """GET …/hosts/{host}: the same log and run as the manifest, and at least its size."""
    doc = _load(body)
    for key, want in (("task", task), ("host", host), ("run_id", run_id)):
        if doc.get(key) != want:
            raise BadAnswer(f"{key} is {str(doc.get(key))[:40]!r}, the manifest's {want!r}")
    live = doc.get("live_size")
    if not _is_int(live) or live < held:
        raise BadAnswer(f"live_size {str(live)[:20]} is below the {held} bytes the manifest holds")
    if doc.get("status") not in ("running", "finished", "lost"):
        raise BadAnswer(f"status {str(doc.get('status'))[:20]!r}")
    if "liveness" in doc:
        _check_liveness(doc["liveness"])


def _check_liveness(live: Any) -> None:
    """A node's `liveness` (api/liveness.py SCHEMA): what liveness.json may hold, and a silence in seconds."""
    if not isinstance(live, dict):
        raise BadAnswer("liveness is not an object")
    try:  # the answer's form is the file's without its version and written_ns
        liveness.parse({**live, "version": liveness.VERSION, "written_ns": 0})
    except liveness.BadLiveness as exc:
        raise BadAnswer(f"liveness: {str(exc)[:80]}") from None
    silent = live.get("silent_seconds")
    if isinstance(silent, bool) or not isinstance(silent, (int, float)) or not 0 <= silent <= 1e12:
        raise BadAnswer("liveness.silent_seconds is not a number of seconds")


def check_index(body: bytes, *, held: int, start: int, end: int | None = None) -> None:
    """GET …/index: a size of at least the manifest's, records in order within it (and before `end`); where a
    scan stopped (`from`, `to`) within [start, end]."""
    doc = _load(body)
    size, chunks = doc.get("size"), doc.get("chunks")
    if not _is_int(size) or size < held:
        raise BadAnswer(f"size {str(size)[:20]} is below the {held} bytes the manifest holds")
    if not isinstance(chunks, list) or not (doc.get("line") is None or _is_int(doc.get("line"))):
        raise BadAnswer("no chunks, or a bad line")
    stop = size if end is None else min(end, size)
    for key in ("from", "to"):  # where a scan (`last`, `stream`) stopped
        if key in doc and not (_is_int(doc[key]) and start <= doc[key] <= stop):
            raise BadAnswer(f"a scan's {key} {str(doc[key])[:20]}, outside [{start}, {stop}]")
    at = -1
    for row in chunks:
        if not (isinstance(row, list) and len(row) >= 2 and _is_int(row[0]) and _is_int(row[1])):
            raise BadAnswer("a record is not [offset, length, …]")
        if row[0] <= at or row[0] + row[1] > size or (at < 0 and row[0] + row[1] <= start and row[1]) \
                or (row[0] >= stop and row[1]):
            raise BadAnswer(f"record at {row[0]} is out of order or outside [{start}, {stop})")
        at = row[0]


# --- the tail ---------------------------------------------------------------------------------------


class TailCheck:
    """Holds a tail's messages to the log: each starts where the one before ended, from where it was asked.

    A data message's byte length is exact unless its text has U+FFFD (invalid UTF-8 was replaced: one
    to three bytes each), so the next message may start anywhere in [lo, hi]; without replacements lo = hi.
    """

    def __init__(self, start: int | None, held: int) -> None:
        self.lo = self.hi = start  # where the next message must start; None: anywhere (the last N lines)
        self.held = held
        self.ended = False

    def _at(self, offset: Any, what: str) -> int:
        if not _is_int(offset):
            raise BadAnswer(f"{what} {str(offset)[:20]} is not an offset")
        if self.lo is not None and self.hi is not None and not self.lo <= offset <= self.hi:
            where = self.lo if self.lo == self.hi else f"{self.lo}..{self.hi}"
            raise BadAnswer(f"{what} {offset} where {where} was due")
        return int(offset)

    def message(self, text: str) -> tuple[int, int] | None:
        """Check one message; the range the offset after it lies in (None for an error message)."""
        if self.ended:
            raise BadAnswer("a message after the end")
        try:
            m = json.loads(text)
        except ValueError:
            raise BadAnswer("a message is not JSON") from None
        if not isinstance(m, dict):
            raise BadAnswer("a message is not a JSON object")
        if "data" in m:
            data = m["data"]
            if not isinstance(data, str) or not data or m.get("stream") not in ("stdout", "stderr") \
                    or not _is_int(m.get("ts")):
                raise BadAnswer("a data message without data, stream or ts")
            at = self._at(m.get("offset"), "a message at offset")
            n = len(data.encode("utf-8", "surrogatepass"))
            self.lo, self.hi = at + max(1, n - 2 * data.count("\ufffd")), at + n
        elif m.get("event") == "skipped":
            a, b = self._at(m.get("from"), "a skip from"), m.get("to")
            if not _is_int(b) or b <= a or m.get("bytes") != b - a:
                raise BadAnswer(f"a skip from {a} to {str(b)[:20]}")
            self.lo = self.hi = b
        elif m.get("event") == "end":
            size = self._at(m.get("size"), "the end at")
            if size < self.held:
                raise BadAnswer(f"the end at {size}, before the {self.held} bytes the manifest holds")
            self.lo = self.hi = size
            self.ended = True
        elif m.get("event") == "error" and all(isinstance(m.get(k), str) for k in ("error", "detail")):
            self.ended = True
            return None
        else:
            raise BadAnswer(f"an unknown message {text[:60]!r}")
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


class SSECheck:
    """An SSE tail, fed as it arrives: gives back whole events once their messages and ids check out."""

    def __init__(self, tail: TailCheck, max_event: int) -> None:
        self.tail = tail
        self.max_event = max_event
        self.buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        end = self.buf.rfind(b"\n\n")
        if end < 0:
            if len(self.buf) > self.max_event:
                raise BadAnswer(f"an SSE event of more than {self.max_event} bytes")
            return b""
        events, self.buf = bytes(self.buf[:end + 2]), self.buf[end + 2:]
        for event in events[:-2].split(b"\n\n"):
            self._event(event)
        return events

    def _event(self, event: bytes) -> None:
        ids, texts = [], []
        for line in event.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"id":
                ids.append(value)
            elif field == b"data":
                texts.append(value)
            elif field not in (b"", b"retry"):  # "" is a comment (: ping)
                raise BadAnswer(f"an SSE field {field[:20]!r}")
        if len(texts) > 1 or len(ids) > 1 or (ids and not texts):
            raise BadAnswer("an SSE event that is not one message")
        if not texts:
            return
        after = self.tail.message(texts[0].decode("utf-8", "replace"))
        if ids:
            if after is None or not ids[0].isdigit() or not after[0] <= int(ids[0]) <= after[1]:
                raise BadAnswer(f"SSE id {ids[0][:20]!r} is not the offset after its message")
            self.tail.lo = self.tail.hi = int(ids[0])
        elif after is not None:
            raise BadAnswer("an SSE event without its id")

    def close(self) -> None:
        if self.buf.strip():
            raise BadAnswer("the stream ends inside an event")
