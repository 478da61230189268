"""The manifest of a log (DESIGN §3): which segments the store holds, and how the run went.

It is written after the segments it names, so a reader that trusts it never sees a hole.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, TypeGuard

from shipper.format import names
from shipper.format.index import Chunk

VERSION = 1
FRAMES_VERSION = 2  # a manifest naming a segment stored as its deltas (`frames`, docs/checkpoints.md §5)
RUNNING, FINISHED, LOST = "running", "finished", "lost"
DELETING = "deleting"  # `logship gc` is deleting the log (shipper/retention/gc.py): readers treat it as gone


def segment_entry(seq: int, chunks: list[Chunk], stored_size: int, index_size: int, sha256: str,
                  compression: str, *, stored: dict[str, Any] | None = None,
                  index_sha256: str | None = None) -> dict[str, Any]:
    """What the manifest says of one segment, from its chunk index. `stored`: the digests of the stored
    object (shipper.format.archive.StoredDigest.fields: `stored_sha256`, `blocks`); `index_sha256`: of the
    stored index object. Readers check every byte they serve against them (docs/format.md)."""
    checks = {**(stored or {}), **({"index_sha256": index_sha256} if index_sha256 else {})}
    return {
        "seq": seq,
        "offset": chunks[0].offset,
        "raw_size": chunks[-1].end - chunks[0].offset,
        "stored_size": stored_size,
        "index_size": index_size,
        "sha256": sha256,
        "compression": compression,
        "first_ts": chunks[0].ts_ns,
        "last_ts": chunks[-1].ts_ns,
        "lines": sum(c.lines for c in chunks),
        "chunks": [chunks[0].seq, chunks[-1].seq],
        **checks,
    }


def build(run: dict[str, Any], exit: dict[str, Any] | None, status: str, segments: list[dict[str, Any]],
          checkpoint: dict[str, Any] | None, dropped: list[dict[str, Any]], compression: str,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    parts = segments + ([checkpoint] if checkpoint else [])
    end = max((p["offset"] + p["raw_size"] for p in parts + dropped), default=0)  # a range lost at the end counts
    return {
        "version": FRAMES_VERSION if any("frames" in s for s in segments) else VERSION,
        "task": run["task"],
        "host": run["host"],
        "run_id": run["run_id"],
        "status": status,
        "exit_code": exit.get("exit_code") if exit else None,
        "signal": exit.get("signal") if exit else None,
        "started_ns": run["started_ns"],
        "ended_ns": exit.get("ended_ns") if exit else None,
        "command": run["command"],
        "labels": run.get("labels", {}),
        "compression": compression,
        "size": end,
        "lines": sum(p["lines"] for p in parts),
        "segments": segments,
        "checkpoint": checkpoint,
        "dropped": dropped,
        "dropped_bytes": sum(d["raw_size"] for d in dropped) + (exit or {}).get("dropped_bytes", 0),
        "updated_ns": time.time_ns(),
        **(extra or {}),
    }


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode()


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


class ManifestError(ValueError):
    """A manifest that is not one logship wrote; the message says which field and why."""


def loads(data: bytes, task: str | None = None, host: str | None = None) -> dict[str, Any]:
    """Parse and check a manifest: every field a reader relies on has its type and range, segments are in
    order and do not overlap, and (when given) it is the manifest of `task`/`host`, not a copy of another
    log's. Unknown fields are kept (a newer watcher may add some). Raises ManifestError."""
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{len(data)} bytes, more than the {MAX_BYTES} a manifest may have")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ManifestError(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or doc.get("version") not in (VERSION, FRAMES_VERSION):
        raise ManifestError("not a logship manifest of version 1 or 2")
    _check(doc, task, host)
    return doc


def _check(doc: dict[str, Any], task: str | None, host: str | None) -> None:  # noqa: C901  (a flat list of checks)
    for kind, want in (("task", task), ("host", host)):
        value = doc.get(kind)
        if not isinstance(value, str) or not names.ID_RE.fullmatch(value):
            raise ManifestError(f"{kind} is not a valid id")
        if want is not None and value != want:
            raise ManifestError(f"it names {kind} {value!r}, but is stored as the manifest of {want!r}")
    _str(doc, "run_id", _RUN_ID)
    if doc.get("status") not in STATUSES:
        raise ManifestError(f"status is not one of {', '.join(STATUSES)}")
    if doc.get("compression") not in COMPRESSIONS:
        raise ManifestError("compression is not zstd or none")
    _int(doc, "started_ns")
    for k in ("ended_ns", "updated_ns", "exit_code", "signal"):
        _int(doc, k, optional=True, low=-MAX_INT if k == "exit_code" else 0)
    for k in ("size", "lines", "dropped_bytes"):
        _int(doc, k)
    command, labels = doc.get("command"), doc.get("labels", {})
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise ManifestError("command is not a list of strings")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ManifestError("labels is not an object of strings")
    if "api_url" in doc and not isinstance(doc["api_url"], str):
        del doc["api_url"]  # advisory (where live requests may go, api/proxy.py): a bad one costs only the proxying
    segments, checkpoint, dropped = doc.get("segments"), doc.get("checkpoint"), doc.get("dropped", [])
    if not isinstance(segments, list) or not isinstance(dropped, list):
        raise ManifestError("segments or dropped is not a list")
    parts = segments + ([checkpoint] if checkpoint is not None else [])
    end, last_seq = 0, -1
    for i, e in enumerate(parts):
        where = f"segments[{i}]" if i < len(segments) else "checkpoint"
        _entry(e, where)
        if e["seq"] <= last_seq or e["offset"] < end:
            raise ManifestError(f"{where} is out of order or overlaps the part before it")
        end, last_seq = e["offset"] + e["raw_size"], e["seq"]
    for i, d in enumerate(dropped):
        if not isinstance(d, dict):
            raise ManifestError(f"dropped[{i}] is not an object")
        for k in ("seq", "offset", "raw_size"):
            _int(d, k, where=f"dropped[{i}]")
    if doc["size"] < end:
        raise ManifestError(f"size {doc['size']} is less than the end of its parts, {end}")


def _entry(e: Any, where: str) -> None:
    if not isinstance(e, dict):
        raise ManifestError(f"{where} is not an object")
    for k in ("seq", "offset", "raw_size", "stored_size", "index_size", "first_ts", "last_ts", "lines"):
        _int(e, k, where=where)
    if e["raw_size"] == 0:
        raise ManifestError(f"{where} is empty")
    if e.get("compression") not in COMPRESSIONS:
        raise ManifestError(f"{where}.compression is not zstd or none")
    _str(e, "sha256", _HEX64, where)
    for k in ("stored_sha256", "index_sha256"):
        if k in e:
            _str(e, k, _HEX64, where)
    if "blocks" in e:  # per-block digests of the stored object (docs/format.md, Integrity)
        _blocks(e["blocks"], e["stored_size"], f"{where}.blocks")
    if "frames" in e:  # stored as its deltas: the frame table's rows and its sha256 (shipper/format/frames.py)
        _int(e, "frames", low=1, where=where)
        _str(e, "frames_sha256", _HEX64, where)
    chunks = e.get("chunks")
    if (not isinstance(chunks, list) or len(chunks) != 2 or not all(_is_int(c) and 0 <= c <= MAX_INT for c in chunks)
            or chunks[0] > chunks[1]):
        raise ManifestError(f"{where}.chunks is not [first, last] chunk numbers")
    if e["offset"] + e["raw_size"] > MAX_INT:
        raise ManifestError(f"{where} ends past 2^63")


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


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(doc: dict[str, Any], key: str, *, optional: bool = False, low: int = 0, where: str = "") -> None:
    v = doc.get(key)
    if v is None and optional:
        return
    if not (_is_int(v) and low <= v <= MAX_INT):
        raise ManifestError(f"{where + '.' if where else ''}{key} is not an integer in [{low}, 2^63)")


def _str(doc: dict[str, Any], key: str, pattern: re.Pattern[str], where: str = "") -> None:
    v = doc.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise ManifestError(f"{where + '.' if where else ''}{key} is not of the form {pattern.pattern}")
