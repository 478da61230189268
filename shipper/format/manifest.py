"""The manifest of a log (DESIGN §3): which segments the store holds, and how the run went.

It is written after the segments it names, so a reader that trusts it never sees a hole.

Typed, and checked where it is built: `Manifest.load(data, task, host)` parses a stored manifest and every
constructor checks its fields' types and ranges, so a bad manifest fails there, with ManifestError naming the
field. `Manifest.dump()` writes the JSON a watcher writes, byte for byte: fields in the writer's order,
optional ones only when set. Fields this version does not know (a newer writer's) are kept in the `extra` of
the object they were in and written back after the known ones, so a read→write round trip keeps them; the one
field dropped at read is an `api_url` that is not a string (advisory: a bad one costs only the proxying).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeGuard

from shipper.format import liveness as live
from shipper.format import names
from shipper.format.index import Chunk
from shipper.format.liveness import Liveness

VERSION = 1
FRAMES_VERSION = 2  # a manifest naming a segment stored as its deltas (`frames`, docs/checkpoints.md §5)
RUNNING, FINISHED, LOST = "running", "finished", "lost"
DELETING = "deleting"  # `logship gc` is deleting the log (shipper/retention/gc.py): readers treat it as gone

MAX_BYTES = 32 << 20  # ≈ 80,000 segments; a manifest past this is not one a watcher wrote
MAX_INT = (1 << 63) - 1
STATUSES = (RUNNING, FINISHED, LOST, DELETING)
COMPRESSIONS = ("zstd", "none")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]*")
BLOCK_SIZES = frozenset(1 << n for n in range(16, 31))
# `blocks` digests: XXH3-128 (written now), or the first 16 bytes of SHA-256 (older manifests; still read)
BLOCK_HASHES = ("xxh3_128", "sha256")
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # it goes into ETags and headers: no quotes, no spaces
_END_REASON = re.compile(r"[a-z_]{1,32}")  # exit.json's end_reason: "silence" (the --on-silence kill)


class ManifestError(ValueError):
    """A manifest that is not one logship wrote; the message says which field and why."""


# --- one segment (or the checkpoint of the open one) -------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """What the manifest says of one stored segment: where its log bytes lie, and what the stored objects must
    hash to (readers check every byte they serve against it: docs/format.md, "Integrity")."""

    seq: int
    offset: int
    raw_size: int
    stored_size: int
    index_size: int
    sha256: str  # of the log bytes
    compression: str
    first_ts: int
    last_ts: int
    lines: int
    chunks: tuple[int, int]  # first and last chunk number
    stored_sha256: str | None = None  # of the stored object (absent in manifests older than the digests)
    blocks: dict[str, Any] | None = None  # {"size", "xxh3_128" (or "sha256")}: per-block digests of the object
    index_sha256: str | None = None  # of the stored index object
    # Stored as its deltas (shipper/checkpoint.py), not as one object: the rows of its frame table and the
    # table's sha256 (shipper/format/frames.py). A manifest naming one is of version 2 (FRAMES_VERSION).
    frames: int | None = None
    frames_sha256: str | None = None
    query_copy: bool | None = None  # True once its query copy is stored (shipper/query/copies.py)
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer writer, kept

    # In the order the watcher writes them; the OPTIONAL ones only when set.
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "seq", "offset", "raw_size", "stored_size", "index_size", "sha256", "compression", "first_ts", "last_ts",
        "lines", "chunks")
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "stored_sha256", "blocks", "index_sha256", "frames", "frames_sha256", "query_copy")
    _NOT_NULL: ClassVar[tuple[str, ...]] = ("stored_sha256", "blocks", "index_sha256", "frames", "frames_sha256")

    def __post_init__(self) -> None:  # noqa: C901  (a flat list of checks)
        for k in ("seq", "offset", "raw_size", "stored_size", "index_size", "first_ts", "last_ts", "lines"):
            _int(k, getattr(self, k))
        if self.raw_size == 0:
            raise ManifestError("raw_size is 0: an empty part")
        if self.compression not in COMPRESSIONS:
            raise ManifestError("compression is not zstd or none")
        _str("sha256", self.sha256, _HEX64)
        for k in ("stored_sha256", "index_sha256"):
            if getattr(self, k) is not None:
                _str(k, getattr(self, k), _HEX64)
        if self.blocks is not None:
            _blocks(self.blocks, self.stored_size, "blocks")
        if self.frames is not None or self.frames_sha256 is not None:
            _int("frames", self.frames, low=1)
            _str("frames_sha256", self.frames_sha256, _HEX64)
        c = self.chunks
        if (not isinstance(c, tuple) or len(c) != 2 or not all(_is_int(n) and 0 <= n <= MAX_INT for n in c)
                or c[0] > c[1]):
            raise ManifestError("chunks is not [first, last] chunk numbers")
        if self.offset + self.raw_size > MAX_INT:
            raise ManifestError("offset + raw_size is past 2^63")
        if self.query_copy is not None and not isinstance(self.query_copy, bool):
            raise ManifestError("query_copy is not true or false")

    @property
    def end(self) -> int:
        return self.offset + self.raw_size

    def keys(self, task: str, host: str) -> tuple[str, str]:
        """(bytes key, index key) of the part in the store (of a whole one: not of one with `frames`)."""
        return (names.segment_key(task, host, self.seq, self.compression),
                names.index_key(task, host, self.seq, self.compression))

    @classmethod
    def build(cls, seq: int, chunks: list[Chunk], stored_size: int, index_size: int, sha256: str,
              compression: str, *, stored: Mapping[str, Any] | None = None, index_sha256: str | None = None,
              frames: int | None = None, frames_sha256: str | None = None) -> Self:
        """The entry of one uploaded part, from its chunk index. `stored`: the digests of the stored object
        (shipper.format.archive.StoredDigest.fields: `stored_sha256`, `blocks`); `index_sha256`: of the
        stored index object; `frames`, `frames_sha256`: of a segment stored as its deltas."""
        stored = stored or {}
        return cls(seq, chunks[0].offset, chunks[-1].end - chunks[0].offset, stored_size, index_size, sha256,
                   compression, chunks[0].ts_ns, chunks[-1].ts_ns, sum(c.lines for c in chunks),
                   (chunks[0].seq, chunks[-1].seq), stored.get("stored_sha256"), stored.get("blocks"), index_sha256,
                   frames, frames_sha256)

    @classmethod
    def parse(cls, obj: Any, where: str) -> Self:
        """An entry as read from JSON (ManifestError naming `where`)."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} is not an object")
        chunks = obj.get("chunks")
        args: dict[str, Any] = {k: obj.get(k) for k in cls.REQUIRED + cls.OPTIONAL}
        args["chunks"] = tuple(chunks) if isinstance(chunks, list) else chunks
        extra = {k: v for k, v in obj.items() if k not in args}
        try:
            for k in cls._NOT_NULL:  # a digest is there, or not named at all
                if k in obj and obj[k] is None:
                    raise ManifestError(f"{k} is null")
            return cls(**args, extra=extra)
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.REQUIRED}
        out["chunks"] = list(self.chunks)
        for k in self.OPTIONAL:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return {**out, **self.extra}


class Checkpoint(Segment):
    """The entry of a checkpoint: the first `raw_size` bytes of the open segment `seq`, under keys of their own
    (a later checkpoint of the same segment never overwrites it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames is not None:  # deltas of the open segment are found by LIST, never named (docs/format.md)
            raise ManifestError("a checkpoint has no frames")

    def keys(self, task: str, host: str) -> tuple[str, str]:
        return names.checkpoint_keys(task, host, self.seq, self.raw_size, self.compression)


@dataclass(frozen=True)
class Dropped:
    """A range of the log the store will never have (dropped at the spool quota, or lost: `reason`). Its other
    fields are the spool's record (shipper/quota.py, spool.lost_range), kept as written in `more`."""

    seq: int
    offset: int
    raw_size: int
    more: dict[str, Any] = field(default_factory=dict)  # reason, lines, first_ts, last_ts, detail …

    def __post_init__(self) -> None:
        for k in ("seq", "offset", "raw_size"):
            _int(k, getattr(self, k))

    @property
    def end(self) -> int:
        return self.offset + self.raw_size

    @property
    def reason(self) -> str | None:
        """quota | damaged | missing (None: a record older than reasons, a quota drop)."""
        r = self.more.get("reason")
        return r if isinstance(r, str) else None

    @property
    def lines(self) -> int:
        n = self.more.get("lines", 0)
        return n if _is_int(n) else 0

    @classmethod
    def parse(cls, obj: Any, where: str) -> Dropped:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} is not an object")
        try:
            args: dict[str, Any] = {k: obj.get(k) for k in ("seq", "offset", "raw_size")}
            return cls(**args, more={k: v for k, v in obj.items() if k not in ("seq", "offset", "raw_size")})
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "offset": self.offset, "raw_size": self.raw_size, **self.more}


# --- the manifest ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    task: str
    host: str
    run_id: str
    status: str  # running | finished | lost | deleting
    exit_code: int | None
    signal: int | None
    started_ns: int
    ended_ns: int | None
    command: tuple[str, ...]
    labels: dict[str, str]
    compression: str
    size: int  # the end of the log: of its last part or dropped range
    lines: int
    segments: tuple[Segment, ...]
    checkpoint: Checkpoint | None
    dropped: tuple[Dropped, ...]
    dropped_bytes: int
    updated_ns: int | None
    api_url: str | None = None  # where live requests may go while it runs (api/proxy.py)
    deleting_ns: int | None = None  # set by `logship gc` with status deleting
    status_before_deleting: str | None = None
    # The agent's last look at the task (issue 15; shipper/format/liveness.py, as the store keeps it) and why
    # the run ended when logship ended it. Both advisory: a bad one is dropped at read, costing only itself.
    liveness: Liveness | None = None
    end_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer writer, kept

    # In the order the watcher writes them (after "version"); the OPTIONAL ones only when set.
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "task", "host", "run_id", "status", "exit_code", "signal", "started_ns", "ended_ns", "command", "labels",
        "compression", "size", "lines", "segments", "checkpoint", "dropped", "dropped_bytes", "updated_ns")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("api_url", "deleting_ns", "status_before_deleting", "liveness",
                                           "end_reason")

    def __post_init__(self) -> None:  # noqa: C901  (a flat list of checks)
        for kind in ("task", "host"):
            value = getattr(self, kind)
            if not isinstance(value, str) or not names.ID_RE.fullmatch(value):
                raise ManifestError(f"{kind} is not a valid id")
        _str("run_id", self.run_id, _RUN_ID)
        if self.status not in STATUSES:
            raise ManifestError(f"status is not one of {', '.join(STATUSES)}")
        if self.compression not in COMPRESSIONS:
            raise ManifestError("compression is not zstd or none")
        _int("started_ns", self.started_ns)
        for k in ("ended_ns", "updated_ns", "exit_code", "signal", "deleting_ns"):
            if getattr(self, k) is not None:
                _int(k, getattr(self, k), low=-MAX_INT if k == "exit_code" else 0)
        for k in ("size", "lines", "dropped_bytes"):
            _int(k, getattr(self, k))
        if not isinstance(self.command, tuple) or not all(isinstance(a, str) for a in self.command):
            raise ManifestError("command is not a list of strings")
        if not isinstance(self.labels, dict) or not all(isinstance(v, str) for v in self.labels.values()):
            raise ManifestError("labels is not an object of strings")
        if self.status_before_deleting is not None and not isinstance(self.status_before_deleting, str):
            raise ManifestError("status_before_deleting is not a string")
        if self.api_url is not None and not isinstance(self.api_url, str):
            raise ManifestError("api_url is not a string")
        if self.liveness is not None and not (isinstance(self.liveness, Liveness)
                                              and len(self.liveness.processes) <= live.STORED_PROCESSES):
            raise ManifestError(f"liveness is not a liveness of at most {live.STORED_PROCESSES} processes")
        if self.end_reason is not None:
            _str("end_reason", self.end_reason, _END_REASON)
        end, last_seq = 0, -1
        for i, e in enumerate(self.parts):
            where = f"segments[{i}]" if i < len(self.segments) else "checkpoint"
            if not isinstance(e, Checkpoint if where == "checkpoint" else Segment):
                raise ManifestError(f"{where} is not an entry")
            if e.seq <= last_seq or e.offset < end:
                raise ManifestError(f"{where} is out of order or overlaps the part before it")
            end, last_seq = e.end, e.seq
        if self.size < end:
            raise ManifestError(f"size {self.size} is less than the end of its parts, {end}")

    @property
    def version(self) -> int:
        """2 once a segment is stored as its deltas (older builds refuse such a manifest), else 1."""
        return FRAMES_VERSION if any(s.frames is not None for s in self.segments) else VERSION

    @property
    def parts(self) -> tuple[Segment, ...]:
        """Segments in order, then the checkpoint of the open segment if there is one."""
        return self.segments + ((self.checkpoint,) if self.checkpoint is not None else ())

    def dropped_at(self, pos: int) -> Dropped | None:
        """The dropped range that holds byte `pos`, if any."""
        return next((d for d in self.dropped if d.offset <= pos < d.end), None)

    # --- from and to JSON --------------------------------------------------------------------------------

    @classmethod
    def load(cls, data: bytes, task: str | None = None, host: str | None = None) -> Manifest:
        """Parse and check a stored manifest: every field a reader relies on has its type and range, segments
        are in order and do not overlap, and (when given) it is the manifest of `task`/`host`, not a copy of
        another log's. Raises ManifestError."""
        if len(data) > MAX_BYTES:
            raise ManifestError(f"{len(data)} bytes, more than the {MAX_BYTES} a manifest may have")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ManifestError(f"not JSON ({exc.__class__.__name__})") from None
        m = cls.parse(doc)
        for kind, want in (("task", task), ("host", host)):
            if want is not None and getattr(m, kind) != want:
                raise ManifestError(f"it names {kind} {getattr(m, kind)!r}, but is stored as the manifest of "
                                    f"{want!r}")
        return m

    @classmethod
    def parse(cls, doc: Any) -> Manifest:
        """A manifest from its decoded JSON (ManifestError)."""
        if not isinstance(doc, dict) or doc.get("version") not in (VERSION, FRAMES_VERSION):
            raise ManifestError("not a logship manifest of version 1 or 2")
        segments, checkpoint, dropped = doc.get("segments"), doc.get("checkpoint"), doc.get("dropped", [])
        if not isinstance(segments, list) or not isinstance(dropped, list):
            raise ManifestError("segments or dropped is not a list")
        args: dict[str, Any] = {k: doc.get(k) for k in cls.REQUIRED + cls.OPTIONAL}
        command = doc.get("command")
        args.update(
            command=tuple(command) if isinstance(command, list) else command,
            labels=doc.get("labels", {}),
            segments=tuple(Segment.parse(s, f"segments[{i}]") for i, s in enumerate(segments)),
            checkpoint=Checkpoint.parse(checkpoint, "checkpoint") if checkpoint is not None else None,
            dropped=tuple(Dropped.parse(d, f"dropped[{i}]") for i, d in enumerate(dropped)),
        )
        if not isinstance(args["api_url"], str):
            args["api_url"] = None  # advisory: a bad one costs only the proxying (dropped, not refused)
        args["liveness"] = _liveness(args["liveness"])
        if not (isinstance(args["end_reason"], str) and _END_REASON.fullmatch(args["end_reason"])):
            args["end_reason"] = None  # advisory too: a bad one costs only itself
        extra = {k: v for k, v in doc.items() if k not in args and k != "version"}
        m = cls(**args, extra=extra)
        if doc["version"] != m.version:  # what a watcher writes: 2 exactly when a segment has frames
            raise ManifestError(f"version {doc['version']}, but " + (
                "a segment is stored as its deltas (`frames`): that is version 2" if m.version == FRAMES_VERSION
                else "no segment is stored as its deltas (`frames`): that is version 1"))
        return m

    def to_json(self) -> dict[str, Any]:
        """The manifest as the watcher writes it (and the API's metadata answer starts from)."""
        out: dict[str, Any] = {"version": self.version}
        for k in self.REQUIRED:
            out[k] = getattr(self, k)
        out.update(command=list(self.command), segments=[s.to_json() for s in self.segments],
                   checkpoint=self.checkpoint.to_json() if self.checkpoint is not None else None,
                   dropped=[d.to_json() for d in self.dropped])
        for k in self.OPTIONAL:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.liveness is not None:
            out["liveness"] = live.stored_json(self.liveness)
        return {**out, **self.extra}

    def dump(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    def replace(self, **changes: Any) -> Manifest:
        """A copy with `changes`, checked again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, run: Mapping[str, Any], exit: Mapping[str, Any] | None, status: str, segments: Iterable[Segment],
              checkpoint: Checkpoint | None, dropped: Iterable[Mapping[str, Any]], compression: str, *,
              api_url: str | None = None, liveness: Liveness | None = None) -> Manifest:
        """The manifest of a log from its spool's run.json and exit.json, its uploaded parts and the spool's
        record of dropped ranges (ManifestError if one of those is not what the spool writes); `liveness`:
        the agent's last liveness.json (kept as the store keeps it: live.for_store)."""
        segments = tuple(segments)
        drops = tuple(Dropped.parse(d, f"dropped[{i}]") for i, d in enumerate(dropped))
        parts = segments + ((checkpoint,) if checkpoint else ())
        end = max([p.end for p in parts] + [d.end for d in drops], default=0)  # a range lost at the end counts
        ex = exit or {}
        return cls(run["task"], run["host"], run["run_id"], status, ex.get("exit_code"), ex.get("signal"),
                   run["started_ns"], ex.get("ended_ns"), tuple(run["command"]), dict(run.get("labels", {})),
                   compression, end, sum(p.lines for p in parts), segments, checkpoint, drops,
                   sum(d.raw_size for d in drops) + ex.get("dropped_bytes", 0), time.time_ns(), api_url,
                   liveness=None if liveness is None else live.for_store(liveness),
                   end_reason=reason if isinstance(reason := ex.get("end_reason"), str)
                   and _END_REASON.fullmatch(reason) else None)


# --- checks ------------------------------------------------------------------------------------------------


def _blocks(blocks: Any, stored_size: int, where: str) -> None:
    """{"size": bytes per block, ALGO: 32 hex digits per block}, with one ALGO of BLOCK_HASHES."""
    size = blocks.get("size") if isinstance(blocks, dict) else None
    if not (_is_int(size) and size in BLOCK_SIZES):
        raise ManifestError(f"{where}.size is not a power of two from 64 KiB to 1 GiB")
    algos = [k for k in BLOCK_HASHES if k in blocks]
    if len(algos) != 1 or len(blocks) != 2:
        raise ManifestError(f"{where} has not exactly one list of digests besides `size` "
                            f"(one of {', '.join(BLOCK_HASHES)})")
    n = max(1, -(-stored_size // size))
    digests = blocks[algos[0]]
    if not isinstance(digests, str) or len(digests) != 32 * n or not _HEX.fullmatch(digests):
        raise ManifestError(f"{where}.{algos[0]} is not {n} digests of 32 hex digits")


def _liveness(doc: Any) -> Liveness | None:
    """A manifest's `liveness`, or None when absent or not one a watcher writes."""
    if doc is None:
        return None
    try:
        return live.parse_stored(doc)
    except live.BadLiveness:
        return None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(key: str, v: Any, *, low: int = 0) -> None:
    if not (_is_int(v) and low <= v <= MAX_INT):
        raise ManifestError(f"{key} is not an integer in [{low}, 2^63)")


def _str(key: str, v: Any, pattern: re.Pattern[str]) -> None:
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise ManifestError(f"{key} is not of the form {pattern.pattern}")
