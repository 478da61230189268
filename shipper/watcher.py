"""The watcher: ships the spool to the store (DESIGN §2), one per host.

Each pass seals the segments of agents that died, keeps the spool under its quota, uploads
sealed segments and a checkpoint of each open one, commits each log's manifest after the
objects it names, and prunes what the store holds. State comes from the store on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from shipper import catalog
from shipper.format import frames, index, manifest, names
from shipper.format.manifest import Checkpoint, Manifest, ManifestError, Segment
from shipper.query import copies

from . import wakeups, watcher_state
from .checkpoint import Deltas, Uploads, prefix_keys
from .config import Config
from .errors import DamagedObject, LogshipError, ObjectNotFound, StoreError
from .liveness_ship import LivenessShip
from .logs import event
from .quota import enforce_quota, is_quota_drop, read_dropped, record_dropped
from .retry import Backoff, QuietLog
from .settled import Look, Settled
from .spool import (
    MISSING,
    NOFOLLOW,
    SegmentCheck,
    SpoolDamaged,
    SpoolLog,
    agent_alive,
    check_segment,
    iter_logs,
    lost_range,
    open_child_dir,
    open_log_dir,
    read_file,
    read_log,
    recover_open_segment,
    write_atomic,
    write_json_atomic,
)
from .store import ObjectInfo, Store, open_store
from .wakeups import SpoolWatch

log = logging.getLogger("logship.watcher")

UPLOAD_CONCURRENCY = 3
TOMBSTONE_SECONDS = 7 * 86400  # how long a shipped log's run.json stays, to refuse a second run
STORE_PROBE_SECONDS = 60  # a watcher with nothing to ship still asks the store this often (one HEAD)
SET_ASIDE_RETRY_SECONDS = 60  # a log set aside (damaged) is looked at again this often, in case it was fixed
INDEX_MAX = 64 << 20  # a spool index larger than this is not one the agent wrote
ADOPT_MAX = 1 << 30  # a store segment a missing manifest no longer names is read back only up to this size
# A checkpoint is due this share of the interval early: passes that a wake-up brings between the periodic
# ones (watch()) would otherwise push a log off the periodic passes' phase, to up to two intervals.
DUE_EARLY = 0.25


@dataclass
class LogState:
    """What the watcher knows of one log beyond its spool files."""

    loaded: bool = False
    conflict: bool = False
    retired: bool = False  # `logship gc` is deleting it from the store: done with it
    segments: dict[int, Segment] = field(default_factory=dict)  # uploaded (maybe not yet committed)
    committed: set[int] = field(default_factory=set)  # named by the manifest in the store
    checkpoint: Checkpoint | None = None  # a prefix checkpoint the manifest names (shipper/checkpoint.py)
    deltas: Deltas = field(default_factory=Deltas)  # delta checkpoints the store holds (shipper/checkpoint.py)
    stale_keys: list[str] = field(default_factory=list)  # checkpoints to delete once the manifest moved on
    last_checkpoint: float = 0.0
    manifest_status: str | None = None
    dirty: bool = True
    copied: set[int] = field(default_factory=set)  # segments whose query copy step is done (manifest says so)
    copying: set[int] = field(default_factory=set)
    verified: set[int] = field(default_factory=set)  # sealed segments whose index was checked against their bytes
    damaged: set[int] = field(default_factory=set)  # segments found damaged (counted once)
    set_aside: str | None = None  # why the log is not shipped (a damaged spool file or manifest)
    set_aside_at: float = 0.0  # monotonic time it was last looked at


class ManifestDamaged(LogshipError):
    """The store holds a manifest for a log in our spool that is not a valid manifest: the log is set aside."""

    code = "manifest_damaged"


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
             "conflicts", "spool_bytes", "query_copies", "query_copy_bytes",
             "logs_set_aside", "damaged_segments", "damaged_bytes", "missing_bytes", "adopted_segments",
             "refused_links", "spool_errors"], 0)
        self.set_aside: dict[str, str] = {}  # "task/host" (spool dir) -> why it is not shipped: the state file says
        self._refused: set[Path] = set()
        self.last_error = ""
        self.started_ns = time.time_ns()
        self.last_ok_ns = 0  # end of the last pass that reached the store: `logship watch --check`
        self._probed = -float(STORE_PROBE_SECONDS)  # monotonic time of the last store probe that answered
        self._sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)
        self._copies: set[asyncio.Task[None]] = set()
        self._copy_sem = asyncio.Semaphore(1)  # builds are CPU-bound: one at a time leaves a core to the uploads
        self.query_copy = cfg.query.copy
        self._quiet = QuietLog(log)
        self.uploads = Uploads(store, self.compression, self.stats, deltas=cfg.watch.checkpoint_deltas,
                               quiet=self._quiet)
        self.liveness = LivenessShip(store, self.stats)  # issue 15: the agent's liveness.json to the store
        self.settled = Settled()  # logs with nothing new: a pass looks at them with a stat (shipper/settled.py)
        self._looks: dict[Path, Look] = {}

    # --- one pass ----------------------------------------------------------------------------

    async def run_once(self) -> None:
        """One pass over the spool. Raises StoreUnavailable when the store cannot be reached."""
        self.stats["passes"] += 1
        dirs = await asyncio.to_thread(self.local_pass)
        async with asyncio.TaskGroup() as tg:
            if time.monotonic() - self._probed >= STORE_PROBE_SECONDS:
                tg.create_task(self._probe_store())
            for d in dirs:
                tg.create_task(self._ship_guarded(d))

    async def _probe_store(self) -> None:
        """So that an idle watcher's health is true too: one HEAD of a key nothing is stored under."""
        with contextlib.suppress(ObjectNotFound):
            await self.store.head(names.STORE_PROBE_KEY)
        self._probed = time.monotonic()

    def local_pass(self) -> list[Path]:
        """Work that needs no store: seal dead agents' segments, keep the quota. Returns logs to ship."""
        self.spool.mkdir(parents=True, exist_ok=True)
        full = self.settled.begin_pass()
        dirs = []
        refused: list[Path] = []
        for d in iter_logs(self.spool, refused):
            st = self.logs.get(d)
            if st is not None and st.set_aside and time.monotonic() - st.set_aside_at < SET_ASIDE_RETRY_SECONDS:
                continue
            if self.settled.unchanged(d):
                continue
            look = self.settled.look(d)
            try:
                if (d / names.SHIPPED_FILE).exists():
                    self._prune_shipped(d)
                    self.settled.settle(d, look, None)
                    continue
                sl = read_log(d)
                if sl is None:
                    continue
                if (sl.sealing or sl.open is not None) and not agent_alive(sl.run):
                    self._recover(sl)
                if look is not None:
                    self._looks[d] = dataclasses.replace(look, open_seq=sl.open, run=None if sl.finished else sl.run)
                dirs.append(d)
            except SpoolDamaged as exc:
                self._set_aside(d, exc.detail)
            except OSError as exc:
                self._spool_error(d, exc)
        for link in refused:
            self._refuse_link(link)
        if not dirs and not full:
            return dirs  # nothing changed since the last quota check but time: the spool holds what it held
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
        """Seal what a dead agent left open; mark its log lost unless it got to write exit.json."""
        st = self.logs.setdefault(sl.dir, LogState())
        left = [*sl.sealing, *([sl.open] if sl.open is not None else [])]
        for seq in left:
            dropped = read_dropped(sl.dir)
            start, nxt = self._segment_start(sl.dir, st, seq, dropped)
            check = recover_open_segment(sl.dir, seq, (start, nxt - 1) if start is not None and nxt else None)
            st.verified.add(seq)
            self._check_done(sl.dir, seq, start, check, last=seq == left[-1])
        st.dirty = True
        if sl.finished:  # the agent ended the run but could not seal (a full disk at the end)
            log.warning("%s/%s: sealed segments its agent left open", sl.task, sl.host)
            return
        self._write_log_json(sl.dir, names.EXIT_FILE, {
            "status": manifest.LOST, "exit_code": None, "signal": None, "ended_ns": time.time_ns(),
            "dropped_bytes": 0, "error": "the agent died before the task ended"})
        self.stats["lost_logs"] += 1
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
            await asyncio.to_thread(self._write_log_json, d, names.SHIPPED_FILE,
                                    {"run_id": sl.run["run_id"], "shipped_ns": time.time_ns(), "deleted": True})
            del self.logs[d]
            return
        if st.conflict:
            return
        dropped = await asyncio.to_thread(read_dropped, d)
        gone = {e["seq"] for e in dropped if is_quota_drop(e)}  # whole segments dropped at the quota
        todo = [s for s in sl.sealed if s not in st.segments and s not in gone]
        if any(s not in st.verified for s in todo):  # each index against its bytes, before anything is sent
            todo = await asyncio.to_thread(self._verify, sl, st, todo)
            dropped = await asyncio.to_thread(read_dropped, d)
            sl.sealed = [s for s in sl.sealed if s in st.segments or s in gone or s in todo]
        if todo:
            async with asyncio.TaskGroup() as tg:
                for seq in todo:
                    tg.create_task(self._upload_segment(sl, st, seq))
        if sl.finished:
            if st.checkpoint is not None:
                st.stale_keys += prefix_keys(sl, st.checkpoint)
                st.checkpoint = None
                st.dirty = True
        elif (sl.open is not None
              and time.monotonic() - st.last_checkpoint >= self.cfg.watch.checkpoint_seconds * (1 - DUE_EARLY)
              and (self.uploads.continues(st, sl.open)
                   or await asyncio.to_thread(self._open_index_ok, sl, st, dropped))):
            last, taken = st.last_checkpoint, self.stats["checkpoints"]
            await self.uploads.checkpoint(sl, st)
            if self.stats["checkpoints"] == taken:  # nothing new: new bytes go at the next pass, not an interval on
                st.last_checkpoint = last
        status = (sl.exit or {}).get("status", manifest.RUNNING) if sl.finished else manifest.RUNNING
        if st.dirty or status != st.manifest_status:
            # a quota drop of a segment that reached the store anyway is no loss; a range lost inside one is
            await self._commit(sl, st, status,
                               [e for e in dropped if not is_quota_drop(e) or e["seq"] not in st.segments])
        await self.liveness.ship(sl)
        self._schedule_copies(sl, st)
        if (sl.finished and not sl.sealing and sl.open is None
                and all(s in st.committed or s in gone for s in sl.sealed) and self._all_copied(st)):
            await asyncio.to_thread(self._write_log_json, d, names.SHIPPED_FILE,
                                    {"run_id": sl.run["run_id"], "shipped_ns": time.time_ns()})
            event(log, "log_finished", "{task}/{host}: log {status}, exit code {exit_code}; all shipped ({segments} "
                  "segments)", task=sl.task, host=sl.host, status=status, exit_code=(sl.exit or {}).get("exit_code"),
                  segments=len(st.committed))
            del self.logs[d]
        await asyncio.to_thread(self._prune, sl, st)
        if st.set_aside is not None:
            self._restore(d, st)

    async def _load(self, st: LogState, sl: SpoolLog) -> None:
        """Learn what the store already holds of this log, and clear what a crash left behind."""
        prefix = names.log_prefix(sl.task, sl.host)
        key = names.manifest_key(sl.task, sl.host)
        doc: Manifest | None = None
        try:
            raw = await self.store.get(key)
        except ObjectNotFound:
            pass
        else:
            try:
                doc = Manifest.load(raw)
            except ManifestError as exc:
                # Not ours to overwrite (it may be another run's) nor to trust: this log waits, the others ship.
                raise ManifestDamaged(f"the store's manifest {key} is not a valid manifest ({exc})",
                                      "the log is set aside and its spool kept: inspect the object, delete it if "
                                      "it is garbage, then restart `logship watch`") from None
        if doc is not None and doc.status == manifest.DELETING and doc.run_id == sl.run["run_id"]:
            # `logship gc` is deleting this very log: shipping on would bring back a half-deleted log.
            st.retired = True
            st.loaded = True
            log.warning("%s/%s: logship gc is deleting this log from the store; not shipping it again",
                        sl.task, sl.host)
            return
        if doc is not None and doc.run_id != sl.run["run_id"]:
            st.conflict = True
            st.loaded = True
            self.stats["conflicts"] += 1
            log.error("%s/%s: the store holds another run of this log (run %s); not overwriting it — "
                      "its spool stays in %s until you move it", sl.task, sl.host, doc.run_id, sl.dir,
                      extra={"event": "log_conflict", "task": sl.task, "host": sl.host})
            return
        if doc is not None:
            st.segments = {s.seq: s for s in doc.segments}
            st.committed = set(st.segments)
            st.copied = {s.seq for s in doc.segments if s.query_copy}
            st.checkpoint = doc.checkpoint
            st.manifest_status = doc.status
        keep = set(prefix_keys(sl, st.checkpoint)) if st.checkpoint else set()
        listing = await self.store.list(prefix)
        if doc is None:
            await self._adopt(sl, st, listing)
        self.uploads.learn(sl, st, listing)  # deltas: the chain to continue, or a segment to seal
        orphans = [o.key for o in listing if ".ckpt-" in o.key and o.key not in keep]
        await self.store.delete(orphans)
        await self.store.abort_uploads(prefix)
        event(log, "log_started", "{task}/{host}: shipping run {run_id} ({segments} segments in the store already)",
              task=sl.task, host=sl.host, run_id=sl.run["run_id"], segments=len(st.segments))
        st.loaded = True

    async def _upload_segment(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        async with self._sem:
            await self.uploads.seal(sl, st, seq)

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
                lines = {s: e.lines for s, e in st.segments.items()}
                inputs = await self._copy_inputs(sl, st, seq)
                copy = await copies.build_for_spool(sl.dir, sl.task, sl.host, seq, lines, inputs)
                if copy is not None:
                    await self.store.put(copy.key, copy.data)
                    self.stats["query_copies"] += 1
                    self.stats["query_copy_bytes"] += len(copy.data)
        except StoreError as exc:
            self._quiet.log(logging.WARNING, "copy", "%s/%s: query copy of segment %d waits for the store: %s",
                            sl.task, sl.host, seq, exc)
            return
        except DamagedObject as exc:  # its own segment's copy waits; nothing else does
            self._quiet.log(logging.ERROR, f"copy {sl.task}/{sl.host}", "%s/%s: no query copy of segment %d: %s",
                            sl.task, sl.host, seq, exc)
            return
        finally:
            st.copying.discard(seq)
        st.segments[seq] = dataclasses.replace(st.segments[seq], query_copy=True)
        st.copied.add(seq)
        st.dirty = True

    async def _copy_inputs(self, sl: SpoolLog, st: LogState, seq: int) -> copies.Inputs:
        """The segment's index and bytes: from the spool, or from the store when the quota dropped them."""
        log_path, idx_path = names.spool_segment(sl.dir, seq), names.spool_index(sl.dir, seq)
        try:
            chunks = await asyncio.to_thread(lambda: list(index.unpack(index.read_raw(idx_path))))
            return copies.Inputs(chunks, log_path, None)
        except FileNotFoundError:
            pass
        entry = st.segments[seq]
        if entry.frames is not None:  # stored as its deltas (shipper/checkpoint.py)
            chunks, data = await frames.read_segment(self.store, sl.task, sl.host, entry)
            return copies.Inputs(chunks, None, data)
        comp = entry.compression
        raw_idx = await self.store.get(names.index_key(sl.task, sl.host, seq, comp))
        data = await self.store.get(names.segment_key(sl.task, sl.host, seq, comp))
        if comp == "zstd":
            dctx = zstandard.ZstdDecompressor()
            raw_idx = dctx.decompress(raw_idx)
            data = dctx.decompress(data, max_output_size=entry.raw_size)
        return copies.Inputs(list(index.unpack(raw_idx)), None, data)

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

    async def _commit(self, sl: SpoolLog, st: LogState, status: str, dropped: list[dict[str, Any]]) -> None:
        """Write the manifest (after every object it names), then delete what it no longer names."""
        segments = [st.segments[s] for s in sorted(st.segments)]
        if st.checkpoint is not None and st.checkpoint.seq in st.segments:
            st.stale_keys += prefix_keys(sl, st.checkpoint)
            st.checkpoint = None
        # A running log names the API beside this spool, so a central API can proxy live requests to it.
        api_url = self.cfg.watch.api_url if self.cfg.watch.api_url and status == manifest.RUNNING else None
        doc = Manifest.build(sl.run, sl.exit, status, segments, st.checkpoint, dropped, self.compression,
                             api_url=api_url, liveness=await self.liveness.latest(sl))
        st.dirty = False  # before the PUT: a query copy that lands meanwhile sets it again
        try:
            await self.uploads.put_manifest(names.manifest_key(sl.task, sl.host), doc.dump())
        except BaseException:
            st.dirty = True
            raise
        st.committed = {s.seq for s in segments}
        st.manifest_status = status
        self.stats["manifests"] += 1
        try:  # the listing's row: a request only when the status changed (shipper/catalog/writer.py)
            cw = catalog.writer.writer(self.store)  # the process's writer, whose note this is
            sent = cw.bytes_sent
            await catalog.note(self.store, doc)
            self.stats["bytes_uploaded"] += cw.bytes_sent - sent
        except StoreError as exc:  # the manifest (the truth) is stored: the next pass commits and notes again
            st.dirty = True
            self._quiet.log(logging.WARNING, "catalog", "%s/%s: no catalog record yet, retrying next pass: %s",
                            sl.task, sl.host, exc)
        if st.stale_keys:
            stale, st.stale_keys = st.stale_keys, []
            await self.store.delete(stale)

    # --- pruning -------------------------------------------------------------------------------

    def _prune(self, sl: SpoolLog, st: LogState) -> None:
        """Delete sealed segments the store holds once they are older than spool.keep_uploaded_seconds."""
        cutoff = time.time() - self.cfg.spool.keep_uploaded_seconds
        shipped_file = (sl.dir / names.SHIPPED_FILE).exists()
        seqs = [s for s in sl.sealed if shipped_file or (s in st.committed and (s in st.copied or not self.query_copy))]
        if not seqs:
            return
        fd = open_log_dir(self.spool, sl.dir.parent.name, sl.dir.name)
        try:
            for seq in seqs:
                self._prune_segment(fd, sl.dir, seq, cutoff)
        finally:
            os.close(fd)

    def _prune_shipped(self, d: Path) -> None:
        cutoff = time.time() - self.cfg.spool.keep_uploaded_seconds
        sl = read_log(d)
        # Deletes go through directory fds opened without following links: nothing outside the spool.
        root = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            task_fd = open_child_dir(root, d.parent.name, d.parent)
        finally:
            os.close(root)
        try:
            fd = open_child_dir(task_fd, d.name, d)
            try:
                for seq in sl.sealed if sl else []:
                    self._prune_segment(fd, d, seq, cutoff)
                shipped = os.stat(names.SHIPPED_FILE, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
            if sl is not None and not sl.sealed and time.time() - shipped.st_mtime > TOMBSTONE_SECONDS:
                shutil.rmtree(d.name, dir_fd=task_fd, ignore_errors=True)
        finally:
            os.close(task_fd)

    def _prune_segment(self, fd: int, d: Path, seq: int, cutoff: float) -> None:
        name = names.spool_segment(d, seq).name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                return
            os.unlink(name, dir_fd=fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(names.spool_index(d, seq).name, dir_fd=fd)
        except FileNotFoundError:
            return
        self.stats["pruned_segments"] += 1

    # --- damage: one log's bad files never stop the others ------------------------------------------

    async def _ship_guarded(self, d: Path) -> None:
        """Ship one log; a damaged file sets that log aside, and only the store's faults stop the pass."""
        look = self._looks.pop(d, None)
        try:
            await self._ship(d)
        except (SpoolDamaged, ManifestDamaged) as exc:
            self._set_aside(d, exc.detail)
        except OSError as exc:
            self._spool_error(d, exc)
        else:
            self._settle(d, look)

    def _settle(self, d: Path, look: Look | None) -> None:
        """After a pass shipped log `d`: if nothing is left pending, later passes look at it with a stat."""
        st = self.logs.get(d)
        if st is None or look is None or st.set_aside is not None:
            return
        if not st.conflict and (st.dirty or st.copying or st.stale_keys or not self._all_copied(st)):
            return
        chain, ckpt = st.deltas.chain, st.checkpoint
        covered = None
        if chain is not None and chain.seq == look.open_seq:
            covered = chain.pos - chain.start
        elif ckpt is not None and ckpt.seq == look.open_seq:
            covered = ckpt.raw_size
        self.settled.settle(d, look, covered)

    def _set_aside(self, d: Path, reason: str) -> None:
        """Stop shipping one log, say why once (and in the state file), and look at it again later."""
        st = self.logs.setdefault(d, LogState())
        name = f"{d.parent.name}/{d.name}"
        if st.set_aside != reason:
            if st.set_aside is None:
                self.stats["logs_set_aside"] += 1
            self._quiet.event(logging.ERROR, f"aside {name} {reason}", "log_set_aside", "{task}/{host}: log set aside, "
                              "not shipped: {reason} (hint: {hint})", task=d.parent.name, host=d.name, reason=reason,
                              hint="inspect or move its spool directory, or the store object named; the watcher "
                              f"looks again every {SET_ASIDE_RETRY_SECONDS}s")
        st.set_aside = reason
        st.set_aside_at = time.monotonic()
        st.loaded = False  # its manifest is read again when it is looked at again
        self.set_aside[name] = reason

    def _restore(self, d: Path, st: LogState) -> None:
        name = f"{d.parent.name}/{d.name}"
        log.warning("%s: shipping again (was set aside: %s)", name, st.set_aside)
        st.set_aside = None
        self.set_aside.pop(name, None)

    def _spool_error(self, d: Path, exc: OSError) -> None:
        """A disk error on one log's files (a full disk, permissions): this log waits for the next pass."""
        self.stats["spool_errors"] += 1
        self._quiet.log(logging.WARNING, f"spool {d}", "%s/%s: spool error, retrying on the next pass: %s",
                        d.parent.name, d.name, exc)

    def _refuse_link(self, path: Path) -> None:
        if path not in self._refused:
            self._refused.add(path)
            self.stats["refused_links"] += 1
        self._quiet.log(logging.ERROR, f"link {path}", "%s is a symbolic link in the spool; refusing to follow it: "
                        "nothing is shipped or deleted through it (hint: remove it; the spool holds only "
                        "directories the agent made)", path)

    def _write_log_json(self, d: Path, name: str, doc: dict[str, Any]) -> None:
        fd = open_log_dir(self.spool, d.parent.name, d.name)
        try:
            write_json_atomic(d / name, doc, dir_fd=fd)
        finally:
            os.close(fd)

    def _segment_start(self, d: Path, st: LogState, seq: int, dropped: list[dict[str, Any]]
                       ) -> tuple[int | None, int | None]:
        """(log offset, chunk number) where segment `seq` must begin, from what came before it; Nones if unknown."""
        if seq == 1:
            return 0, 1
        end: int | None = None
        nxt: int | None = None
        prev = st.segments.get(seq - 1)
        if prev is not None:
            end, nxt = prev.end, prev.chunks[1] + 1
        else:  # in the spool, checked already (segments are checked in order)
            try:
                raw = read_file(names.spool_index(d, seq - 1), INDEX_MAX)
            except SpoolDamaged:
                raw = None
            chunks = list(index.unpack(raw or b""))
            if chunks:
                end, nxt = chunks[-1].end, chunks[-1].seq + 1
        for e in dropped:  # dropped at the quota, or a range lost at its end
            if e["seq"] == seq - 1:
                end = max(end, e["offset"] + e["raw_size"]) if end is not None else e["offset"] + e["raw_size"]
        return end, nxt

    def _verify(self, sl: SpoolLog, st: LogState, todo: list[int]) -> list[int]:
        """Check each sealed segment's index against its bytes before it is uploaded (in order).

        A damaged one is repaired in the spool so that the index describes exactly the bytes kept, each
        at its offset: bytes no valid record covers are kept as one chunk of unknown stream, bytes the
        index claims past the file's end are recorded as lost (dropped.json, then the manifest's
        `dropped`, reason `damaged`). Returns the segments to upload (one that keeps nothing is removed).
        """
        fd = open_log_dir(self.spool, sl.dir.parent.name, sl.dir.name)
        out = []
        try:
            for seq in sorted(todo):
                if seq in st.verified:
                    out.append(seq)
                    continue
                dropped = read_dropped(sl.dir)
                start, nxt = self._segment_start(sl.dir, st, seq, dropped)
                log_name, idx_name = names.spool_segment(sl.dir, seq).name, names.spool_index(sl.dir, seq).name
                try:
                    log_fd = os.open(log_name, os.O_RDONLY | NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    continue  # dropped at the quota or pruned meanwhile
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise SpoolDamaged(f"{sl.dir / log_name} is a symbolic link; refusing to follow it",
                                           "remove it") from None
                    raise
                try:
                    info = os.fstat(log_fd)
                    if not stat.S_ISREG(info.st_mode):
                        raise SpoolDamaged(f"{sl.dir / log_name} is not a regular file", "remove it")
                    raw = read_file(sl.dir / idx_name, INDEX_MAX, dir_fd=fd) or b""
                    # B023: check_segment calls read() before it returns, in this iteration
                    check = check_segment(raw, info.st_size, start, nxt, lambda a, b: os.pread(log_fd, b - a, a),  # noqa: B023
                                          str(sl.dir / log_name), info.st_mtime_ns)
                finally:
                    os.close(log_fd)
                if check.problem is not None:
                    write_atomic(sl.dir / idx_name, check.raw_index(), dir_fd=fd)
                last = sl.finished and sl.open is None and not sl.sealing and seq == max(sl.sealed)
                self._check_done(sl.dir, seq, start, check, last)
                if not check.chunks:  # nothing of it to keep: it must not hold the log back
                    for name in (log_name, idx_name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=fd)
                    continue
                st.verified.add(seq)
                out.append(seq)
        finally:
            os.close(fd)
        return out

    def _check_done(self, d: Path, seq: int, start: int | None, check: SegmentCheck, last: bool) -> None:
        """Count, report and record (dropped.json) what the check of segment `seq` found lost.

        Bytes its index claims past the end of its file are lost only if nothing follows it (`last`):
        otherwise the next segment's start says how many are (its `gap`), whatever a damaged
        length field claimed."""
        path = names.spool_segment(d, seq)
        lost = []
        if check.gap and start is not None:  # lost at the end of the segment before (cut with its index)
            lost.append(lost_range(start, check.gap, 0, f"{path}: the {check.gap} bytes before it are in no segment"))
        if check.claimed and last:
            lost.append(lost_range(check.end, check.claimed - check.end, check.claimed_lines,
                                   f"{path}: the file holds {check.size} bytes, its index "
                                   f"{check.claimed - check.start}: the rest is lost", first_ts=check.claimed_ts))
        if check.problem is None and not lost:
            return
        st = self.logs.setdefault(d, LogState())
        for s in ([seq] if check.problem or check.claimed else []) + ([seq - 1] if check.gap else []):
            if s not in st.damaged:
                st.damaged.add(s)
                self.stats["damaged_segments"] += 1
        self._quiet.log(logging.ERROR, f"damaged {path}", "%s: damaged spool segment (%s): its %d bytes kept at "
                        "offset %d, %d lost (recorded in the manifest's dropped list)", path,
                        check.problem or "bytes before it missing", check.size, check.start,
                        sum(e["raw_size"] for e in lost))
        if lost:
            self._record_lost(d, seq - 1, lost[:1] if check.gap else [], str(path))
            self._record_lost(d, seq, lost[1:] if check.gap else lost, str(path))

    def _record_lost(self, d: Path, seq: int, lost: list[dict[str, Any]], what: str) -> None:
        new = record_dropped(d, [{"seq": seq, **e} for e in lost])
        for e in new:
            key = "missing_bytes" if e.get("reason") == MISSING else "damaged_bytes"
            self.stats[key] += e["raw_size"]
        if new:
            self.logs.setdefault(d, LogState()).dirty = True

    def _open_index_ok(self, sl: SpoolLog, st: LogState, dropped: list[dict[str, Any]]) -> bool:
        """Whether the open segment's index is one to checkpoint: contiguous from where the segment
        begins and within its bytes. A damaged one is left to the check at sealing (_verify)."""
        assert sl.open is not None
        seq = sl.open
        path = names.spool_segment(sl.dir, seq, open_=True)
        try:
            raw = read_file(names.spool_index(sl.dir, seq, open_=True), INDEX_MAX)
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return True  # sealed meanwhile: _checkpoint sees it
        if raw is None:
            return True
        start, nxt = self._segment_start(sl.dir, st, seq, dropped)
        recs = list(index.unpack(raw))
        if recs and (start is None or recs[0].offset > start):  # begins after a range lost with the one before
            start = recs[0].offset
        pos = start if start is not None else 0
        problem = None
        for i, r in enumerate(recs):
            if r.offset != pos or (i == 0 and nxt is not None and r.seq < nxt) or r.stream not in index.STREAM_NAMES:
                problem = f"record {i + 1} is not contiguous with what comes before it"
                break
            pos = r.end
        if problem is None and start is not None and pos - start > size:
            problem = f"it claims {pos - start} bytes of a {size}-byte file"
        if problem is None:
            return True
        self._quiet.log(logging.ERROR, f"open {path}", "%s: damaged index of the open segment (%s): no checkpoint "
                        "of it; it is checked and repaired when sealed", path, problem)
        return False

    async def _adopt(self, sl: SpoolLog, st: LogState, listing: list[ObjectInfo]) -> None:
        """The store has no manifest of this log, yet may hold segments of it the spool no longer has (a
        manifest deleted while the log ran): take those back after checking each against its own index,
        so the new manifest names them; a range neither holds is recorded as missing, never claimed."""
        keys = {o.key: o.size for o in listing}
        held = {*sl.sealed, *sl.sealing, *([sl.open] if sl.open is not None else [])}
        dropped = await asyncio.to_thread(read_dropped, sl.dir)
        gone = {e["seq"] for e in dropped if is_quota_drop(e)}
        in_store: dict[int, str] = {}
        for k in keys:
            seg = names.SEGMENT_RE.fullmatch(k.rsplit("/", 1)[-1].removesuffix(".zst"))
            if seg and k.startswith(names.log_prefix(sl.task, sl.host)):
                in_store[int(seg.group(1))] = "zstd" if k.endswith(".zst") else "none"
        top = max(held | set(in_store), default=0)
        missing: list[int] = []
        for seq in range(1, top + 1):
            if seq in held or seq in gone:
                continue
            comp = in_store.get(seq)
            entry = await self._adopt_one(sl, st, seq, comp, keys, dropped) if comp else None
            if entry is None:
                missing.append(seq)
                continue
            st.segments[seq] = entry
            st.dirty = True
            self.stats["adopted_segments"] += 1
        if st.segments or missing:
            log.warning("%s/%s: the store had no manifest; took back %d segments it holds%s", sl.task, sl.host,
                        len(st.segments), f", segments {missing} are nowhere" if missing else "")
        for seq in missing:
            start, _ = self._segment_start(sl.dir, st, seq, dropped)
            end = self._known_start(sl, st, seq + 1, top)
            if start is not None and end is not None and end > start:
                self._record_lost(sl.dir, seq, [lost_range(start, end - start, 0, f"segment {seq} is in neither the "
                                                           "spool nor the store", MISSING)], f"{sl.task}/{sl.host}")
                dropped = await asyncio.to_thread(read_dropped, sl.dir)

    def _known_start(self, sl: SpoolLog, st: LogState, seq: int, top: int) -> int | None:
        """The log offset of the first segment from `seq` on that we hold (store or spool)."""
        for s in range(seq, top + 1):
            if s in st.segments:
                return st.segments[s].offset
            for open_ in (False, True):
                try:
                    raw = read_file(names.spool_index(sl.dir, s, open_=open_), INDEX_MAX)
                except SpoolDamaged:
                    raw = None
                recs = list(index.unpack(raw or b""))
                if recs:
                    return recs[0].offset
        return None

    async def _adopt_one(self, sl: SpoolLog, st: LogState, seq: int, comp: str, keys: dict[str, int],
                         dropped: list[dict[str, Any]]) -> Segment | None:
        key, idx_key = names.segment_key(sl.task, sl.host, seq, comp), names.index_key(sl.task, sl.host, seq, comp)
        if idx_key not in keys or keys[key] > ADOPT_MAX or keys[idx_key] > INDEX_MAX:
            return None
        try:
            blob, idx_blob = await self.store.get(key), await self.store.get(idx_key)
        except ObjectNotFound:
            return None
        try:
            raw, raw_idx = blob, idx_blob
            if comp == "zstd":
                raw, raw_idx = _unzstd(blob, ADOPT_MAX), _unzstd(idx_blob, INDEX_MAX)
        except zstandard.ZstdError as exc:
            log.error("%s: not taken back: it does not decompress (%s)", key, exc)
            return None
        start, nxt = self._segment_start(sl.dir, st, seq, dropped)
        try:
            check = check_segment(raw_idx, len(raw), start, nxt, lambda a, b: raw[a:b], key, 0)
        except SpoolDamaged:
            return None
        if check.problem is not None or not check.chunks:
            log.error("%s: not taken back: its index and bytes disagree (%s)", key, check.problem)
            return None
        if check.gap and start is not None:
            await asyncio.to_thread(self._record_lost, sl.dir, seq - 1, [lost_range(
                start, check.gap, 0, f"the {check.gap} bytes before {key} are in neither the spool nor the store",
                MISSING)], key)
        sha = hashlib.sha256(raw).hexdigest()
        return Segment.build(seq, check.chunks, len(blob), len(idx_blob), sha, comp)

    # --- state for --check and /metrics ----------------------------------------------------------

    def write_state(self, healthy: bool) -> None:
        now = time.time_ns()
        if healthy:
            self.last_ok_ns = now
        try:
            watcher_state.write(self.spool, watcher_state.WatcherState(
                pid=os.getpid(), updated_ns=now, healthy=healthy, started_ns=self.started_ns,
                last_ok_ns=self.last_ok_ns, last_error=self.last_error, store=self.store.url,
                stats=self.stats, set_aside=self.set_aside, store_stats=self.store.stats.snapshot()))
        except OSError as exc:  # a full spool disk: shipping (which frees it) matters more than our state file
            self._quiet.log(logging.WARNING, "state", "cannot write %s: %s", names.WATCHER_STATE_FILE, exc)


def _unzstd(data: bytes, limit: int) -> bytes:
    """Decompress a store object whose frame must say its size, and that size at most `limit`."""
    size = zstandard.frame_content_size(data)
    if size < 0 or size > limit:
        raise zstandard.ZstdError(f"frame size {size} unknown or above {limit}")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)


# --- the daemon ------------------------------------------------------------------------------


# Work that runs beside the shipping, on the same store client, until `stop` (retention and compaction:
# shipper/retention/maintenance.py start); None when there is none. The composition is the command's
# (shipper/commands/cli.py), so that shipping never depends on retention code.
Alongside = Callable[[Store, asyncio.Event], "asyncio.Task[None] | None"]


async def watch(cfg: Config, *, once: bool = False, stop: asyncio.Event | None = None,
                alongside: Alongside | None = None) -> Watcher:
    """Run the watcher until `stop` is set (or one successful pass, with once=True).

    Wakes when a log starts or ends or a segment is sealed (shipper/wakeups.py; appends wake nothing),
    and passes over the spool every checkpoint interval (every second where the kernel cannot tell it
    what changed: no inotify, or its watch limit reached). Every failed pass is retried with capped
    backoff, forever: the data waits in the spool meanwhile.
    """
    stop = stop or asyncio.Event()
    store = open_store(cfg.store)
    w = Watcher(cfg, store)
    event(log, "watcher_started", "watcher started: spool {spool}, store {store}, checkpoint every {interval:g} s",
          spool=str(cfg.spool_dir), store=store.url, interval=cfg.watch.checkpoint_seconds, once=once)
    cfg.spool_dir.mkdir(parents=True, exist_ok=True)
    wake = asyncio.Event()
    notifier = None if once else SpoolWatch.start(cfg.spool_dir, wake)
    fallback = (None if once or notifier is not None  # no inotify here: watchfiles, appends filtered out
                else asyncio.create_task(wakeups.portable(cfg.spool_dir, wake, stop)))
    scheduled = None if once or alongside is None else alongside(store, stop)
    backoff = Backoff()
    periodic_at = 0.0  # monotonic time of the next periodic pass (a wake-up's pass does not move it)
    try:
        while not stop.is_set():
            wake.clear()
            periodic = time.monotonic() >= periodic_at
            try:
                await w.run_once()
            except* StoreError as group:
                failure: BaseException | None = _first_leaf(group)
            else:
                failure = None
            if failure is not None:
                w.stats["retries"] += 1
                w.last_error = str(failure)
                delay = backoff.failed(w._quiet, "the store", failure)
                await asyncio.to_thread(w.write_state, False)
                await _wait(stop, delay)
                continue
            backoff.succeeded(log, "the store")
            w.last_error = ""
            await asyncio.to_thread(w.write_state, True)
            if once:
                if await w.drain_copies():
                    continue  # one more pass records the copies in the manifests
                break
            if notifier is not None:
                notifier.ensure()
            if periodic:  # measured from the pass's end: a checkpoint taken in it is due again at the next one
                periodic_at = time.monotonic() + _period(cfg, notifier)
            await _wait(stop, max(0.0, periodic_at - time.monotonic()), wake)
    finally:
        await w.cancel_copies()  # a restart finds the segments the manifest does not mark copied
        if scheduled is not None:  # stopped anywhere, gc and compaction are finished by a later run
            scheduled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduled
        if notifier is not None:
            notifier.close()
        if fallback is not None:
            fallback.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fallback
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


def _period(cfg: Config, notifier: SpoolWatch | None) -> float:
    """Seconds between periodic passes: the checkpoint interval, or at most a second when nothing wakes
    the watcher for a sealed segment or a new log (no inotify, or not on every directory)."""
    if notifier is None or notifier.broken:
        return min(1.0, cfg.watch.checkpoint_seconds)
    return cfg.watch.checkpoint_seconds


def main(cfg: Config, *, once: bool = False, alongside: Alongside | None = None) -> int:
    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        w = await watch(cfg, once=once, stop=stop, alongside=alongside)
        log.info("watcher stopped: %s", " ".join(f"{k}={v}" for k, v in w.stats.items()),
                 extra={"event": "watcher_stopped", **w.stats})
        return 0 if not w.last_error else 1

    return asyncio.run(run())
