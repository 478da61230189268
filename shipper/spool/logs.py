"""Reading the spool (watcher and API): the logs it holds, each read in one pass over its directory, its
run.json and exit.json checked against what the agent writes, and whether its agent still runs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipper.format import names

from .files import DAMAGE_HINT, SpoolDamaged, open_log_dir, read_json

if TYPE_CHECKING:
    from .cache import JsonCache

RUN_ID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass
class SpoolLog:
    """What the spool holds of one log, read in one pass over its directory."""

    task: str
    host: str
    dir: Path
    run: dict[str, Any]
    exit: dict[str, Any] | None
    sealed: list[int] = field(default_factory=list)
    open: int | None = None  # the segment the agent appends to
    sealing: list[int] = field(default_factory=list)  # closed by the agent, not yet renamed

    @property
    def finished(self) -> bool:
        return self.exit is not None

    def unsealed_bytes(self) -> int:
        """Bytes of the segments the agent has not sealed (sealing and open), logs and indexes.

        The agent's sealer renames them while we read (index, then log): each file is looked for under its
        open name, then its sealed one, the rename's order, so it counts once. Looked for under its open
        name alone, a segment sealed since the listing counted 0 and the quota let the spool pass it."""
        size = 0
        for seq in (*self.sealing, *([self.open] if self.open is not None else [])):
            for name in (names.spool_segment, names.spool_index):
                size += _size_either(name(self.dir, seq, open_=True), name(self.dir, seq))
        return size


def read_log(log_dir: Path, cache: JsonCache | None = None) -> SpoolLog | None:
    """The spool state of one log directory, or None if the agent has not written run.json yet.

    Raises SpoolDamaged when run.json or exit.json is not what the agent writes (or names another
    log than its directory), or a segment is a symbolic link: such a log is set aside, not shipped.
    """
    try:
        fd = open_log_dir(log_dir.parent.parent, log_dir.parent.name, log_dir.name)
    except FileNotFoundError:
        return None
    try:
        run = _read(cache, log_dir / names.RUN_FILE, fd, lambda doc: check_run(doc, log_dir))
        if run is None:
            return None
        exit_ = _read(cache, log_dir / names.EXIT_FILE, fd, lambda doc: check_exit(doc, log_dir))
        log = SpoolLog(run["task"], run["host"], log_dir, run, exit_)
        with os.scandir(fd) as it:
            for entry in it:
                n = entry.name
                if len(n) >= 12 and n[8:12] in (".log", ".idx") and n[:8].isdigit():
                    if entry.is_symlink():
                        raise SpoolDamaged(f"{log_dir / n} is a symbolic link; refusing to follow it out of "
                                           "the spool", DAMAGE_HINT)
                    if n[8:12] == ".idx":
                        continue
                    if n[12:] == names.OPEN_SUFFIX:
                        log.sealing.append(int(n[:8]))
                    elif n[12:] == "":
                        log.sealed.append(int(n[:8]))
    finally:
        os.close(fd)
    log.sealed.sort()
    log.sealing = sorted(set(log.sealing) - set(log.sealed))  # renamed while we listed
    if log.sealing:
        log.open = log.sealing.pop()
    return log


def _size_either(first: Path, then: Path) -> int:
    for path in (first, then):
        with contextlib.suppress(FileNotFoundError):
            return os.lstat(path).st_size
    return 0


def _read(cache: JsonCache | None, path: Path, fd: int, check: Callable[[Any], None]) -> Any:
    if cache is not None:
        return cache.read(path, dir_fd=fd, check=check)
    doc = read_json(path, dir_fd=fd)
    if doc is not None:
        check(doc)
    return doc


def _bad(path: Path, what: str) -> SpoolDamaged:
    return SpoolDamaged(f"{path}: {what}", DAMAGE_HINT)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_run(run: Any, log_dir: Path) -> None:
    """run.json is the agent's: the log's ids (those of its directory), a run id, how it started."""
    path = log_dir / names.RUN_FILE
    if not isinstance(run, dict):
        raise _bad(path, f"not a JSON object but {type(run).__name__}")
    for key in ("task", "host"):
        if not isinstance(run.get(key), str) or not names.ID_RE.fullmatch(run[key]):
            raise _bad(path, f"{key} {run.get(key)!r} is not a valid {key} id ({names.ID_RULE})")
    if (run["task"], run["host"]) != (log_dir.parent.name, log_dir.name):
        raise _bad(path, f"it names the log {run['task']}/{run['host']}, but lies in {log_dir.parent.name}/"
                         f"{log_dir.name}")
    if not isinstance(run.get("run_id"), str) or not RUN_ID_RE.fullmatch(run["run_id"]):
        raise _bad(path, f"run_id {run.get('run_id')!r} is not 32 hex digits")
    if not _is_int(run.get("started_ns")) or run["started_ns"] < 0:
        raise _bad(path, f"started_ns {run.get('started_ns')!r} is not a time in ns")
    if not isinstance(run.get("command"), list) or not all(isinstance(a, str) for a in run["command"]):
        raise _bad(path, "command is not a list of strings")
    labels = run.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise _bad(path, "labels are not an object of strings")
    for key in ("agent_pid", "agent_start_ticks", "child_pid"):
        if run.get(key) is not None and (not _is_int(run[key]) or run[key] < 0):
            raise _bad(path, f"{key} {run[key]!r} is not a process id or tick count")
    if not _is_int(run.get("agent_pid")):
        raise _bad(path, "agent_pid is missing")


def check_exit(doc: Any, log_dir: Path) -> None:
    """exit.json is the agent's (or the watcher's for a dead agent): how the run ended."""
    path = log_dir / names.EXIT_FILE
    if not isinstance(doc, dict):
        raise _bad(path, f"not a JSON object but {type(doc).__name__}")
    if doc.get("status") not in ("finished", "lost"):
        raise _bad(path, f"status {doc.get('status')!r} is neither 'finished' nor 'lost'")
    for key in ("exit_code", "signal"):
        if doc.get(key) is not None and not _is_int(doc[key]):
            raise _bad(path, f"{key} {doc[key]!r} is not a number")
    if not _is_int(doc.get("ended_ns")) or doc["ended_ns"] < 0:
        raise _bad(path, f"ended_ns {doc.get('ended_ns')!r} is not a time in ns")
    if not _is_int(doc.get("dropped_bytes", 0)) or doc.get("dropped_bytes", 0) < 0:
        raise _bad(path, f"dropped_bytes {doc.get('dropped_bytes')!r} is not a byte count")


def iter_logs(spool: Path, refused: list[Path] | None = None) -> list[Path]:
    """Every log directory in the spool (`<spool>/<task>/<host>`).

    A symbolic link in their place is never followed: it is left out, and added to `refused`.
    """
    out = []
    try:
        tasks = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for task in tasks:
        if not names.ID_RE.fullmatch(task.name):
            continue
        if task.is_symlink():
            if refused is not None:
                refused.append(Path(task.path))
            continue
        if not task.is_dir(follow_symlinks=False):
            continue
        try:
            hosts = sorted(os.scandir(task.path), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for host in hosts:
            if not names.ID_RE.fullmatch(host.name):
                continue
            if host.is_symlink():
                if refused is not None:
                    refused.append(Path(host.path))
            elif host.is_dir(follow_symlinks=False):
                out.append(Path(host.path))
    return out


def pid_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks (/proc), to tell a live agent from a reused pid."""
    try:  # os.read, not pathlib's read_text: the watcher asks this of every running log each pass
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        stat = os.read(fd, 4096).decode(errors="replace")
    except ProcessLookupError:  # the process went between the open and the read
        return None
    finally:
        os.close(fd)
    # the command name may hold spaces or ')': split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def agent_alive(run: dict[str, Any]) -> bool:
    ticks = pid_start_ticks(int(run["agent_pid"]))
    return ticks is not None and ticks == run.get("agent_start_ticks")
