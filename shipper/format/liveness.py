"""liveness.json: the agent's last look at its task (its process tree, the time of its last output byte and the
silence events), written by shipper/monitor.py into the log's spool directory and read by the watcher and API.

A spool file is untrusted (the spool is group-writable): `loads` and `read` check every field and bound every
size, and a bad file is no liveness (None), never an exception and never a wrong value passed on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1
LIVENESS_MAX = 1 << 20  # bytes of the file: 2 x MAX_PROCESSES entries of at most ~1.3 KB each fit
MAX_PROCESSES = 256  # entries of one tree kept (the root first, then by pid); processes_total counts them all
MAX_EVENTS = 16  # the newest silence events kept; only the newest keeps its tree
COMMAND_CHARS = 200
STORED_PROCESSES = 64  # entries of a tree the store keeps (manifest, liveness object): they go up often
SILENT_NS = 10 * 10**9  # a sample this long after the task's last output shows it silent (`silent`)
STORED_MAX = 64 << 10  # bytes of a stored liveness document (STORED_PROCESSES entries and the events fit)
WCHAN_CHARS = 64
ACTIONS = ("warn", "kill")
_MAX_NS = (1 << 63) - 1
_MAX_PID = (1 << 31) - 1
_MAX_SECONDS = 1e12  # CPU or silence seconds beyond this are not a process's
_STATE_RE = re.compile(r"[A-Za-z]")  # the letter of /proc/PID/stat
_WCHAN_RE = re.compile(rf"[A-Za-z0-9_.$]{{0,{WCHAN_CHARS}}}")  # a kernel symbol, or ""
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class BadLiveness(ValueError):
    """What is wrong with a liveness document (`parse`); `loads` and `read` turn it into None."""


@dataclass(frozen=True)
class Process:
    """One process as `ps -o pid,ppid,stat,time,rss,cmd,wchan` shows it; field order is the JSON's."""

    pid: int
    ppid: int
    state: str  # the letter of /proc/PID/stat: R S D Z T t X I ...
    cpu_seconds: float  # its own utime+stime, like ps's TIME
    rss_bytes: int
    command: str  # its command line, cut to COMMAND_CHARS
    wchan: str  # the kernel function it sleeps in, "" when running or unreadable

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "state": self.state, "cpu_seconds": round(self.cpu_seconds, 3),
                "rss_bytes": self.rss_bytes, "command": self.command, "wchan": self.wchan}


@dataclass(frozen=True)
class SilenceEvent:
    """The task reached --silence-timeout: what the agent did (warn, kill) and the tree it saw then."""

    action: str  # "warn" or "kill"
    at_ns: int
    silent_seconds: float
    processes: tuple[Process, ...] = ()  # kept only in the newest event (the kill's tree, for a kill)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "at_ns": self.at_ns, "silent_seconds": round(self.silent_seconds, 3),
                "processes": [p.to_json() for p in self.processes]}


@dataclass(frozen=True)
class Liveness:
    written_ns: int  # when the agent wrote it: the last one of a finished log is written at its end
    last_output_ns: int  # the wall-clock time of the task's last output byte (its start, before any)
    sampled_ns: int | None  # None: no sample (no /proc)
    cpu_seconds: float | None  # the whole tree's since it started, exited members included
    processes: tuple[Process, ...] = ()
    processes_total: int = 0  # members of the tree; `processes` holds the first MAX_PROCESSES
    silence_timeout: float | None = None  # the run's --silence-timeout in seconds, None when off
    on_silence: str | None = None  # "warn" or "kill" with a timeout
    events: tuple[SilenceEvent, ...] = field(default=())

    def silent_seconds(self, now_ns: int | None = None) -> float:
        """Seconds without output as of `now_ns` (a running log's reader gives the time now), else as of
        when the file was written (a finished log: the silence at its end)."""
        return max(0, (self.written_ns if now_ns is None else now_ns) - self.last_output_ns) / 1e9

    def to_json(self, now_ns: int | None = None) -> dict[str, Any]:
        """The `liveness` object of the API (DESIGN §9), with the silence policy and events after it."""
        return {"last_output_ns": self.last_output_ns, "silent_seconds": round(self.silent_seconds(now_ns), 3),
                "sampled_ns": self.sampled_ns,
                "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 3),
                "processes": [p.to_json() for p in self.processes], "processes_total": self.processes_total,
                "silence": None if self.silence_timeout is None else
                {"timeout_seconds": self.silence_timeout, "action": self.on_silence},
                "events": [e.to_json() for e in self.events]}


def cut(processes: list[Process] | tuple[Process, ...]) -> tuple[Process, ...]:
    """What a document keeps of a tree: the first MAX_PROCESSES, each field cut to what `parse` takes."""
    return tuple(Process(p.pid, p.ppid, p.state, p.cpu_seconds, p.rss_bytes, p.command[:COMMAND_CHARS],
                         p.wchan if _WCHAN_RE.fullmatch(p.wchan) else "") for p in processes[:MAX_PROCESSES])


def dumps(doc: Liveness) -> bytes:
    """The file's bytes: version 1, with silent_seconds as of writing for a reader of the raw file. Only the
    newest MAX_EVENTS events are kept, and only the newest keeps its tree, so the file stays bounded."""
    events = doc.events[-MAX_EVENTS:]
    events = tuple(SilenceEvent(e.action, e.at_ns, e.silent_seconds, ()) for e in events[:-1]) + events[-1:]
    body = Liveness(doc.written_ns, doc.last_output_ns, doc.sampled_ns, doc.cpu_seconds, cut(doc.processes),
                    doc.processes_total, doc.silence_timeout, doc.on_silence,
                    tuple(SilenceEvent(e.action, e.at_ns, e.silent_seconds, cut(e.processes)) for e in events))
    out = {"version": VERSION, "written_ns": body.written_ns, **body.to_json()}
    return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


def silent(doc: Liveness) -> bool:
    """Whether the sample shows its task silent (SILENT_NS since its last output). The watcher sends a
    change of this at once (shipper/liveness_ship.py), so a reader of the store counts a silent sample's
    silence on to the time of its answer, and a busy one's only to when it was written."""
    return doc.written_ns - doc.last_output_ns >= SILENT_NS


def for_store(doc: Liveness) -> Liveness:
    """The copy the store keeps (the manifest's `liveness`, the liveness object): the first STORED_PROCESSES
    of the tree (processes_total still counts them all), the events' trees cut the same way."""
    return dataclasses.replace(
        doc, processes=cut(doc.processes[:STORED_PROCESSES]), events=tuple(
            dataclasses.replace(e, processes=cut(e.processes[:STORED_PROCESSES])) for e in doc.events[-MAX_EVENTS:]))


def stored_json(doc: Liveness) -> dict[str, Any]:
    """The stored document's JSON: what `dumps` writes, so `parse_stored` reads it back to the same value."""
    out: dict[str, Any] = json.loads(dumps(for_store(doc)))
    return out


def parse_stored(doc: Any) -> Liveness:
    """A stored liveness document (BadLiveness): what `parse` checks, and at most STORED_PROCESSES per tree."""
    got = parse(doc)
    if len(got.processes) > STORED_PROCESSES or any(len(e.processes) > STORED_PROCESSES for e in got.events):
        raise BadLiveness(f"more than the {STORED_PROCESSES} processes a stored liveness keeps")
    return got


def loads(data: bytes) -> Liveness | None:
    """The document in `data`, or None when it is not one the agent writes (whatever is wrong with it)."""
    if len(data) > LIVENESS_MAX:
        return None
    try:
        return parse(json.loads(data))
    except (ValueError, RecursionError):  # BadLiveness, not JSON, invalid UTF-8
        return None


def read(path: Path, *, dir_fd: int | None = None) -> Liveness | None:
    """liveness.json at `path` (its name in `dir_fd` when given): None when absent, unreadable, a symbolic
    link, not a regular file, too large, or not what the agent writes."""
    try:
        fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > LIVENESS_MAX:
            return None
        data = os.read(fd, LIVENESS_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return loads(data)


# --- checks ---------------------------------------------------------------------------------------------


def parse(doc: Any) -> Liveness:
    """A checked Liveness from decoded JSON (liveness.json, or the copy a manifest carries); BadLiveness
    says what is wrong. Unknown keys are ignored (a newer agent may add some); known ones must be right."""
    if not isinstance(doc, dict):
        raise BadLiveness(f"not an object but {type(doc).__name__}")
    if doc.get("version") != VERSION:
        raise BadLiveness(f"version {doc.get('version')!r} is not {VERSION}")
    procs = _processes(doc, "processes")
    total = _int(doc, "processes_total", 0, _MAX_PID)
    if total < len(procs):
        raise BadLiveness(f"processes_total {total} is less than the {len(procs)} processes listed")
    silence = doc.get("silence")
    timeout: float | None = None
    action: str | None = None
    if silence is not None:
        if not isinstance(silence, dict):
            raise BadLiveness("silence is not an object")
        timeout = _seconds(silence, "timeout_seconds")
        action = _action(silence)
    events = doc.get("events", [])
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise BadLiveness(f"events is not a list of at most {MAX_EVENTS}")
    sampled = doc.get("sampled_ns")
    cpu = doc.get("cpu_seconds")
    return Liveness(_int(doc, "written_ns", 0, _MAX_NS), _int(doc, "last_output_ns", 0, _MAX_NS),
                    None if sampled is None else _int(doc, "sampled_ns", 0, _MAX_NS),
                    None if cpu is None else _seconds(doc, "cpu_seconds"),
                    procs, total, timeout, action, tuple(_event(e) for e in events))


def _event(e: Any) -> SilenceEvent:
    if not isinstance(e, dict):
        raise BadLiveness("an event is not an object")
    return SilenceEvent(_action(e), _int(e, "at_ns", 0, _MAX_NS), _seconds(e, "silent_seconds"),
                        _processes(e, "processes"))


def _action(d: dict[str, Any]) -> str:
    if d.get("action") not in ACTIONS:
        raise BadLiveness(f"action {d.get('action')!r} is not one of {', '.join(ACTIONS)}")
    return str(d["action"])


def _processes(d: dict[str, Any], key: str) -> tuple[Process, ...]:
    items = d.get(key, [])
    if not isinstance(items, list) or len(items) > MAX_PROCESSES:
        raise BadLiveness(f"{key} is not a list of at most {MAX_PROCESSES}")
    return tuple(_process(p) for p in items)


def _process(p: Any) -> Process:
    if not isinstance(p, dict):
        raise BadLiveness("a process is not an object")
    state, command, wchan = p.get("state"), p.get("command"), p.get("wchan")
    if not isinstance(state, str) or not _STATE_RE.fullmatch(state):
        raise BadLiveness(f"state {state!r} is not a process state letter")
    if not isinstance(command, str) or len(command) > COMMAND_CHARS or not _utf8(command):
        raise BadLiveness(f"command is not a string of at most {COMMAND_CHARS} characters")
    if not isinstance(wchan, str) or not _WCHAN_RE.fullmatch(wchan):
        raise BadLiveness(f"wchan {wchan!r} is not a kernel symbol")
    return Process(_int(p, "pid", 1, _MAX_PID), _int(p, "ppid", 0, _MAX_PID), state, _seconds(p, "cpu_seconds"),
                   _int(p, "rss_bytes", 0, _MAX_NS), command, wchan)


def _utf8(s: str) -> bool:
    """JSON can carry lone surrogates (\\ud800), which no UTF-8 answer can: such a string is refused here."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise BadLiveness(f"{key} {v!r} is not a whole number from {lo} to {hi}")
    return v


def _seconds(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= _MAX_SECONDS:
        raise BadLiveness(f"{key} {v!r} is not a number of seconds")
    return float(v)
