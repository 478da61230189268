"""Which logs have nothing new since the watcher last finished with them, told by a stat or two: a pass
over idle logs should cost a stat per log, not index reads and JSON parsing (docs/checkpoints.md §12).

A log is settled when a pass shipped all it held and left nothing pending (the caller says so, with how
much of the open segment the store holds). It stays settled while its directory (every entry created,
renamed or removed changes the directory's mtime), its open segment's size and its agent's life stay as
they were. Every FULL_PASS_SECONDS all logs are looked at again, for what time alone changes (pruning
by age, tombstones) and anything a stat cannot see.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipper.format import names

from .spool import agent_alive

FULL_PASS_SECONDS = 60.0
# A directory whose mtime is this close to when it was looked at may change again within the same
# timestamp tick (file times come from a coarse clock), unseen: such a look settles nothing.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class Look:
    """A log directory's stat, taken before the pass read the log."""

    mtime_ns: int
    ino: int
    taken_ns: int
    open_seq: int | None = None  # the open segment the pass found
    run: dict[str, Any] | None = None  # run.json of a log still running (its agent is checked), else None
    alive: bool | None = None  # its agent's check, when the pass made it already (/proc read once a pass)


@dataclass(frozen=True)
class _Settled:
    look: Look
    open_path: str | None
    open_size: int
    pid: int | None  # the agent of a running log


class Settled:
    def __init__(self) -> None:
        self._logs: dict[Path, _Settled] = {}
        self._full_at = time.monotonic()
        self._full = True

    def begin_pass(self) -> bool:
        """Called at each pass; True (and everything is looked at again) once every FULL_PASS_SECONDS."""
        self._full = time.monotonic() - self._full_at >= FULL_PASS_SECONDS
        if self._full:
            self._logs.clear()
            self._full_at = time.monotonic()
        return self._full

    def unchanged(self, d: Path) -> bool:
        """Whether log `d` is settled and still as it was (a stat of it and of its open segment)."""
        s = self._logs.get(d)
        if s is None:
            return False
        try:
            st = os.lstat(d)
            same = (st.st_mtime_ns, st.st_ino) == (s.look.mtime_ns, s.look.ino) and (
                s.open_path is None or os.lstat(s.open_path).st_size == s.open_size)
            if same and s.pid is not None:
                # An agent killed changes no file. A signal 0 is cheap; that the pid is still our agent's
                # and not reused (its start time in /proc) is checked when the log was settled.
                os.kill(s.pid, 0)
        except PermissionError:  # a process of another user: alive
            pass
        except OSError:  # gone: a file, or the agent (ProcessLookupError)
            same = False
        if not same:
            del self._logs[d]
        return same

    def look(self, d: Path) -> Look | None:
        try:
            st = os.lstat(d)
        except OSError:
            return None
        return Look(st.st_mtime_ns, st.st_ino, time.time_ns())

    def settle(self, d: Path, look: Look | None, covered: int | None) -> None:
        """A pass that read the log after `look` finished with it, nothing pending; the store holds the
        first `covered` bytes of its open segment (None: none or unknown)."""
        if look is None or look.taken_ns - look.mtime_ns < RACY_NS:
            return
        size = 0
        path = None
        if look.open_seq is not None:
            path = str(names.spool_segment(d, look.open_seq, open_=True))
            try:
                size = os.lstat(path).st_size
            except OSError:
                return
            if size and covered != size:  # bytes not yet checkpointed: the next checkpoint is due for them
                return
        if look.run is not None and not (look.alive if look.alive is not None else agent_alive(look.run)):
            return
        self._logs[d] = _Settled(look, path, size, int(look.run["agent_pid"]) if look.run is not None else None)

    def forget(self, d: Path) -> None:
        self._logs.pop(d, None)
