"""The ship pass: one pass over the spool, then each log in turn (DESIGN §2, §4): what the store holds of it
(_load), its sealed segments and a checkpoint of the open one, then its manifest after the objects it names
(_commit)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from shipper import catalog
from shipper.format import liveness, manifest, names
from shipper.format.manifest import Manifest, ManifestError

from .. import watcher_state
from ..checkpoint import Prepared, Uploads, prefix_keys
from ..config import Config
from ..errors import ObjectNotFound, StoreError
from ..liveness_ship import LivenessShip
from ..logs import event
from ..quota import enforce_quota, is_quota_drop, read_dropped
from ..retry import QuietLog
from ..settled import Look, Settled
from ..spool import (
    JsonCache,
    SpoolDamaged,
    SpoolLog,
    agent_alive,
    iter_logs,
    open_log_dir,
    read_log,
    recover_open_segment,
    write_json_atomic,
)
from ..store import Store
from . import off_chain
from .adopt import adopt
from .damage import Damage, segment_start
from .prune import Pruner
from .query_copies import QueryCopies
from .spool_total import SpoolTotal
from .state import (
    DUE_EARLY,
    SET_ASIDE_RETRY_SECONDS,
    STORE_PROBE_SECONDS,
    UPLOAD_CONCURRENCY,
    LogState,
    ManifestDamaged,
)

log = logging.getLogger("logship.watcher")


@dataclasses.dataclass
class Found:
    """What the local pass read of a log it hands to the ship, so that the ship reads none of it again: the
    common pass (one running log that grew) is one thread hop, not one per file (docs/checkpoints.md §12)."""

    sl: SpoolLog
    dropped: list[dict[str, Any]] | SpoolDamaged  # raised where the ship reads it, as before
    alive: bool | None = None  # its agent runs (None: not asked, the log has no open segment)
    checkpoint: Prepared | None = None  # the due checkpoint read, checked and encoded (a continued chain)
    sample: liveness.Liveness | None = None  # the agent's sample of a running log (shipper/liveness_ship.py)


class Watcher:
    """One pass over the spool at a time (run_once); it composes the damage handling, the query copies and
    the pruning, each in its own module, and shares its `logs` and `stats` with them."""

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
        self.last_error = ""
        self.started_ns = time.time_ns()
        self.last_ok_ns = 0  # end of the last pass that reached the store: `logship watch --check`
        self._probed = -float(STORE_PROBE_SECONDS)  # monotonic time of the last store probe that answered
        self._sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)
        self._quiet = QuietLog(log)
        self.uploads = Uploads(store, self.compression, self.stats, deltas=cfg.watch.checkpoint_deltas,
                               quiet=self._quiet)
        self.liveness = LivenessShip(store, self.stats)  # issue 15: the agent's liveness.json to the store
        self.copies = QueryCopies(store, self.stats, self._quiet, cfg.query.copy)
        self.damage = Damage(self.spool, self.logs, self.stats, self.set_aside, self._quiet)
        self.pruner = Pruner(self.spool, cfg.spool.keep_uploaded_seconds, self.stats, cfg.query.copy)
        self.settled = Settled()  # logs with nothing new: a pass looks at them with a stat (shipper/settled.py)
        self._looks: dict[Path, Look] = {}
        self._found: dict[Path, Found] = {}
        self._json = JsonCache()  # run.json, exit.json, dropped.json: parsed again only when changed
        self._total = SpoolTotal()  # whether the quota's scan of the spool is needed

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
        if not os.path.isdir(self.spool):  # a stat a pass; mkdir's way (an error, then a stat) costs more
            self.spool.mkdir(parents=True, exist_ok=True)
        full = self.settled.begin_pass()
        if full:
            self._json.clear()
        self._total.begin_pass(full)
        self._found.clear()
        dirs = []
        refused: list[Path] = []
        for d in iter_logs(self.spool, refused):
            st = self.logs.get(d)
            if st is not None and st.set_aside and time.monotonic() - st.set_aside_at < SET_ASIDE_RETRY_SECONDS:
                self._total.unknown()
                continue
            if self.settled.unchanged(d):
                continue
            look = self.settled.look(d)
            try:
                if (d / names.SHIPPED_FILE).exists():
                    self.pruner.prune_shipped(d)
                    self.settled.settle(d, look, None)
                    continue
                found = self._read(d, st)
                if found is None:
                    continue
                sl = found.sl
                if look is not None:
                    self._looks[d] = dataclasses.replace(look, open_seq=sl.open, run=None if sl.finished else sl.run,
                                                         alive=found.alive)
                self._found[d] = found
                dirs.append(d)
            except SpoolDamaged as exc:
                self._total.unknown()
                self.damage.set_aside(d, exc.detail)
            except OSError as exc:
                self._total.unknown()
                self.damage.spool_error(d, exc)
        for link in refused:
            self.damage.refuse_link(link)
        if not dirs and not full:
            return dirs  # nothing changed since the last quota check but time: the spool holds what it held
        quota = self.cfg.spool.quota_bytes
        used = self._total.estimate(quota)
        if used is not None:  # within the quota for sure: no scan of the whole spool
            self.stats["spool_bytes"] = used
            return dirs
        used, dropped = enforce_quota(self.spool, quota, lambda d, seq: seq in self.logs.get(d, LogState()).committed)
        self._total.scanned(used)
        self._found.clear()  # the scan may have deleted segments: each ship reads its log again, as it did before
        self.stats["spool_bytes"] = used
        for d, entry in dropped:
            self.stats["dropped_segments"] += 1
            self.stats["dropped_bytes"] += entry["raw_size"]
            self.logs.setdefault(d, LogState()).dirty = True
            log.warning("spool quota reached: dropped segment %s of %s/%s (%d bytes)",
                        entry["seq"], d.parent.name, d.name, entry["raw_size"])
        return dirs

    def _read(self, d: Path, st: LogState | None) -> Found | None:
        """A log's spool files for its ship (in the local pass's thread): a dead agent's segments sealed
        first; a due checkpoint that continues the chain read, checked and encoded here too."""
        sl = read_log(d, self._json)
        if sl is None:
            return None
        alive = agent_alive(sl.run) if sl.sealing or sl.open is not None else None  # /proc read once a pass
        if alive is False:
            self._recover(sl)
            sl = read_log(d, self._json)  # what the recovery left
            if sl is None:
                return None
        self._total.count(sl)
        try:
            dropped: list[dict[str, Any]] | SpoolDamaged = read_dropped(d, self._json)
        except SpoolDamaged as exc:
            return Found(sl, exc, alive)
        found = Found(sl, dropped, alive)
        if not sl.finished:
            found.sample = liveness.read(d / names.LIVENESS_FILE)
        if (alive and st is not None and not st.conflict and not st.retired and not sl.finished
                and sl.open is not None and self._due(st) and self.uploads.continues(st, sl.open)):
            found.checkpoint = self.uploads.prepare(sl, st)
        return found

    def _due(self, st: LogState) -> bool:
        return time.monotonic() - st.last_checkpoint >= self.cfg.watch.checkpoint_seconds * (1 - DUE_EARLY)

    def _recover(self, sl: SpoolLog) -> None:
        """Seal what a dead agent left open; mark its log lost unless it got to write exit.json."""
        st = self.logs.setdefault(sl.dir, LogState())
        left = [*sl.sealing, *([sl.open] if sl.open is not None else [])]
        for seq in left:
            dropped = read_dropped(sl.dir)
            start, nxt = segment_start(sl.dir, st, seq, dropped)
            check = recover_open_segment(sl.dir, seq, (start, nxt - 1) if start is not None and nxt else None)
            st.verified.add(seq)
            self.damage.check_done(sl.dir, seq, start, check, last=seq == left[-1])
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

    async def _ship(self, d: Path, found: Found | None = None) -> None:
        sl = found.sl if found is not None else await asyncio.to_thread(read_log, d, self._json)
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
        dropped = await self._dropped(d, found)
        gone = {e["seq"] for e in dropped if is_quota_drop(e)}  # whole segments dropped at the quota
        todo = [s for s in sl.sealed if s not in st.segments and s not in gone]
        if any(s not in st.verified for s in todo):  # each index against its bytes, before anything is sent
            todo = await asyncio.to_thread(self.damage.verify, sl, st, todo)
            dropped = await asyncio.to_thread(read_dropped, d, self._json)
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
        else:
            await self._checkpoint(sl, st, dropped, found)
        status = (sl.exit or {}).get("status", manifest.RUNNING) if sl.finished else manifest.RUNNING
        if st.dirty or status != st.manifest_status:
            # a quota drop of a segment that reached the store anyway is no loss; a range lost inside one is
            await self._commit(sl, st, status,
                               [e for e in dropped if not is_quota_drop(e) or e["seq"] not in st.segments])
        await self.liveness.ship(sl, found.sample if found is not None else None, known=found is not None)
        self.copies.schedule(sl, st)
        if (sl.finished and not sl.sealing and sl.open is None
                and all(s in st.committed or s in gone for s in sl.sealed) and self.copies.all_copied(st)):
            await asyncio.to_thread(self._write_log_json, d, names.SHIPPED_FILE,
                                    {"run_id": sl.run["run_id"], "shipped_ns": time.time_ns()})
            event(log, "log_finished", "{task}/{host}: log {status}, exit code {exit_code}; all shipped ({segments} "
                  "segments)", task=sl.task, host=sl.host, status=status, exit_code=(sl.exit or {}).get("exit_code"),
                  segments=len(st.committed))
            del self.logs[d]
        if sl.sealed and self.pruner.due(sl, st):  # no thread hop for a log with none, or none old enough
            await asyncio.to_thread(self.pruner.prune, sl, st)
        if st.set_aside is not None:
            self.damage.restore(d, st)

    async def _checkpoint(self, sl: SpoolLog, st: LogState, dropped: list[dict[str, Any]], found: Found | None
                          ) -> None:
        """A checkpoint of the running log's open segment, when one is due."""
        if (sl.open is not None and self._due(st)
                and (self.uploads.continues(st, sl.open)
                     or await asyncio.to_thread(self.damage.open_index_ok, sl, st, dropped))):
            last, taken = st.last_checkpoint, self.stats["checkpoints"]
            await self.uploads.checkpoint(sl, st, found.checkpoint if found is not None else None)
            if self.stats["checkpoints"] == taken:  # nothing new: new bytes go at the next pass, not an interval on
                st.last_checkpoint = last

    async def _dropped(self, d: Path, found: Found | None) -> list[dict[str, Any]]:
        if found is None:
            return await asyncio.to_thread(read_dropped, d, self._json)
        if isinstance(found.dropped, SpoolDamaged):
            raise found.dropped
        return found.dropped

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
            await adopt(self.store, self.stats, self.damage, sl, st, listing, self.compression)
        self.uploads.learn(sl, st, listing)  # deltas: the chain to continue, or a segment to seal
        orphans = [o.key for o in listing if ".ckpt-" in o.key and o.key not in keep]
        # a watcher killed between a seal's commit and its delete of off-chain deltas (off_chain.py)
        st.deltas.off_chain += await off_chain.found(self.store, sl.task, sl.host, st.segments, listing)
        if st.deltas.off_chain:
            await off_chain.delete(self.store, self.stats, st)
        await self.store.delete(orphans)
        await self.store.abort_uploads(prefix)
        event(log, "log_started", "{task}/{host}: shipping run {run_id} ({segments} segments in the store already)",
              task=sl.task, host=sl.host, run_id=sl.run["run_id"], segments=len(st.segments))
        st.loaded = True

    async def _upload_segment(self, sl: SpoolLog, st: LogState, seq: int) -> None:
        async with self._sem:
            await self.uploads.seal(sl, st, seq)

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
        await off_chain.delete(self.store, self.stats, st)  # noted at seals this manifest now names

    # --- one log at a time: its bad files set it aside (damage.py), never stop the others ----------

    async def _ship_guarded(self, d: Path) -> None:
        """Ship one log; a damaged file sets that log aside, and only the store's faults stop the pass."""
        look = self._looks.pop(d, None)
        try:
            await self._ship(d, self._found.pop(d, None))
        except (SpoolDamaged, ManifestDamaged) as exc:
            self.damage.set_aside(d, exc.detail)
        except OSError as exc:
            self.damage.spool_error(d, exc)
        else:
            self._settle(d, look)

    def _settle(self, d: Path, look: Look | None) -> None:
        """After a pass shipped log `d`: if nothing is left pending, later passes look at it with a stat."""
        st = self.logs.get(d)
        if st is None or look is None or st.set_aside is not None:
            return
        if not st.conflict and (st.dirty or st.copying or st.stale_keys or st.deltas.off_chain
                                or not self.copies.all_copied(st)):
            return
        chain, ckpt = st.deltas.chain, st.checkpoint
        covered = None
        if chain is not None and chain.seq == look.open_seq:
            covered = chain.pos - chain.start
        elif ckpt is not None and ckpt.seq == look.open_seq:
            covered = ckpt.raw_size
        self.settled.settle(d, look, covered)

    def _write_log_json(self, d: Path, name: str, doc: dict[str, Any]) -> None:
        fd = open_log_dir(self.spool, d.parent.name, d.name)
        try:
            write_json_atomic(d / name, doc, dir_fd=fd)
        finally:
            os.close(fd)

    # --- state for --check and /metrics ----------------------------------------------------------

    def write_state(self, healthy: bool) -> None:
        """The state file now (when: shipper/watcher/state_file.py; `last_ok_ns` is the daemon's to move)."""
        try:
            watcher_state.write(self.spool, watcher_state.WatcherState(
                pid=os.getpid(), updated_ns=time.time_ns(), healthy=healthy, started_ns=self.started_ns,
                last_ok_ns=self.last_ok_ns, last_error=self.last_error, store=self.store.url,
                stats=self.stats, set_aside=self.set_aside, store_stats=self.store.stats.snapshot()))
        except OSError as exc:  # a full spool disk: shipping (which frees it) matters more than our state file
            self._quiet.log(logging.WARNING, "state", "cannot write %s: %s", names.WATCHER_STATE_FILE, exc)
