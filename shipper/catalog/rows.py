"""A catalog row: one run of one log as the listing shows it, its version, and its key encoding.

A row's key *is* the row (docs/format.md, "Catalog"): start time inverted (newest first), task, host, the
version, then the remaining fields as base64url JSON. So a LIST answers a page with no GET. A run's rows
only move up the lattice (phase, version_ns): "highest wins" is the answer whatever order writers ran in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from shipper.format import manifest, names
from shipper.format.liveness import Liveness
from shipper.format.manifest import Manifest

MAX64 = (1 << 64) - 1
INT63 = (1 << 63) - 1
# A row key stays within one file name (255 bytes on most file systems and on S3 clones that map keys to
# files), with "r-" before it and the file store's temporary suffix (".tmp-" + 12 hex) after it while it is
# written. A longer row keeps "-" as payload and its fields in the object's body.
ROW_MAX = 236
RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # as shipper.format.manifest checks it
NO_PAYLOAD = "-"
DELETED = "deleted"  # a tombstone: gc deleted the log (never shown)
PHASES = {manifest.RUNNING: 1, manifest.FINISHED: 2, manifest.LOST: 2, manifest.DELETING: 3, DELETED: 4}
STATUSES = tuple(PHASES)
LISTING_FIELDS = ("task", "host", "run_id", "status", "exit_code", "started_ns", "ended_ns", "size", "lines",
                  "labels", "command", "silent_since_ns")
# A running log is noted silent (`silent_since_ns`) once it has written nothing for this long, and noted
# again when output resumes: a listing's silence is exact from here on, 0 below it (docs/format.md).
SILENT_AFTER_NS = 60 * 10**9
# Fields of the SQL `logs` view beyond the listing's (null in rows written before they were added).
VIEW_FIELDS = ("signal", "segments", "dropped_bytes")


class BadRow(ValueError):
    """A catalog key or body that is not one logship wrote; it costs its own row."""


@dataclass(frozen=True)
class Row:
    task: str
    host: str
    run_id: str
    status: str
    started_ns: int
    version_ns: int
    exit_code: int | None = None
    ended_ns: int | None = None
    size: int | None = None  # a running log's: of its sealed segments as of the last note (the live size is
    lines: int | None = None  # on GET /api/v1/tasks/{task}/hosts/{host})
    labels: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    silent_since_ns: int | None = None  # a running log silent for SILENT_AFTER_NS or more: its last output
    signal: int | None = None  # VIEW_FIELDS: like size, None while running
    segments: int | None = None
    dropped_bytes: int | None = None

    @property
    def phase(self) -> int:
        return PHASES[self.status]

    @property
    def rank(self) -> tuple[int, int]:
        """Which of two rows of one run wins: the higher."""
        return self.phase, self.version_ns

    @property
    def order(self) -> tuple[int, str, str, str]:
        """The listing's order: newest start first, then task, host, run."""
        return -self.started_ns, self.task, self.host, self.run_id

    @property
    def run(self) -> tuple[str, str, str]:
        return self.task, self.host, self.run_id

    @property
    def visible(self) -> bool:
        return self.phase < 3

    def listing(self, now_ns: int | None = None) -> dict[str, Any]:
        """The fields GET /api/v1/tasks returns for a log; with `now_ns`, a running log's `silent_seconds`
        as of then (0.0 unless noted silent), null for the others."""
        out = {k: getattr(self, k) for k in LISTING_FIELDS}
        if now_ns is not None:
            out["silent_seconds"] = self.silent_seconds(now_ns)
        return out

    def silent_seconds(self, now_ns: int) -> float | None:
        return silent_seconds(self.status, self.silent_since_ns, now_ns)

    def live(self) -> tuple[Any, ...]:
        """What a later row of the same run and phase may change: a note is written when it does."""
        return self.status, self.exit_code, self.ended_ns, self.size, self.lines, self.silent_since_ns

    def body(self) -> bytes:
        """The record's body: every field, deterministic (a re-upload writes the same bytes)."""
        extra = {k: getattr(self, k) for k in VIEW_FIELDS}
        return json.dumps({**self.listing(), **extra, "phase": self.phase, "version_ns": self.version_ns},
                          sort_keys=True, separators=(",", ":")).encode()


def after(row: Row, cursor: tuple[int, str, str] | None) -> bool:
    """Whether `row` comes after the position `cursor` (started_ns, task, host) in the listing's order."""
    return cursor is None or (-row.started_ns, row.task, row.host) > (-cursor[0], cursor[1], cursor[2])


# --- from a manifest: the one adapter ------------------------------------------------------------


def from_manifest(doc: Manifest) -> Row:
    """The row of a manifest. Its `updated_ns` is the version. A running log's size and lines are those of
    its sealed segments (they change at a seal, not at every checkpoint: a note per seal), its silence that
    of the manifest's liveness."""
    final = doc.status != manifest.RUNNING
    sealed = doc.segments[-1].end if doc.segments else 0
    return Row(task=doc.task, host=doc.host, run_id=doc.run_id, status=doc.status,
               started_ns=doc.started_ns, version_ns=doc.updated_ns or 0,
               exit_code=doc.exit_code, ended_ns=doc.ended_ns,
               size=doc.size if final else sealed, lines=doc.lines if final else sum(s.lines for s in doc.segments),
               labels=dict(doc.labels), command=list(doc.command),
               silent_since_ns=None if final else silent_since(doc.liveness), signal=doc.signal if final else None,
               segments=len(doc.segments) if final else None, dropped_bytes=doc.dropped_bytes if final else None)


def silent_seconds(status: str, silent_since_ns: int | None, now_ns: int) -> float | None:
    """The listing's `silent_seconds`: a running log's as of `now_ns` (0.0 unless noted silent), else None."""
    if status != manifest.RUNNING:
        return None
    return 0.0 if silent_since_ns is None else round(max(0, now_ns - silent_since_ns) / 1e9, 3)


def silent_since(live: Liveness | None) -> int | None:
    """The last output of a log this sample shows silent for SILENT_AFTER_NS or more, else None."""
    if live is None or live.written_ns - live.last_output_ns < SILENT_AFTER_NS:
        return None
    return live.last_output_ns


def load_manifest(data: bytes, task: str | None = None, host: str | None = None) -> Row:
    """A stored manifest's row; raises manifest.ManifestError for one logship did not write."""
    return from_manifest(Manifest.load(data, task, host))


def tombstone(row: Row, now_ns: int | None = None) -> Row:
    """The row that says gc deleted this run (it wins over every earlier row of the run)."""
    return replace(row, status=DELETED, version_ns=max(row.version_ns + 1, now_ns or time.time_ns()))


# --- keys ------------------------------------------------------------------------------------------


def _payload(row: Row) -> list[Any]:
    out = [row.run_id, row.status, row.exit_code, row.ended_ns, row.size, row.lines, row.labels, row.command]
    extra = [getattr(row, k) for k in VIEW_FIELDS]
    # 8 fields before issues 13/15; then VIEW_FIELDS only when one is set (a finished row), so a running entry
    # keeps the name it had before them and a finish written by a newer watcher still deletes it by name; then
    # silent_since_ns only when set (a running row): lengths 8, 9, 11 and 12 are unambiguous
    if any(v is not None for v in extra):
        out += extra
    if row.silent_since_ns is not None:
        out += ([None] * len(VIEW_FIELDS) if len(out) == 8 else []) + [row.silent_since_ns]
    return out


def _b64(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def record_name(row: Row) -> str:
    """`<inv_started:016x>~<task>~<host>~<phase><inv_version:016x>~<payload>`."""
    head = f"{MAX64 - row.started_ns:016x}~{row.task}~{row.host}~{row.phase}{MAX64 - row.version_ns:016x}~"
    payload = _b64(_payload(row))
    return head + (payload if len(head) + len(payload) <= ROW_MAX else NO_PAYLOAD)


def running_name(row: Row) -> str:
    """The running/ entry of a run: only fields fixed at its start, so any later row of the run (and the
    manifest) names it exactly, and a finished run's entry is deleted without a LIST."""
    start = replace(row, status=manifest.RUNNING, exit_code=None, ended_ns=None, size=None, lines=None,
                    silent_since_ns=None, signal=None, segments=None, dropped_bytes=None)
    head = f"{MAX64 - row.started_ns:016x}~{row.task}~{row.host}~"
    payload = _b64(_payload(start))
    return head + (payload if len(head) + len(payload) <= ROW_MAX else NO_PAYLOAD)


def live_name(row: Row) -> str:
    """The live/ entry of a running run: `<running name's head><inv_version:016x>~<[run_id, size, lines,
    silent_since_ns]>`, read with the running/ entries (`status=running`, `silent_since=`) so their rows show
    what later records say, whether or not compaction has folded those records into parts."""
    head = f"{MAX64 - row.started_ns:016x}~{row.task}~{row.host}~{MAX64 - row.version_ns:016x}~"
    return head + _b64([row.run_id, row.size, row.lines, row.silent_since_ns])


def parse_live(name: str) -> tuple[tuple[str, str, str], int, int | None, int | None, int | None]:
    """((task, host, run_id), version_ns, size, lines, silent_since_ns) of a live/ entry. Raises BadRow."""
    parts = name.split("~")
    if len(parts) != 5 or len(parts[0]) != 16 or len(parts[3]) != 16:
        raise BadRow("not a live entry key")
    try:
        version = MAX64 - int(parts[3], 16)
        fields = json.loads(base64.urlsafe_b64decode(parts[4] + "=" * (-len(parts[4]) % 4)))
    except (ValueError, binascii.Error):
        raise BadRow("bad version or payload in a live entry key") from None
    if not isinstance(fields, list) or len(fields) != 4:
        raise BadRow("the payload is not a live entry")
    run_id, size, lines, silent = fields
    if not (isinstance(run_id, str) and RUN_ID_RE.fullmatch(run_id) and _int(size) and _int(lines) and _int(silent)
            and 0 <= version <= INT63):
        raise BadRow("a field of a live entry is out of range")
    return (parts[1], parts[2], run_id), version, size, lines, silent


def parse_name(name: str, *, running: bool = False) -> Row | None:
    """The row a key holds; None when its payload is `-` (the body holds it). Raises BadRow."""
    parts = name.split("~")
    if len(parts) != (4 if running else 5):
        raise BadRow("not a catalog row key")
    inv, task, host = parts[0], parts[1], parts[2]
    if len(inv) != 16 or not names.ID_RE.fullmatch(task) or not names.ID_RE.fullmatch(host):
        raise BadRow("bad start time, task or host in the key")
    try:
        started = MAX64 - int(inv, 16)
        if running:
            phase, version = 1, 0
        else:
            order = parts[3]
            if len(order) != 17:
                raise BadRow("bad version in the key")
            phase, version = int(order[0]), MAX64 - int(order[1:], 16)
    except ValueError:
        raise BadRow("bad number in the key") from None
    if parts[-1] == NO_PAYLOAD:
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(parts[-1] + "=" * (-len(parts[-1]) % 4)))
    except (ValueError, binascii.Error):
        raise BadRow("the payload is not base64url JSON") from None
    n = len(VIEW_FIELDS)
    if not isinstance(fields, list) or len(fields) not in (8, 9, 8 + n, 9 + n):  # see payload()
        raise BadRow("the payload is not a row")
    run_id, status, exit_code, ended, size, lines, labels, command = fields[:8]
    view = fields[8:8 + n] if len(fields) >= 8 + n else [None] * n
    silent = fields[-1] if len(fields) in (9, 9 + n) else None
    row = check(dict(task=task, host=host, run_id=run_id, status=status, started_ns=started, version_ns=version,
                     exit_code=exit_code, ended_ns=ended, size=size, lines=lines, labels=labels, command=command,
                     silent_since_ns=silent, **dict(zip(VIEW_FIELDS, view, strict=True))))
    if row.phase != phase:
        raise BadRow("the key's phase is not its status's")
    return row


def from_body(data: bytes, task: str, host: str) -> Row:
    """A record's or running entry's body (for keys with no payload). Raises BadRow."""
    if len(data) > 1 << 20:
        raise BadRow("body over 1 MiB")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRow("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadRow("the body is not an object")
    row = check({k: doc.get(k) for k in (*LISTING_FIELDS, *VIEW_FIELDS, "version_ns")})
    if (row.task, row.host) != (task, host):
        raise BadRow("the body names another log than its key")
    return row


def _int(v: Any, optional: bool = True, low: int = 0) -> bool:
    if v is None:
        return optional
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= INT63


def check(d: dict[str, Any]) -> Row:
    """A Row from untrusted fields, every one checked. Raises BadRow."""
    if not (all(isinstance(d.get(k), str) and names.ID_RE.fullmatch(d[k]) for k in ("task", "host"))
            and isinstance(d.get("run_id"), str) and RUN_ID_RE.fullmatch(d["run_id"])):
        raise BadRow("bad task, host or run_id")
    if d.get("status") not in PHASES:
        raise BadRow("bad status")
    if not (_int(d.get("started_ns"), False) and _int(d.get("version_ns"), False) and _int(d.get("ended_ns"))
            and _int(d.get("size")) and _int(d.get("lines")) and _int(d.get("exit_code"), low=-INT63)
            and _int(d.get("silent_since_ns")) and all(_int(d.get(k)) for k in VIEW_FIELDS)):
        raise BadRow("a number field is not an integer in range")
    labels, command = d.get("labels"), d.get("command")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise BadRow("labels is not an object of strings")
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise BadRow("command is not a list of strings")
    return Row(**d)
