"""The agent: runs a task, tees its stdout/stderr through, and appends every byte to the spool.

One thread polls both pipes. Output is passed through at once; the spool gets line-aligned
chunks per stream (a line's tail waits for its end, at most FLUSH_IDLE_S or FLUSH_CAP bytes).
Two pipes have no order between them: what was written to both between two reads lands in read
order (docs/format.md, "Stream order"). --merge-streams gives the task one pipe for both, as 2>&1.
The agent never stops reading because of the spool: a failing disk is counted, not waited on.
A second thread (shipper/monitor.py) samples the task's processes into liveness.json and applies
--silence-timeout; the pump only stores the time of each read for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shipper.format import index, names

from .config import Config
from .errors import LogExists, SpoolError
from .pipes import BIG_READ, SMALL_READ, Clock, Stream
from .spool import (
    NOFOLLOW,
    SegmentWriter,
    SpoolDamaged,
    make_log_dir,
    pid_start_ticks,
    write_atomic,
    write_json_atomic,
)

# While output is dense (a read brought at least DENSE_BYTES), wait this long before the next poll:
# fewer, larger chunks cost the task fewer wake-ups. Sparse output (a live tail's case) never waits.
# (What both pipes gather during a pause lands in read order; skipping the pause while both streams
# wrote did not shrink that window, measured: the agent, using ~20% more CPU, fell behind into 1 MiB
# reads more often.)
DENSE_BYTES, DENSE_PAUSE_S = 8 << 10, 0.0005
SPOOL_RETRY_S = 1.0  # after a failed spool write (a full disk), the spool is not tried again for this long
EXIT_RESERVE = 4096  # bytes set aside at start so that exit.json (and the count of lost bytes) fits on a full disk
EXIT_CHECK_S = 0.1  # how often we look for the task's exit (a wait4 per wake-up costs)
FLUSH_IDLE_S = 0.05  # an unterminated line reaches the spool after this much quiet
FLUSH_CAP = 256 << 10  # ... or once it is this long
DRAIN_IDLE_S = 2.0  # after the task exits, stop waiting for its children's output after this quiet
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# Exit codes of the agent's own failures, as env(1) and timeout(1) use them.
EXIT_AGENT_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127

if TYPE_CHECKING:  # imported once the task runs (Agent.run): the task does not wait for them to load
    from .liveness import Silence, SilencePolicy
    from .monitor import Monitor


def default_host() -> str:
    import socket  # only when no --host is given: the agent's start-up is part of the task's wall time

    name = socket.gethostname().split(".")[0] or "localhost"
    return name if names.ID_RE.fullmatch(name) else "localhost"


class Agent:
    def __init__(self, cfg: Config, task: str, host: str, command: list[str], labels: dict[str, str],
                 *, own_group: bool = True, silence: SilencePolicy | None = None,
                 merge_streams: bool = False) -> None:
        self.cfg = cfg
        # One pipe for stdout and stderr (2>&1): exact order, no split; every chunk is marked stdout.
        self.merge_streams = merge_streams
        # The task runs in a process group of its own (so a terminal's Ctrl-C reaches it once, through
        # us) unless a supervisor kills whole groups: Categraf's kill(-pgid) must reach the task too.
        self.own_group = own_group
        self.task = names.check_id("task", task)
        self.host = names.check_id("host", host)
        self.command = command
        self.labels = labels
        self.log_dir = names.spool_log_dir(cfg.spool_dir, task, host)
        self.writer = SegmentWriter(self.log_dir, cfg.spool.segment_bytes, cfg.spool.segment_seconds)
        self.dropped_bytes = 0  # bytes the spool could not take (disk errors); the task still got them through
        self.dir_fd = -1  # the log directory, opened without following links; -1: no spool for this run
        self._reserve_fd = -1  # EXIT_RESERVE bytes allocated for exit.json
        self._last_warning = 0.0
        self._spool_retry_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self.silence = silence
        self.monitor: Monitor | None = None  # set by the thread that starts it (_start_monitor)
        self._start_error: BaseException | None = None
        # In run.json, and in the task's environment (names.RUN_ID_ENV): a daemon that left the task's group
        # and session is still found as the task's by it (shipper/liveness.py).
        self.run_id = os.urandom(16).hex()

    # --- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Claim the log's spool directory; a second run of the same (task, host) is refused.

        A symbolic link in the spool where the log's directories go is refused too (it would make
        us write elsewhere). A disk too full to make the directory does not stop the task: it runs,
        its output is passed through and counted as not spooled."""
        try:
            self.dir_fd = make_log_dir(self.cfg.spool_dir, self.task, self.host)
        except FileExistsError:
            raise LogExists(
                f"log {self.task}/{self.host} already exists in the spool ({self.log_dir})",
                "a second run must not overwrite the first: give it another --task (e.g. "
                f"{self.task}.2) or --host",
            ) from None
        except SpoolDamaged as exc:
            raise SpoolError(f"refusing to run: {exc.detail}", exc.hint) from None
        except OSError as exc:
            self._no_spool(exc)
            return
        self.writer.dir_fd = self.dir_fd
        try:
            self._reserve_fd = os.open(".exit.reserve", os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644,
                                       dir_fd=self.dir_fd)
            os.posix_fallocate(self._reserve_fd, 0, EXIT_RESERVE)
        except OSError:  # no room even for that: exit.json is tried the ordinary way at the end
            self._drop_reserve()

    def _no_spool(self, exc: OSError) -> None:
        """Run the task without a spool: nothing of it is kept, but it runs and its output is passed through."""
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
        err = SpoolError(f"cannot write to the spool ({exc}): the task runs, its output is passed through but "
                         "not kept", "free space in spool.dir (or fix its permissions)")
        print(f"logship: {err}", file=sys.stderr)

    def _drop_reserve(self) -> None:
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(".exit.reserve", dir_fd=self.dir_fd)

    def run(self) -> int:
        self.prepare()
        started = time.time_ns()
        try:
            proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if self.merge_streams else subprocess.PIPE,
                                    process_group=0 if self.own_group else None, bufsize=0,
                                    env={**os.environ, names.RUN_ID_ENV: self.run_id})
        except FileNotFoundError:
            code, why = EXIT_NOT_FOUND, f"command not found: {self.command[0]}"
        except PermissionError:
            code, why = EXIT_NOT_EXECUTABLE, f"command not executable: {self.command[0]}"
        except OSError as exc:
            code, why = EXIT_AGENT_FAILED, f"cannot start {self.command[0]}: {exc}"
        else:
            self._proc = proc
            self._write_run(started, proc.pid)
            self._forward_signals()
            # The monitor's imports take 6-35 ms: done beside the pump, which reads the pipes from the start
            # (bytes that wait in both pipes land in read order, not in the order they were written).
            starter = threading.Thread(target=self._start_monitor, args=(proc.pid,), name="logship-start",
                                       daemon=True)
            starter.start()
            assert proc.stdout is not None
            streams = [Stream(index.STDOUT, proc.stdout.fileno(), sys.stdout.fileno())]
            if proc.stderr is not None:
                streams.append(Stream(index.STDERR, proc.stderr.fileno(), sys.stderr.fileno()))
            self._pump(streams)
            starter.join()
            if self.monitor is None:
                raise self._start_error or AssertionError("the monitor did not start")
            rc = proc.wait()
            self.monitor.stop()  # before exit.json: a reader that sees the end finds the last liveness
            if self.monitor.killed:  # as timeout(1): 124, whatever the signal made of the task's status
                from .liveness import END_REASON, EXIT_SILENCE

                self._finish(rc, end_reason=END_REASON, exit_code=EXIT_SILENCE)
                return EXIT_SILENCE
            self._finish(rc)
            return 128 - rc if rc < 0 else rc
        # the command never ran: still leave a finished, empty log that says why
        print(f"logship: {why}", file=sys.stderr)
        self._write_run(started, None)
        self._finish(code, error=why)
        return code

    def _start_monitor(self, pid: int) -> None:
        try:
            from .monitor import Monitor, say_on_stderr

            monitor = Monitor(pid, mark=self.run_id, interval=self.cfg.agent.sample_seconds, policy=self.silence,
                              label=f"{self.task}/{self.host}", write=self._write_liveness, say=say_on_stderr)
            monitor.start()
            self.monitor = monitor
        except BaseException as exc:  # raised again by run() once the pump is done
            self._start_error = exc

    def _write_run(self, started_ns: int, child_pid: int | None) -> None:
        if self.dir_fd < 0:
            return
        try:
            write_json_atomic(self.log_dir / names.RUN_FILE, {
                "task": self.task, "host": self.host, "run_id": self.run_id,
                "command": self.command, "labels": self.labels, "started_ns": started_ns,
                "agent_pid": os.getpid(), "agent_start_ticks": pid_start_ticks(os.getpid()),
                "child_pid": child_pid, "segment_bytes": self.cfg.spool.segment_bytes,
                "merge_streams": self.merge_streams,
            }, dir_fd=self.dir_fd)
        except OSError as exc:
            # Without run.json no watcher ships this log: leave no half-made log dir behind.
            self._drop_reserve()
            parent = os.open(self.log_dir.parent, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
            try:
                os.rmdir(self.host, dir_fd=parent)
            except OSError:
                pass
            finally:
                os.close(parent)
            self._no_spool(exc)

    def _write_liveness(self, data: bytes) -> None:
        # Rewritten every few seconds and only a view of the moment: not worth an fsync (a torn file after a
        # crash reads as no liveness).
        if self.dir_fd >= 0:
            write_atomic(self.log_dir / names.LIVENESS_FILE, data, durable=False, dir_fd=self.dir_fd)

    def _finish(self, rc: int, error: str | None = None, end_reason: str | None = None,
                exit_code: int | None = None) -> None:
        if self.dir_fd < 0:
            return
        self._guard(self.writer.close, 0)
        doc: dict[str, object] = {"status": "finished", "exit_code": 128 - rc if rc < 0 else rc,
                                  "signal": -rc if rc < 0 else None, "ended_ns": time.time_ns(),
                                  "dropped_bytes": self.dropped_bytes}
        if error:
            doc["error"] = error[:1024]
        if end_reason:  # the silence policy ended it: the exit code is timeout(1)'s, `signal` what it took
            doc["end_reason"], doc["exit_code"] = end_reason, exit_code
        try:
            self._write_exit(doc)
        except OSError as exc:
            err = SpoolError(f"cannot record the end of the run in the spool: {exc}",
                             "free space in spool.dir; the watcher will mark this log lost")
            print(f"logship: {err}", file=sys.stderr)
        finally:
            self._drop_reserve()
            os.close(self.dir_fd)
            self.dir_fd = -1
        if self.dropped_bytes:
            print(f"logship: {self.dropped_bytes} bytes of output were passed through but not spooled "
                  "(recorded as dropped_bytes in the log's manifest)", file=sys.stderr)

    def _write_exit(self, doc: dict[str, object]) -> None:
        """exit.json, into the space reserved at start when there is one: a full disk cannot refuse it."""
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        if self._reserve_fd < 0 or len(data) > EXIT_RESERVE:
            write_json_atomic(self.log_dir / names.EXIT_FILE, doc, dir_fd=self.dir_fd)
            return
        os.pwrite(self._reserve_fd, data, 0)
        os.ftruncate(self._reserve_fd, len(data))
        os.fsync(self._reserve_fd)
        os.replace(".exit.reserve", names.EXIT_FILE, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        os.close(self._reserve_fd)
        self._reserve_fd = -1

    def _forward_signals(self) -> None:
        # The task runs in its own process group (so a terminal's Ctrl-C reaches it once, through
        # us); we pass each signal on to the whole group, as a terminal would have.
        def forward(signum: int, _frame: object) -> None:
            if self._proc is not None and self._proc.returncode is None:
                try:
                    if self.own_group:
                        os.killpg(self._proc.pid, signum)
                    else:  # our own group: killpg would signal us too
                        self._proc.send_signal(signum)
                except ProcessLookupError:
                    pass

        for sig in FORWARDED:
            signal.signal(sig, forward)

    # --- the pump --------------------------------------------------------------------------

    def _pump(self, streams: list[Stream]) -> None:  # noqa: C901  (one poll loop: reads, flushes, rotation, exit)
        by_fd = {s.fd: s for s in streams}
        poller = select.poll()
        for s in streams:
            s.enlarge()
            poller.register(s.fd, select.POLLIN)
        assert self._proc is not None
        # The silence clock: one attribute store per read that brought bytes. The monitor's, once it is up
        # (it starts beside the pump); till then our own, handed over.
        silence: Clock | Silence = Clock(time.monotonic())
        handover = True
        exited_at: float | None = None
        turn = 0
        last_data = last_exit_check = time.monotonic()
        while by_fd:
            now = time.monotonic()
            deadline = now + EXIT_CHECK_S
            for s in by_fd.values():
                if s.tail:
                    deadline = min(deadline, s.tail_since + FLUSH_IDLE_S)
            rotate_at = self.writer.rotate_deadline()
            if rotate_at is not None:
                deadline = min(deadline, rotate_at)
            events = poller.poll(max(0, int((deadline - now) * 1000) + 1))
            if len(events) > 1:
                # Both pipes hold bytes and nothing says which were written first: take turns at going
                # first, so that neither stream always lands after the other.
                turn ^= 1
                if turn:
                    events.reverse()
            dense = got = False
            for fd, _ in events:
                s = by_fd[fd]
                data = os.read(fd, s.read_size)
                if data:
                    got = True
                    dense = dense or len(data) >= DENSE_BYTES
                    if len(data) == s.read_size:
                        s.read_size = BIG_READ
                    elif len(data) < SMALL_READ:
                        s.read_size = SMALL_READ
                    s.tee(data)
                    self._spool(s, data)
                else:  # EOF
                    poller.unregister(fd)
                    del by_fd[fd]
                    self._flush_tail(s)
            now = time.monotonic()
            if events:
                last_data = now
            if got:
                if handover and self.monitor is not None:
                    self.monitor.silence.last_output = max(self.monitor.silence.last_output, silence.last_output)
                    silence, handover = self.monitor.silence, False
                silence.last_output = now
            for s in by_fd.values():
                if s.tail and now - s.tail_since >= FLUSH_IDLE_S:
                    self._flush_tail(s)
            if rotate_at is not None and now >= rotate_at:
                self._guard(self.writer.seal, 0)
            if exited_at is None and (not events or now - last_exit_check >= EXIT_CHECK_S):
                last_exit_check = now
                if self._proc.poll() is not None:
                    exited_at = now
            # The task is gone but something it started holds the pipes open: stop once quiet.
            if exited_at is not None and now - max(exited_at, last_data) >= DRAIN_IDLE_S:
                break
            if dense and exited_at is None:
                time.sleep(DENSE_PAUSE_S)
        for s in by_fd.values():
            self._flush_tail(s)

    def _spool(self, s: Stream, data: bytes) -> None:
        cut = data.rfind(b"\n") + 1
        if cut:
            # 4x faster than data.count(b"\n") (memchr-based), and all of data's newlines lie before cut
            lines = len(data) - len(data.replace(b"\n", b""))
            pos = 0
            # A read can hold more than the open segment has room for: end the segment at a line end
            # near its size, so segments keep to spool.segment_bytes whatever the read size.
            while cut - pos + len(s.tail) > (room := self.writer.room()):
                k = data.rfind(b"\n", pos, pos + max(room - len(s.tail), 0)) + 1
                if k <= pos:  # not one more line fits: the segment is full
                    if not self.writer.is_open:
                        break  # a line longer than a whole segment: it gets a segment to itself
                    self._guard(self.writer.seal, 0)
                    continue
                n = data.count(b"\n", pos, k)
                self._append_lines(s, data, pos, k, n)
                lines -= n
                pos = k
            self._append_lines(s, data, pos, cut, lines)
            s.tail = bytearray(memoryview(data)[cut:]) if cut < len(data) else bytearray()
            if s.tail:
                s.tail_since = time.monotonic()
        else:
            if not s.tail:
                s.tail_since = time.monotonic()
            s.tail += data
        if len(s.tail) >= FLUSH_CAP:
            self._flush_tail(s)

    def _append_lines(self, s: Stream, data: bytes, start: int, end: int, lines: int) -> None:
        """Append data[start:end], whole lines, with the stream's waiting tail in front, as one chunk."""
        piece = data if (start, end) == (0, len(data)) else memoryview(data)[start:end]
        parts: list[bytes | bytearray | memoryview] = [s.tail, piece] if s.tail else [piece]
        length = end - start + len(s.tail)
        s.tail = bytearray()
        self._guard(lambda: self.writer.append(s.code, parts, length, lines, partial=False), length)

    def _flush_tail(self, s: Stream) -> None:
        if s.tail:
            tail, s.tail = s.tail, bytearray()
            self._guard(lambda: self.writer.append(s.code, [tail], len(tail), 0, partial=True), len(tail))

    def _guard(self, write: Callable[[], None], length: int) -> None:
        if self.dir_fd < 0 or (length and time.monotonic() < self._spool_retry_at):
            self.dropped_bytes += length  # no spool, or it failed a moment ago: don't hammer a full disk
            return
        try:
            write()
        except OSError as exc:
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
            self._spool_failed(exc, length)

    def _spool_failed(self, exc: OSError, length: int) -> None:
        """The spool refused bytes: count them, say so (at most every 10 s), keep the task running."""
        self.dropped_bytes += length
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            err = SpoolError(f"spool write failed: {exc}; {self.dropped_bytes} bytes not spooled so far",
                             "free space in spool.dir or raise spool.quota_bytes; the task keeps running")
            print(f"logship: {err}", file=sys.stderr)


def run(cfg: Config, task: str, host: str | None, command: list[str], labels: dict[str, str],
        *, own_group: bool = True, silence: SilencePolicy | None = None, merge_streams: bool | None = None) -> int:
    """`merge_streams`: None takes the config's agent.merge_streams."""
    merge = cfg.agent.merge_streams if merge_streams is None else merge_streams
    return Agent(cfg, task, host or default_host(), command, labels, own_group=own_group, silence=silence,
                 merge_streams=merge).run()


