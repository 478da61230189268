"""Pruning: the spool keeps a segment the store holds for spool.keep_uploaded_seconds, then deletes it;
a shipped log's directory goes after TOMBSTONE_SECONDS (its run.json refuses a second run until then)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

from shipper.format import names

from ..spool import SpoolLog, open_child_dir, open_log_dir, read_log
from .state import TOMBSTONE_SECONDS, LogState


class Pruner:
    """Deletes what the store holds from the spool; counts it in the watcher's `stats`."""

    def __init__(self, spool: Path, keep_seconds: float, stats: dict[str, int], query_copy: bool) -> None:
        self.spool = spool
        self.keep_seconds = keep_seconds  # cfg.spool.keep_uploaded_seconds
        self.stats = stats
        self.query_copy = query_copy  # a segment waits for its query copy before it goes

    def due(self, sl: SpoolLog, st: LogState) -> bool:
        """Whether `prune` may delete anything now (on the loop, each pass): not while the log's segments are as
        the last prune saw them and its oldest kept one is younger than keep_uploaded_seconds. A 10 KB/s log
        keeps a sealed segment 600 s: its every checkpoint pass made a thread hop here for nothing."""
        return (st.prune_seen != (tuple(sl.sealed), len(st.committed), len(st.copied), sl.finished)
                or time.time() >= st.prune_at)

    def prune(self, sl: SpoolLog, st: LogState) -> None:
        """Delete sealed segments the store holds once they are older than spool.keep_uploaded_seconds."""
        now = time.time()
        cutoff = now - self.keep_seconds
        st.prune_seen = (tuple(sl.sealed), len(st.committed), len(st.copied), sl.finished)
        st.prune_at = now + self.keep_seconds  # a segment that becomes prunable later changes what is seen
        shipped_file = (sl.dir / names.SHIPPED_FILE).exists()
        seqs = [s for s in sl.sealed if shipped_file or (s in st.committed and (s in st.copied or not self.query_copy))]
        if not seqs:
            return
        fd = open_log_dir(self.spool, sl.dir.parent.name, sl.dir.name)
        try:
            for seq in seqs:
                kept = self._prune_segment(fd, sl.dir, seq, cutoff)
                if kept is not None:
                    st.prune_at = min(st.prune_at, kept + self.keep_seconds)
        finally:
            os.close(fd)

    def prune_shipped(self, d: Path) -> None:
        cutoff = time.time() - self.keep_seconds
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

    def _prune_segment(self, fd: int, d: Path, seq: int, cutoff: float) -> float | None:
        """Delete segment `seq` if older than `cutoff`; the mtime of one kept for its age (else None)."""
        name = names.spool_segment(d, seq).name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_mtime > cutoff:
                return st.st_mtime
            os.unlink(name, dir_fd=fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(names.spool_index(d, seq).name, dir_fd=fd)
        except FileNotFoundError:
            return None
        self.stats["pruned_segments"] += 1
        return None
