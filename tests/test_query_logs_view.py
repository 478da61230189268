"""The SQL `logs` view reads the catalog: one row per run as the listing shows it, manifests of version 2
(segments stored as deltas) too, rows written before the view's extra columns too, a run's newest row only."""

from __future__ import annotations

import dataclasses
import io
import secrets
import time
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from shipper import catalog
from shipper.catalog import parts, rows
from shipper.config import Config
from shipper.format import manifest, names
from shipper.format.manifest import Manifest, Segment
from shipper.query.engine import Database
from shipper.store import Store, open_store

from .support import MakeConfig
from .support import rows as query_rows

pytestmark = pytest.mark.asyncio(loop_scope="session")

COLS = "task, host, status, exit_code, signal, size, lines, labels, segments, dropped_bytes"


def segment(seq: int, frames: int | None = None) -> Segment:
    return Segment(seq=seq, offset=seq * 10, raw_size=10, stored_size=10, index_size=0, sha256="0" * 64,
                   compression="none", first_ts=1, last_ts=2, lines=1, chunks=(seq, seq), frames=frames,
                   frames_sha256=None if frames is None else "a" * 64)


def doc_of(task: str, status: str, segments: list[Segment], **end: Any) -> Manifest:
    started = time.time_ns() - 10**9
    run = {"task": task, "host": "h1", "run_id": secrets.token_hex(8), "started_ns": started, "command": ["x"],
           "labels": {"team": "a"}}
    ex = None if status == manifest.RUNNING else {"exit_code": 0, "ended_ns": started + 1, **end}
    doc = Manifest.build(run, ex, status, segments, None, [], "none")
    return doc if status == manifest.RUNNING else doc.replace(size=10 * len(segments), lines=len(segments))


async def put(store: Store, doc: Manifest) -> None:
    await store.put(names.manifest_key(doc.task, doc.host), doc.dump())
    await catalog.Writer(store).note(doc)


def logs(cfg: Config) -> list[dict[str, Any]]:
    db = Database(cfg)
    try:
        return query_rows(db, f"SELECT {COLS} FROM logs ORDER BY task")
    finally:
        db.close()


async def test_the_logs_view_is_the_catalog_with_version_2_manifests(make_config: MakeConfig) -> None:
    cfg = make_config()
    store = open_store(cfg.store)
    try:
        v2 = doc_of("deltas", manifest.FINISHED, [segment(0, frames=3), segment(1)], signal=9)
        assert v2.version == manifest.FRAMES_VERSION
        await put(store, v2)
        await put(store, doc_of("plain", manifest.FINISHED, [segment(0)]))
        running = doc_of("running", manifest.RUNNING, [segment(0)])
        await put(store, running)
        gone = doc_of("gone", manifest.FINISHED, [])
        await put(store, gone)
        await catalog.forget(store, gone)
        want = [
            {"task": "deltas", "host": "h1", "status": "finished", "exit_code": 0, "signal": 9, "size": 20, "lines": 2,
             "labels": {"team": "a"}, "segments": 2, "dropped_bytes": 0},
            {"task": "plain", "host": "h1", "status": "finished", "exit_code": 0, "signal": None, "size": 10,
             "lines": 1, "labels": {"team": "a"}, "segments": 1, "dropped_bytes": 0},
            # as in the listing: a running log's size and lines are those of its sealed segments
            {"task": "running", "host": "h1", "status": "running", "exit_code": None, "signal": None, "size": 10,
             "lines": 1, "labels": {"team": "a"}, "segments": None, "dropped_bytes": None},
        ]
        assert logs(cfg) == want  # from the records
        await catalog.Compactor(store, catalog.Settings(grace_s=0)).run()
        assert logs(cfg) == want  # from a part
        await put(store, running.replace(status=manifest.FINISHED, exit_code=1, ended_ns=running.started_ns + 5,
                                         size=10, lines=1))
        assert [(r["task"], r["status"], r["exit_code"]) for r in logs(cfg)] == [
            ("deltas", "finished", 0), ("plain", "finished", 0), ("running", "finished", 1)]  # the newest row wins
    finally:
        await store.close()


async def test_rows_written_before_the_view_columns_still_read(make_config: MakeConfig) -> None:
    """A record key with the first payload (8 fields) and a part without signal/segments/dropped_bytes."""
    cfg = make_config()
    store = open_store(cfg.store)
    try:
        old_doc = doc_of("old-part", manifest.FINISHED, [segment(0)])
        old = rows.from_manifest(old_doc)
        table = parts.table_of([old]).drop_columns(list(rows.VIEW_FIELDS))
        key = names.catalog_part_key(catalog.compact.day_of(old.started_ns), time.time_ns(), "0" * 16)
        good = pq.read_table(io.BytesIO(parts.encode_part(key, [old], ())))
        sink = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(good.schema.metadata), sink)
        await store.put(key, sink.getvalue())
        rec_doc = doc_of("old-record", manifest.FINISHED, [segment(0)])
        rec = dataclasses.replace(rows.from_manifest(rec_doc), signal=None, segments=None, dropped_bytes=None)
        name = rows.record_name(rec)
        head, _, payload = name.rpartition("~")
        short = rows._b64(rows._payload(rec)[:8])
        assert rows.parse_name(f"{head}~{short}") == rec
        await store.put(names.catalog_record_key(f"{head}~{short}"), rec.body())
        await catalog.Compactor(store, catalog.Settings(grace_s=0)).run(merge=False)
        got = {r["task"]: r for r in logs(cfg)}
        assert set(got) == {"old-part", "old-record"}
        assert got["old-part"]["segments"] is None and got["old-part"]["size"] == 10
        page, _ = await catalog.list_logs(store, catalog.Filters(), None, 10)
        assert sorted(r["task"] for r in page) == ["old-part", "old-record"]
        for d in (old_doc, rec_doc):  # their manifests: `catalog check` finds nothing stale in rows without them
            await store.put(names.manifest_key(d.task, d.host), d.dump())
        rep = await catalog.check(store)
        assert rep.clean, rep
    finally:
        await store.close()

