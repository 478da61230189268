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
                  "labels", "command")
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
    size: int | None = None  # None while running: the live size is on GET /api/v1/tasks/{task}/hosts/{host}
    lines: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
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

    def listing(self) -> dict[str, Any]:
        """The fields GET /api/v1/tasks returns for a log."""
        return {k: getattr(self, k) for k in LISTING_FIELDS}

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
    """The row of a manifest. Its `updated_ns` is the version."""
    final = doc.status != manifest.RUNNING
    return Row(task=doc.task, host=doc.host, run_id=doc.run_id, status=doc.status,
               started_ns=doc.started_ns, version_ns=doc.updated_ns or 0,
               exit_code=doc.exit_code, ended_ns=doc.ended_ns,
               size=doc.size if final else None, lines=doc.lines if final else None,
               labels=dict(doc.labels), command=list(doc.command), signal=doc.signal if final else None,
               segments=len(doc.segments) if final else None, dropped_bytes=doc.dropped_bytes if final else None)


def load_manifest(data: bytes, task: str | None = None, host: str | None = None) -> Row:
    """A stored manifest's row; raises manifest.ManifestError for one logship did not write."""
    return from_manifest(Manifest.load(data, task, host))


def tombstone(row: Row, now_ns: int | None = None) -> Row:
    """The row that says gc deleted this run (it wins over every earlier row of the run)."""
    return replace(row, status=DELETED, version_ns=max(row.version_ns + 1, now_ns or time.time_ns()))


# --- keys ------------------------------------------------------------------------------------------


def _payload(row: Row) -> list[Any]:
    extra = [getattr(row, k) for k in VIEW_FIELDS]
    # all null (a running row): the first payload's 8 fields, so a running entry keeps the name it had
    # before VIEW_FIELDS, and a finish written by a newer watcher still deletes it by name
    return [row.run_id, row.status, row.exit_code, row.ended_ns, row.size, row.lines, row.labels, row.command,
            *(extra if any(v is not None for v in extra) else [])]


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
    start = replace(row, status=manifest.RUNNING, exit_code=None, ended_ns=None, size=None, lines=None, signal=None,
                    segments=None, dropped_bytes=None)
    head = f"{MAX64 - row.started_ns:016x}~{row.task}~{row.host}~"
    payload = _b64(_payload(start))
    return head + (payload if len(head) + len(payload) <= ROW_MAX else NO_PAYLOAD)


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
    if not isinstance(fields, list) or len(fields) not in (8, 8 + len(VIEW_FIELDS)):  # 8: written before VIEW_FIELDS
        raise BadRow("the payload is not a row")
    run_id, status, exit_code, ended, size, lines, labels, command = fields[:8]
    row = check(dict(task=task, host=host, run_id=run_id, status=status, started_ns=started, version_ns=version,
                     exit_code=exit_code, ended_ns=ended, size=size, lines=lines, labels=labels, command=command,
                     **dict(zip(VIEW_FIELDS, fields[8:], strict=False))))
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
            and all(_int(d.get(k)) for k in VIEW_FIELDS)):
        raise BadRow("a number field is not an integer in range")
    labels, command = d.get("labels"), d.get("command")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise BadRow("labels is not an object of strings")
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise BadRow("command is not a list of strings")
    return Row(**d)
