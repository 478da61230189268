"""The manifest of a log (DESIGN §3): which segments the store holds, and how the run went.

It is written after the segments it names, so a reader that trusts it never sees a hole.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .index import Chunk

VERSION = 1
RUNNING, FINISHED, LOST = "running", "finished", "lost"
DELETING = "deleting"  # `logship gc` is deleting the log (shipper/gc.py): readers treat it as gone


def segment_entry(seq: int, chunks: list[Chunk], stored_size: int, index_size: int, sha256: str,
                  compression: str, *, stored: dict[str, Any] | None = None,
                  index_sha256: str | None = None) -> dict[str, Any]:
    """What the manifest says of one segment, from its chunk index. `stored`: the digests of the stored
    object (shipper.archive.StoredDigest.fields: `stored_sha256`, `blocks`); `index_sha256`: of the
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
    end = max((p["offset"] + p["raw_size"] for p in parts), default=0)
    return {
        "version": VERSION,
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


def loads(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("not a logship manifest of version 1")
    return doc
