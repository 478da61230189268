"""The agent's liveness thread: samples its task's process tree every agent.sample_seconds, writes liveness.json,
and applies --silence-timeout (a warning, or TERM then KILL). The pump thread only stores the time of each read
in `silence.last_output`; everything else happens here, off the pump's path.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

from shipper.format import liveness as fmt

from .liveness import Killer, Sample, Sampler, Silence, SilencePolicy

STOP_POLL_S = 0.1  # after the task ended, how often a pending kill looks whether the tree is gone
SAY_CHARS = 1000  # a warning line is cut here: its bytes stay under PIPE_BUF (4096)
WARN_PROCESSES = 5  # processes named in the one-line warning on stderr (liveness.json has them all)
STEP_NS = 1_000_000_000  # a change of the wall clock against the monotonic one larger than this is a step


class Monitor:
    """Started once the task runs; `stop()` once it has ended and the pump is done, before exit.json.

    `write(data)` stores liveness.json (it may raise OSError: a full disk costs the file, not the task);
    `say(line)` tells the operator, on the agent's stderr (never into the log's bytes)."""

    def __init__(self, root_pid: int, *, mark: str, interval: float, policy: SilencePolicy | None, label: str,
                 write: Callable[[bytes], None], say: Callable[[str], None]) -> None:
        self.sampler = Sampler(root_pid, mark=mark)
        self.silence = Silence(time.monotonic(), policy)
        self.interval = interval
        self.policy = policy
        self.label = label  # task/host, for the messages
        self._write, self._say = write, say
        self.last: Sample | None = None
        self.events: list[fmt.SilenceEvent] = []
        self.killer: Killer | None = None
        self._write_failed = False
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logship-liveness", daemon=True)

    @property
    def killed(self) -> bool:
        """The silence policy stopped the task (TERM sent): the run ends with EXIT_SILENCE."""
        return self.killer is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; finish a kill in progress (KILL to whatever outlived TERM, once the grace is over);
        write the last liveness.json, which keeps the last sample taken while the task ran."""
        self._stop.set()
        self._thread.join()
        if self.killer is not None and not self.killer.killed:
            while (tree := self.sampler.sample()) is not None and tree.processes:
                if time.monotonic() >= self.killer.kill_at:
                    self.killer.poll(time.monotonic())
                    break
                time.sleep(STOP_POLL_S)
        self._store(time.time_ns())

    # --- the thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_sample = time.monotonic()
        while True:
            now = time.monotonic()
            wake = next_sample
            if (due := self.silence.next_due()) is not None and self.killer is None:
                wake = min(wake, due)
            if self.killer is not None and not self.killer.killed:
                wake = min(wake, self.killer.kill_at)
            if self._stop.wait(max(0.0, wake - now)):
                return
            now = time.monotonic()
            if self.killer is not None:
                self.killer.poll(now)
            fire = self.killer is None and self.silence.due(now)
            if fire or now >= next_sample:
                sample = self.sampler.sample()
                if sample is not None and (sample.processes or self.last is None):
                    self.last = sample  # an empty tree (the task is gone, not yet reaped) keeps the one before
                now_ns = time.time_ns()
                if fire:
                    self._fire(now, now_ns)
                self._store(now_ns)
                next_sample = now + self.interval

    def _fire(self, now: float, now_ns: int) -> None:
        """The task reached the silence timeout: record it, say it, and for `kill` send TERM now."""
        assert self.policy is not None
        silent = self.silence.silent_seconds(now)
        tree = self.last
        if self.policy.action == "kill":
            # TERM to the task's group and to every pid of its tree (under --ibex the task shares our group,
            # which the sampler does not follow: then to the pids only)
            self.killer = Killer(self.sampler, self.policy.grace, now)
            tree = self.killer.tree or tree
        procs = tree.processes if tree else []
        self.events.append(fmt.SilenceEvent(self.policy.action, now_ns, silent, fmt.cut(procs)))
        shown = "; ".join(f"{p.pid} {p.state} {p.command[:60]}" + (f" [{p.wchan}]" if p.wchan else "")
                          for p in procs[:WARN_PROCESSES])
        more = f" (+{len(procs) - WARN_PROCESSES} more)" if len(procs) > WARN_PROCESSES else ""
        what = (f"sent TERM to its processes, KILL in {self.policy.grace:g}s; the run exits 124"
                if self.policy.action == "kill" else "warning only (--on-silence warn)")
        self._say(f"logship: {self.label} has written nothing for {silent:.0f}s (silence timeout "
                  f"{self.policy.timeout:g}s): {what}; processes: {shown or 'none seen'}{more}")

    def _store(self, now_ns: int) -> None:
        s = self.last
        # The monotonic clock's offset to the wall clock, kept while it holds within STEP_NS: the same
        # last output is then the same last_output_ns in every write, and a clock step still shows.
        offset = time.time_ns() - time.monotonic_ns()
        if abs(offset - self._offset) > STEP_NS:
            self._offset = offset
        doc = fmt.Liveness(
            written_ns=now_ns, last_output_ns=min(now_ns, int(self.silence.last_output * 1e9) + self._offset),
            sampled_ns=s.sampled_ns if s else None, cpu_seconds=s.cpu_seconds if s else None,
            processes=fmt.cut(s.processes) if s else (), processes_total=len(s.processes) if s else 0,
            silence_timeout=self.policy.timeout if self.policy else None,
            on_silence=self.policy.action if self.policy else None, events=tuple(self.events))
        try:
            self._write(fmt.dumps(doc))
        except OSError as exc:
            if not self._write_failed:  # once: a full disk says so in the spool's own warnings too
                self._write_failed = True
                self._say(f"logship: cannot write {self.label}'s liveness.json ({exc}); sampling goes on")
        else:
            self._write_failed = False


def say_on_stderr(line: str) -> None:
    """One write of one line (under PIPE_BUF: a pipe takes it whole), so the task's own stderr, teed by the
    pump thread, is not cut inside it. A closed stderr costs the message only."""
    with contextlib.suppress(OSError):
        os.write(2, (line[:SAY_CHARS] + "\n").encode(errors="replace"))
