"""The watcher: ships the spool to the store (DESIGN §2), one per host.

Each pass seals the segments of agents that died, keeps the spool under its quota, uploads
sealed segments and a checkpoint of each open one, commits each log's manifest after the
objects it names, and prunes what the store holds. State comes from the store on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from . import archive, index, maintenance, manifest, names, querycopy
from .config import Config
from .errors import ObjectNotFound, StoreError
from .quota import DROPPED_FILE, enforce_quota
from .retry import Backoff, QuietLog
from .spool import SpoolLog, agent_alive, iter_logs, read_json, read_log, recover_open_segment, write_json_atomic
from .store import Store, open_store

log = logging.getLogger("logship.watcher")

ZSTD_LEVEL = 1  # 3.5x smaller at ~230 MB/s a core; higher levels make compression the bottleneck
UPLOAD_CONCURRENCY = 3
READ_PIECE = 1 << 20
TOMBSTONE_SECONDS = 7 * 86400  # how long a shipped log's run.json stays, to refuse a second run
STORE_PROBE_SECONDS = 60  # a watcher with nothing to ship still asks the store this often (one HEAD)


@dataclass
class LogState:
    """What the watcher knows of one log beyond its spool files."""

    loaded: bool = False
    conflict: bool = False
    retired: bool = False  # `logship gc` is deleting it from the store: done with it
    segments: dict[int, dict[str, Any]] = field(default_factory=dict)  # uploaded (maybe not yet committed)
    committed: set[int] = field(default_factory=set)  # named by the manifest in the store
    checkpoint: dict[str, Any] | None = None
    stale_keys: list[str] = field(default_factory=list)  # checkpoints to delete once the manifest moved on
    last_checkpoint: float = 0.0
    manifest_status: str | None = None
    dirty: bool = True
    copied: set[int] = field(default_factory=set)  # segments whose query copy step is done (manifest says so)
    copying: set[int] = field(default_factory=set)


class Watcher:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.spool = cfg.spool_dir
        self.store = store
        self.compression = cfg.store.compression
        self.logs: dict[Path, LogState] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ["passes", "segments_uploaded", "bytes_uploaded", "raw_bytes_uploaded", "checkpoints",
             "manifests", "retries", "lost_logs", "dropped_bytes", "dropped_segments", "pruned_segments",
             "conflicts", "spool_bytes", "query_copies", "query_copy_bytes"], 0)
        self.last_error = ""
        self.started_ns = time.time_ns()
        self.last_ok_ns = 0  # end of the last pass that reached the store: `logship watch --check`
        self._probed = -float(STORE_PROBE_SECONDS)  # monotonic time of the last store probe that answered
        self._sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)
        self._copies: set[asyncio.Task[None]] = set()
        self._copy_sem = asyncio.Semaphore(1)  # builds are CPU-bound: one at a time leaves a core to the uploads
        self.query_copy = cfg.query.copy
        self._quiet = QuietLog(log)

    # --- one pass ----------------------------------------------------------------------------

    async def run_once(self) -> None:
        """One pass over the spool. Raises StoreUnavailable when the store cannot be reached."""
        self.stats["passes"] += 1
        dirs = await asyncio.to_thread(self.local_pass)
        async with asyncio.TaskGroup() as tg:
            if time.monotonic() - self._probed >= STORE_PROBE_SECONDS:
                tg.create_task(self._probe_store())
            for d in dirs:
                tg.create_task(self._ship(d))

    async def _probe_store(self) -> None:
        """So that an idle watcher's health is true too: one HEAD of a key nothing is stored under."""
        with contextlib.suppress(ObjectNotFound):
            await self.store.head(names.STORE_PROBE_KEY)
        self._probed = time.monotonic()

    def local_pass(self) -> list[Path]:
        """Work that needs no store: seal dead agents' segments, keep the quota. Returns logs to ship."""
        self.spool.mkdir(parents=True, exist_ok=True)
        dirs = []
        for d in iter_logs(self.spool):
            if (d / names.SHIPPED_FILE).exists():
                self._prune_shipped(d)
                continue
            sl = read_log(d)
            if sl is None:
                continue
            if not sl.finished and not agent_alive(sl.run):
                self._recover(sl)
            dirs.append(d)
        used, dropped = enforce_quota(self.spool, self.cfg.spool.quota_bytes,
                                      lambda d, seq: seq in self.logs.get(d, LogState()).committed)
        self.stats["spool_bytes"] = used
        for d, entry in dropped:
            self.stats["dropped_segments"] += 1
            self.stats["dropped_bytes"] += entry["raw_size"]
            self.logs.setdefault(d, LogState()).dirty = True
            log.warning("spool quota reached: dropped segment %s of %s/%s (%d bytes)",
                        entry["seq"], d.parent.name, d.name, entry["raw_size"])
        return dirs

    def _recover(self, sl: SpoolLog) -> None:
        st = self.logs.setdefault(sl.dir, LogState())
        for seq in [*sl.sealing, *([sl.open] if sl.open is not None else [])]:
            prev = st.segments.get(seq - 1)
            prev_end = (prev["offset"] + prev["raw_size"], prev["chunks"][1]) if prev else None
            recover_open_segment(sl.dir, seq, prev_end)
        write_json_atomic(sl.dir / names.EXIT_FILE, {"status": manifest.LOST, "exit_code": None, "signal": None,
                                                      "ended_ns": time.time_ns(), "dropped_bytes": 0,
                                                      "error": "the agent died before the task ended"})
        self.stats["lost_logs"] += 1
        st.dirty = True
        log.warning("agent of %s/%s died: sealed its segments, log marked lost", sl.task, sl.host)

    # --- shipping one log ----------------------------------------------------------------------

    async def _ship(self, d: Path) -> None:
        sl = await asyncio.to_thread(read_log, d)
        if sl is None:
            return
        st = self.logs.setdefault(d, LogState())
        if not st.loaded:
            await self._load(st, sl)
        if st.retired:
            await asyncio.to_thread(write_json_atomic, d / names.SHIPPED_FILE,
                                    {"run_id": sl.run["run_id"], "shipped_ns": time.time_ns(), "deleted": True})
            del self.logs[d]
            return
        if st.conflict:
            return
        dropped = read_json(d / DROPPED_FILE) or []
        gone = {e["seq"] for e in dropped}
        todo = [s for s in sl.sealed if s not in st.segments and s not in gone]
        if todo:
            async with asyncio.TaskGroup() as tg:
                for seq in todo:
                    tg.create_task(self._upload_segment(sl, st, seq))
        if sl.finished:
            if st.checkpoint is not None:
                st.stale_keys += _ckpt_keys(sl, st.checkpoint)
                st.checkpoint = None
                st.dirty = True
        elif sl.open is not None and time.monotonic() - st.last_checkpoint >= self.cfg.watch.checkpoint_seconds:
            await self._checkpoint(sl, st)
        status = (sl.exit or {}).get("status", manifest.RUNNING) if sl.finished else manifest.RUNNING
        if st.dirty or status != st.manifest_status:
            await self._commit(sl, st, status, [e for e in dropped if e["seq"] not in st.segments])
        self._schedule_copies(sl, st)
        if (sl.finished and not sl.sealing and sl.open is None and all(s in st.committed or s in gone for s in sl.sealed)
                and self._all_copied(st)):
            await asyncio.to_thread(write_json_atomic, d / names.SHIPPED_FILE,
                                    {"run_id": sl.run["run_id"], "shipped_ns": time.time_ns()})
            del self.logs[d]
        await asyncio.to_thread(self._prune, sl, st)

    async def _load(self, st: LogState, sl: SpoolLog) -> None:
        """Learn what the store already holds of this log, and clear what a crash left behind."""
        prefix = names.log_prefix(sl.task, sl.host)
        try:
            doc = manifest.loads(await self.store.get(names.manifest_key(sl.task, sl.host)))
        except ObjectNotFound:
            doc = None
        if doc is not None and doc.get("status") == manifest.DELETING and doc.get("run_id") == sl.run["run_id"]:
            # `logship gc` is deleting this very log: shipping on would bring back a half-deleted log.
            st.retired = True
            st.loaded = True
            log.warning("%s/%s: logship gc is deleting this log from the store; not shipping it again",
                        sl.task, sl.host)
            return
        if doc is not None and doc.get("run_id") != sl.run["run_id"]:
            st.conflict = True
            st.loaded = True
            self.stats["conflicts"] += 1
            log.error("%s/%s: the store holds another run of this log (run %s); not overwriting it — "
                      "its spool stays in %s until you move it", sl.task, sl.host, doc.get("run_id"), sl.dir)
            return
        if doc is not None:
            st.segments = {s["seq"]: s for s in doc["segments"]}
            st.committed = set(st.segments)
            st.copied = {s["seq"] for s in doc["segments"] if s.get("query_copy")}
            st.checkpoint = doc.get("checkpoint")
            st.manifest_status = doc["status"]
        keep = set(_ckpt_keys(sl, st.checkpoint)) if st.checkpoint else set()
        orphans = [o.key for o in await self.store.list(prefix) if ".ckpt-" in o.key and o.key not in keep]
        await self.store.delete(orphans)
        await self.store.abort_uploads(prefix)
        st.loaded = True

    async def _upload_segment(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        async with self._sem:
            log_path = names.spool_segment(sl.dir, seq)
            prepared = await asyncio.to_thread(self._prepare, log_path, names.spool_index(sl.dir, seq))
            if prepared is None:  # an empty segment (an agent that died before writing): nothing to keep
                return
            chunks, sha, blob, idx_blob, stored = prepared
            key = names.segment_key(sl.task, sl.host, seq, self.compression)
            if blob is None:
                await self.store.put_file(key, log_path)
            else:
                await self.store.put(key, blob)
            await self.store.put(names.index_key(sl.task, sl.host, seq, self.compression), idx_blob)
            entry = manifest.segment_entry(seq, chunks, len(blob) if blob is not None else stored.size,
                                           len(idx_blob), sha, self.compression, stored=stored.fields(),
                                           index_sha256=hashlib.sha256(idx_blob).hexdigest())
            st.segments[seq] = entry
            st.dirty = True
            self.stats["segments_uploaded"] += 1
            self.stats["raw_bytes_uploaded"] += entry["raw_size"]
            self.stats["bytes_uploaded"] += entry["stored_size"] + entry["index_size"]

    def _prepare(self, log_path: Path, idx_path: Path, size: int | None = None
                 ) -> tuple[list[index.Chunk], str, bytes | None, bytes, archive.StoredDigest] | None:
        """Read a segment once: its chunks, sha256, (when compressing) its zstd bytes, and the digests of
        the object the store will hold (what readers check it against)."""
        raw_idx = index.read_raw(idx_path)
        chunks = list(index.unpack(raw_idx))
        if not chunks:
            return None
        size = chunks[-1].end - chunks[0].offset if size is None else size
        sha = hashlib.sha256()
        stored = archive.StoredDigest()
        blob = None
        with open(log_path, "rb") as f:
            if self.compression == "zstd":
                cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=size)
                out = []
                left = size
                while left > 0 and (piece := f.read(min(READ_PIECE, left))):
                    sha.update(piece)
                    out.append(cobj.compress(piece))
                    left -= len(piece)
                out.append(cobj.flush())
                blob = b"".join(out)
                stored.update(blob)
            else:  # the file is the object (put_file): sealed, so it does not change before the upload
                for piece in iter(lambda: f.read(READ_PIECE), b""):
                    sha.update(piece)
                    stored.update(piece)
        idx_blob = zstandard.ZstdCompressor(level=3).compress(raw_idx) if self.compression == "zstd" else raw_idx
        return chunks, sha.hexdigest(), blob, idx_blob, stored

    # --- the query copy: after the manifest, in a queue of its own ----------------------------------

    def _schedule_copies(self, sl: SpoolLog, st: LogState) -> None:
        """Start the query copy of each committed segment that lacks one (docs/query.md).

        The copy is derived data: it is built after the manifest names the segment, one at a time in
        the background, so the bytes ship at full speed while the copies catch up. The manifest marks a
        segment `query_copy: true` once its copy is stored; a crash before that mark rebuilds it (same key).
        """
        if not self.query_copy:
            return
        for seq in sorted(st.committed - st.copied - st.copying):
            st.copying.add(seq)
            task = asyncio.create_task(self._copy(sl, st, seq))
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    def _all_copied(self, st: LogState) -> bool:
        return not self.query_copy or (st.committed <= st.copied and not st.dirty)

    async def _copy(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        try:
            async with self._copy_sem:
                lines = {s: e["lines"] for s, e in st.segments.items()}
                inputs = await self._copy_inputs(sl, st, seq)
                copy = await querycopy.build_for_spool(sl.dir, sl.task, sl.host, seq, lines, inputs)
                if copy is not None:
                    await self.store.put(copy.key, copy.data)
                    self.stats["query_copies"] += 1
                    self.stats["query_copy_bytes"] += len(copy.data)
        except StoreError as exc:
            self._quiet.log(logging.WARNING, "copy", "%s/%s: query copy of segment %d waits for the store: %s",
                            sl.task, sl.host, seq, exc)
            return
        finally:
            st.copying.discard(seq)
        st.segments[seq] = {**st.segments[seq], "query_copy": True}
        st.copied.add(seq)
        st.dirty = True

    async def _copy_inputs(self, sl: SpoolLog, st: LogState, seq: int) -> querycopy.Inputs:
        """The segment's index and bytes: from the spool, or from the store when the quota dropped them."""
        log_path, idx_path = names.spool_segment(sl.dir, seq), names.spool_index(sl.dir, seq)
        try:
            chunks = await asyncio.to_thread(lambda: list(index.unpack(index.read_raw(idx_path))))
            return querycopy.Inputs(chunks, log_path, None)
        except FileNotFoundError:
            pass
        entry = st.segments[seq]
        comp = entry["compression"]
        raw_idx = await self.store.get(names.index_key(sl.task, sl.host, seq, comp))
        data = await self.store.get(names.segment_key(sl.task, sl.host, seq, comp))
        if comp == "zstd":
            dctx = zstandard.ZstdDecompressor()
            raw_idx = dctx.decompress(raw_idx)
            data = dctx.decompress(data, max_output_size=entry["raw_size"])
        return querycopy.Inputs(list(index.unpack(raw_idx)), None, data)

    async def drain_copies(self) -> bool:
        """Wait for the query copies in flight; True if there were any."""
        if not self._copies:
            return False
        await asyncio.gather(*list(self._copies), return_exceptions=True)
        return True

    async def cancel_copies(self) -> None:
        for t in list(self._copies):
            t.cancel()
        await asyncio.gather(*list(self._copies), return_exceptions=True)

    # --- checkpoints -----------------------------------------------------------------------------

    async def _checkpoint(self, sl: SpoolLog, st: LogState) -> None:
        """Upload what the open segment holds now, so a dead host loses at most one interval."""
        assert sl.open is not None
        seq = sl.open
        try:
            raw_idx = await asyncio.to_thread(index.read_raw, names.spool_index(sl.dir, seq, open_=True))
        except FileNotFoundError:
            return  # sealed meanwhile: the next pass uploads it whole
        st.last_checkpoint = time.monotonic()
        chunks = list(index.unpack(raw_idx))
        if not chunks:
            return
        raw_size = chunks[-1].end - chunks[0].offset
        if st.checkpoint and (st.checkpoint["seq"], st.checkpoint["raw_size"]) == (seq, raw_size):
            return
        log_path = names.spool_segment(sl.dir, seq, open_=True)
        try:
            prepared = await asyncio.to_thread(self._prepare_checkpoint, log_path, chunks, raw_size)
        except FileNotFoundError:
            return
        sha, blob, stored = prepared
        idx_blob = raw_idx
        if self.compression == "zstd":
            idx_blob = zstandard.ZstdCompressor(level=3).compress(raw_idx)
        key, idx_key = names.checkpoint_keys(sl.task, sl.host, seq, raw_size, self.compression)
        await self.store.put(key, blob)
        await self.store.put(idx_key, idx_blob)
        if st.checkpoint:
            st.stale_keys += _ckpt_keys(sl, st.checkpoint)
        st.checkpoint = manifest.segment_entry(seq, chunks, len(blob), len(idx_blob), sha, self.compression,
                                               stored=stored, index_sha256=hashlib.sha256(idx_blob).hexdigest())
        st.dirty = True
        self.stats["checkpoints"] += 1

    def _prepare_checkpoint(self, log_path: Path, chunks: list[index.Chunk], raw_size: int
                            ) -> tuple[str, bytes, dict[str, Any]]:
        with open(log_path, "rb") as f:
            raw = f.read(raw_size)
        if len(raw) < raw_size:
            raise FileNotFoundError(log_path)  # cannot happen with an intact spool; skip this round
        blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw) if self.compression == "zstd" else raw
        return hashlib.sha256(raw).hexdigest(), blob, archive.digest_fields(blob)

    async def _commit(self, sl: SpoolLog, st: LogState, status: str, dropped: list[dict[str, Any]]) -> None:
        """Write the manifest (after every object it names), then delete what it no longer names."""
        segments = [st.segments[s] for s in sorted(st.segments)]
        if st.checkpoint is not None and st.checkpoint["seq"] in st.segments:
            st.stale_keys += _ckpt_keys(sl, st.checkpoint)
            st.checkpoint = None
        # A running log names the API beside this spool, so a central API can proxy live requests to it.
        extra = {"api_url": self.cfg.watch.api_url} if self.cfg.watch.api_url and status == manifest.RUNNING else {}
        doc = manifest.build(sl.run, sl.exit, status, segments, st.checkpoint, dropped, self.compression, extra)
        st.dirty = False  # before the PUT: a query copy that lands meanwhile sets it again
        try:
            await self.store.put(names.manifest_key(sl.task, sl.host), manifest.dumps(doc))
        except BaseException:
            st.dirty = True
            raise
        st.committed = {s["seq"] for s in segments}
        st.manifest_status = status
        self.stats["manifests"] += 1
        if st.stale_keys:
            stale, st.stale_keys = st.stale_keys, []
            await self.store.delete(stale)

    # --- pruning -------------------------------------------------------------------------------

    def _prune(self, sl: SpoolLog, st: LogState) -> None:
        """Delete sealed segments the store holds once they are older than spool.keep_uploaded_seconds."""
        cutoff = time.time() - self.cfg.spool.keep_uploaded_seconds
        for seq in sl.sealed:
            shipped = seq in st.committed and (seq in st.copied or not self.query_copy)
            if shipped or (sl.dir / names.SHIPPED_FILE).exists():
                self._prune_segment(sl.dir, seq, cutoff)

    def _prune_shipped(self, d: Path) -> None:
        cutoff = time.time() - self.cfg.spool.keep_uploaded_seconds
        sl = read_log(d)
        for seq in sl.sealed if sl else []:
            self._prune_segment(d, seq, cutoff)
        shipped = d / names.SHIPPED_FILE
        if sl is not None and not sl.sealed and time.time() - shipped.stat().st_mtime > TOMBSTONE_SECONDS:
            shutil.rmtree(d, ignore_errors=True)

    def _prune_segment(self, d: Path, seq: int, cutoff: float) -> None:
        path = names.spool_segment(d, seq)
        try:
            if path.stat().st_mtime > cutoff:
                return
            path.unlink()
            names.spool_index(d, seq).unlink(missing_ok=True)
        except FileNotFoundError:
            return
        self.stats["pruned_segments"] += 1

    # --- state for --check and /metrics ----------------------------------------------------------

    def write_state(self, healthy: bool) -> None:
        now = time.time_ns()
        if healthy:
            self.last_ok_ns = now
        write_json_atomic(self.spool / names.WATCHER_STATE_FILE, {
            "pid": os.getpid(), "updated_ns": now, "healthy": healthy, "started_ns": self.started_ns,
            "last_ok_ns": self.last_ok_ns, "last_error": self.last_error, "store": self.store.url, "stats": self.stats,
        }, durable=False)


def _ckpt_keys(sl: SpoolLog, ckpt: dict[str, Any]) -> list[str]:
    return list(names.checkpoint_keys(sl.task, sl.host, ckpt["seq"], ckpt["raw_size"], ckpt["compression"]))


# --- the daemon ------------------------------------------------------------------------------


async def watch(cfg: Config, *, once: bool = False, stop: asyncio.Event | None = None) -> Watcher:
    """Run the watcher until `stop` is set (or one successful pass, with once=True).

    Wakes on spool changes (watchfiles) and at least every checkpoint interval. Every failed
    pass is retried with capped backoff, forever: the data waits in the spool meanwhile.
    """
    stop = stop or asyncio.Event()
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    cfg.spool_dir.mkdir(parents=True, exist_ok=True)
    wake = asyncio.Event()
    notifier = None if once else asyncio.create_task(_notify(cfg.spool_dir, wake, stop))
    scheduled = None if once else maintenance.start(cfg, store, stop)  # retention and compaction, if configured
    backoff = Backoff()
    try:
        while not stop.is_set():
            wake.clear()
            try:
                await w.run_once()
            except* StoreError as group:
                failure: BaseException | None = _first_leaf(group)
            else:
                failure = None
            if failure is not None:
                w.stats["retries"] += 1
                w.last_error = str(failure)
                delay = backoff.next()
                w._quiet.log(logging.WARNING, "store", "store unavailable, retrying in %.1fs: %s", delay, failure)
                await asyncio.to_thread(w.write_state, False)
                await _wait(stop, delay)
                continue
            backoff.reset()
            w.last_error = ""
            await asyncio.to_thread(w.write_state, True)
            if once:
                if await w.drain_copies():
                    continue  # one more pass records the copies in the manifests
                break
            await _wait(stop, min(1.0, cfg.watch.checkpoint_seconds), wake)
    finally:
        await w.cancel_copies()  # a restart finds the segments the manifest does not mark copied
        if scheduled is not None:  # stopped anywhere, gc and compaction are finished by a later run
            scheduled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduled
        if notifier is not None:
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
        await store.close()
    return w


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _wait(stop: asyncio.Event, timeout: float, wake: asyncio.Event | None = None) -> None:
    waiters = [asyncio.ensure_future(stop.wait())] + ([asyncio.ensure_future(wake.wait())] if wake else [])
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waiters:
            t.cancel()


async def _notify(spool: Path, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `wake` when a segment is sealed or a log starts or ends (appends to open segments don't count)."""
    import watchfiles

    def interesting(_change: object, path: str) -> bool:
        return not path.endswith(names.OPEN_SUFFIX) and ".tmp-" not in path and not path.endswith(names.WATCHER_STATE_FILE)

    # watchfiles' defaults (debounce 1600 ms, step 50 ms) would add up to a second and a half.
    async for _ in watchfiles.awatch(spool, watch_filter=interesting, debounce=50, step=10,
                                     stop_event=stop, recursive=True):
        wake.set()


def main(cfg: Config, *, once: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        w = await watch(cfg, once=once, stop=stop)
        log.info("watcher stopped: %s", " ".join(f"{k}={v}" for k, v in w.stats.items()))
        return 0 if not w.last_error else 1

    return asyncio.run(run())
