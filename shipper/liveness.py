"""Liveness of a running task: its process tree sampled from /proc, the time since its last output, and the
--silence-timeout policy (warn, or TERM then KILL). Linux /proc only, no dependency; the agent's liveness
thread (shipper/monitor.py) makes the calls, and shipper/format/liveness.py is what it writes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import astuple, dataclass, fields
from typing import Any, NamedTuple

from shipper.format import names
from shipper.format.liveness import COMMAND_CHARS, Process

from .config import AgentConfig
from .config_values import parse_duration
from .errors import ConfigError

SAMPLE_INTERVAL_S = 5.0  # a sample reads ~20 us per process on the machine, ~40 us per tree member (bench)
# Set in the task's environment: the one trace a setsid'd, double-forked daemon keeps of its task (no
# parent, group or session links it any more). Checked once per new process, so it costs little.
MARK_ENV = names.RUN_ID_ENV
SILENCE_ACTIONS = ("warn", "kill")
DEFAULT_ACTION = "warn"  # a flag that kills a long job must be asked for
KILL_GRACE_S = 10.0  # between TERM and KILL, as `docker stop` gives
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1.0, 30 * 86400.0  # under a second is a typo: samples come every few seconds
EXIT_SILENCE = 124  # what coreutils timeout(1) exits with
END_REASON = "silence"

_TICK, _PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    sampled_ns: int
    cpu_seconds: float  # the whole tree's since it started, exited processes included; never decreases
    processes: list[Process]  # the root first, then by pid

    def to_json(self) -> dict[str, Any]:
        return {"sampled_ns": self.sampled_ns, "cpu_seconds": round(self.cpu_seconds, 3),
                "processes": [dict(zip(_PROCESS_KEYS, astuple(p), strict=True)) for p in self.processes]}


_PROCESS_KEYS = tuple(f.name for f in fields(Process))


class _Stat(NamedTuple):
    comm: bytes
    ppid: int
    pgid: int
    sid: int
    start: int  # in ticks since boot: with the pid, names one process for its whole life
    fields: list[bytes]  # /proc/PID/stat from field 3 (state) on: field N is fields[N - 3]

    @property
    def total(self) -> int:
        """utime + stime + cutime + cstime: its CPU and that of the children it has reaped, in ticks."""
        f = self.fields
        return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])


def _read(path: str, size: int = 1024) -> bytes | None:
    # Any error means gone (ENOENT, ESRCH) or not ours (EACCES): what cannot be read is left out.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(proc: str, pid: int | str) -> _Stat | None:
    data = _read(f"{proc}/{pid}/stat", 4096)
    if not data:
        return None
    end = data.rfind(b")")  # the comm may hold spaces and ')': only the last ')' ends it
    f = data[end + 2:].split()
    try:  # an odd entry must not stop the agent's sampling: it is left out
        return _Stat(data[data.find(b"(") + 1:end], int(f[1]), int(f[2]), int(f[3]), int(f[19]), f)
    except (ValueError, IndexError):
        return None


class Sampler:
    """Samples the process tree of the task whose first process is `root_pid`: its descendants by parent,
    plus whatever is still in its own process group or session, plus processes that carry `mark` in
    MARK_ENV (daemons that left every other link). One listing of /proc and one read of stat per process
    on the machine; cmdline and wchan only for the tree's members."""

    def __init__(self, root_pid: int, *, mark: str | None = None, proc: str = "/proc") -> None:
        self.root, self.proc = root_pid, proc
        self.unavailable: str | None = None
        st = _stat(proc, root_pid)
        self._root_start = st.start if st else 0
        # A group or session we share holds more than the task (the shell that started us, the other
        # commands of a pipeline, Categraf's sh under --ibex): follow one only when it is the task's own.
        self.pgid = st.pgid if st and st.pgid != os.getpgid(0) else None
        self.sid = st.sid if st and st.sid != os.getsid(0) else None
        self._needle = f"\0{MARK_ENV}={mark}\0".encode() if mark else None
        self._marked: dict[int, tuple[int, bool]] = {}  # pid -> (start ticks, carries the mark)
        self._last: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, start) -> (total ticks, ppid)
        self._gone_ticks = 0  # CPU of exited members that no live member's cutime holds
        self._cpu = 0.0
        # The agent may sample from a thread of its own (the reads release the GIL, so its pump keeps
        # moving) while its pump thread takes the kill's samples: one sample at a time.
        self._lock = threading.Lock()

    def sample(self, now_ns: int | None = None) -> Sample | None:
        """The tree now, or None where there is no /proc (said once on stderr)."""
        with self._lock:
            return self._sample(now_ns)

    def _sample(self, now_ns: int | None) -> Sample | None:
        if self.unavailable:
            return None
        try:
            names = os.listdir(self.proc)
        except OSError as exc:
            self.unavailable = f"no {self.proc} ({exc.strerror}): the task's processes are not sampled"
            print(f"logship: {self.unavailable}", file=sys.stderr)
            return None
        sampled_ns = time.time_ns() if now_ns is None else now_ns
        stats: dict[int, _Stat] = {}
        children: dict[int, list[int]] = {}
        seeds: list[int] = []
        for name in names:
            if name.isdigit() and (st := _stat(self.proc, name)):
                pid = int(name)
                stats[pid] = st
                children.setdefault(st.ppid, []).append(pid)
                # the root (its start time: not a stranger that got its pid), its group, session or a marked one
                if (pid == self.root and st.start == self._root_start or self.pgid == st.pgid or self.sid == st.sid
                        or self._carries_mark(pid, st)):
                    seeds.append(pid)
        if self._needle:
            self._marked = {pid: v for pid, v in self._marked.items() if pid in stats}
        members: set[int] = set()
        while seeds:
            pid = seeds.pop()
            if pid in stats and pid not in members:
                members.add(pid)
                seeds.extend(children.get(pid, ()))
        order = sorted(members, key=lambda p: (p != self.root, p))
        return Sample(sampled_ns, self._account({p: stats[p] for p in order}),
                      [self._process(pid, stats[pid]) for pid in order])

    def _carries_mark(self, pid: int, st: _Stat) -> bool:
        # Only processes born after the task can carry its mark; each is read once in its life.
        if self._needle is None or st.start < self._root_start:
            return False
        known = self._marked.get(pid)
        if known is None or known[0] != st.start:
            env = _read(f"{self.proc}/{pid}/environ", 1 << 20) or b""
            known = self._marked[pid] = (st.start, self._needle in b"\0" + env)
        return known[1]

    def _account(self, live: dict[int, _Stat]) -> float:
        """The tree's cumulative CPU. Each live member's total includes the children it reaped, so summing
        them counts every exited member once, as long as it was reaped inside the tree. A member that left
        (reaped by init or by us, or re-parented out) takes its last seen total into `_gone_ticks`, unless a
        live member up its chain of parents holds it in cutime. What a process spent after its last sample
        and before a reaper outside the tree took it is not seen; max() keeps the counter from ever falling."""
        now = {(pid, st.start): (st.total, st.ppid) for pid, st in live.items()}
        last_ppid = {pid: ppid for (pid, _), (_, ppid) in self._last.items()}
        for key, (total, ppid) in self._last.items():
            if key in now:
                continue
            seen = {key[0]}
            while ppid not in live and ppid in last_ppid and ppid not in seen:
                seen.add(ppid)
                ppid = last_ppid[ppid]  # its parent left too: did one further up take both?
            if ppid not in live:
                self._gone_ticks += total
        self._last = now
        self._cpu = max(self._cpu, (self._gone_ticks + sum(t for t, _ in now.values())) / _TICK)
        return self._cpu

    def _process(self, pid: int, st: _Stat) -> Process:
        f = st.fields
        cmd = (_read(f"{self.proc}/{pid}/cmdline") or b"").rstrip(b"\0").replace(b"\0", b" ")
        command = cmd.decode(errors="replace") if cmd else f"[{st.comm.decode(errors='replace')}]"
        # a running process waits nowhere (its wchan reads "0"): spare the read
        wchan = "" if f[0] == b"R" else (_read(f"{self.proc}/{pid}/wchan", 128) or b"").decode(errors="replace")
        return Process(pid, st.ppid, f[0].decode(), (int(f[11]) + int(f[12])) / _TICK, int(f[21]) * _PAGE,
                       command[:COMMAND_CHARS], "" if wchan == "0" else wchan)


# --- silence ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SilencePolicy:
    timeout: float  # seconds without output
    action: str = DEFAULT_ACTION  # "warn" or "kill"
    grace: float = KILL_GRACE_S  # from TERM to KILL

    @classmethod
    def parse(cls, timeout: object, action: object = None, grace: object = None, *,
              names: tuple[str, str, str] = ("--silence-timeout", "--on-silence", "--silence-grace"),
              ) -> SilencePolicy | None:
        """The policy from flag or config values (strings like '10m', or numbers); None when the timeout is
        unset or 0 (off). `names` are what the errors call the three values."""
        if action is not None and action not in SILENCE_ACTIONS:
            raise ConfigError(f"{names[1]} {action!r} is not an action", "use warn (record it) or kill (TERM, "
                              f"then KILL after {names[2]}; exit {EXIT_SILENCE})")
        seconds = _duration(names[0], timeout, 0.0)
        if not seconds:
            return None
        if not MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S:
            raise ConfigError(f"{names[0]} {timeout!r} is out of range",
                              f"from {MIN_TIMEOUT_S:g}s to {MAX_TIMEOUT_S / 86400:g}d, e.g. 10m; 0 turns it off")
        wait = _duration(names[2], grace, KILL_GRACE_S)
        if wait > 3600:
            raise ConfigError(f"{names[2]} {grace!r} is out of range", "from 0 to 1h, e.g. 30s")
        return cls(seconds, str(action or DEFAULT_ACTION), wait)


def policy_for(cfg: AgentConfig, timeout: str | None = None, action: str | None = None,
               grace: str | None = None) -> SilencePolicy | None:
    """The run's policy: each flag given (`logship run --silence-timeout/--on-silence/--silence-grace`) over
    its config key (agent.*, already checked when loaded). Errors name the flag, or the key."""
    if action is not None and timeout is None and not cfg.silence_timeout and action in SILENCE_ACTIONS:
        raise ConfigError(f"--on-silence {action} needs a timeout", "give --silence-timeout DURATION (e.g. 10m) "
                          "or set agent.silence_timeout")
    return SilencePolicy.parse(
        cfg.silence_timeout if timeout is None else timeout, cfg.on_silence if action is None else action,
        cfg.silence_grace if grace is None else grace,
        names=("agent.silence_timeout" if timeout is None else "--silence-timeout",
               "agent.on_silence" if action is None else "--on-silence",
               "agent.silence_grace" if grace is None else "--silence-grace"))


def _duration(name: str, value: object, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{name} {value!r} is not a duration", "e.g. 90, 90s, 10m, 1h")
    return seconds


class Silence:
    """When the task last wrote, on the monotonic clock (a wall-clock step is not silence). The agent
    stores `last_output = now` on every read it makes: one attribute store, no call."""

    __slots__ = ("last_output", "policy", "_fired_for")

    def __init__(self, now: float, policy: SilencePolicy | None = None) -> None:
        self.last_output = now
        self.policy = policy
        self._fired_for: float | None = None

    def silent_seconds(self, now: float) -> float:
        return max(0.0, now - self.last_output)

    def next_due(self) -> float | None:
        """When `due` turns true if no output comes first (monotonic), or None: no policy, or fired already."""
        p, last = self.policy, self.last_output
        if p is None or self._fired_for == last:
            return None
        return last + p.timeout

    def due(self, now: float) -> bool:
        """True once per silent stretch, when it reaches the policy's timeout; any output re-arms it."""
        p, last = self.policy, self.last_output  # read once: the pump thread may store a newer one meanwhile
        if p is None or now - last < p.timeout or self._fired_for == last:
            return False
        self._fired_for = last
        return True


def signal_tree(sig: int, pgid: int | None, pids: list[int]) -> int:
    """Send `sig` to the process group `pgid` (if any) and to each of `pids`, never to us, our group or
    init. Returns how many targets were still there."""
    sent = 0
    groups = [(pgid, os.killpg)] if pgid and pgid != os.getpgid(0) else []
    for target, send in groups + [(p, os.kill) for p in pids]:
        if target <= 1 or target == os.getpid():
            continue
        try:
            send(target, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or not ours to signal (a setuid child)
    return sent


class Killer:
    """--on-silence kill, without blocking: TERM now to the task's group and to every member of the tree
    (background daemons may have left the group), KILL at `poll()` once the grace is over. The agent goes
    on reading meanwhile, so the task's last words on TERM still reach the log."""

    def __init__(self, sampler: Sampler, grace: float, now: float, *, pgid: int | None = None) -> None:
        self.sampler = sampler
        self.pgid = sampler.pgid if pgid is None else pgid  # given where there is no /proc to read it
        self.kill_at = now + grace
        self.tree = sampler.sample()  # the tree as it was at the moment of the kill, for the record
        self.killed = False
        self._send(signal.SIGTERM, self.tree)
        self._send(signal.SIGCONT, self.tree)  # a stopped process acts on TERM only once continued (as timeout(1))

    def poll(self, now: float) -> bool:
        """Sends KILL once the grace is over; True on that call."""
        if self.killed or now < self.kill_at:
            return False
        self.killed = True
        self._send(signal.SIGKILL, self.sampler.sample())  # a fresh look: TERM handlers may have forked
        return True

    def _send(self, sig: int, tree: Sample | None) -> None:
        pids = [p.pid for p in tree.processes] if tree else [self.sampler.root]
        signal_tree(sig, self.pgid, pids)
