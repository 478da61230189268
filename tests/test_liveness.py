"""The liveness sampler, silence tracker and kill path, on real process trees."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from shipper import liveness
from shipper.errors import ConfigError
from shipper.format import liveness as fmt
from shipper.liveness import Killer, Sample, Sampler, Silence, SilencePolicy

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

SPIN = [sys.executable, "-c", "while True: pass"]
MARK = "test-" + os.urandom(4).hex()
Start = Callable[[list[str]], subprocess.Popen[bytes]]


def wait_for(check: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def commands(s: Sample | None) -> list[str]:
    assert s is not None
    return [p.command for p in s.processes]


def gone(pid: int) -> bool:
    """Exited: no longer in /proc, or a zombie its reaper has not got to yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts a task as the agent does (its own process group) with the mark in its environment; kills
    whatever of its tree is left at the end, escaped daemons included."""
    started: list[subprocess.Popen[bytes]] = []

    def run(cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env={**os.environ, liveness.MARK_ENV: MARK}, process_group=0)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    needle = f"\0{liveness.MARK_ENV}={MARK}\0".encode()
    for entry in Path("/proc").iterdir():  # the escaped daemons: whatever carries our mark
        with contextlib.suppress(OSError, ValueError):
            if needle in b"\0" + (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def test_a_sleeping_task_shows_sleep_in_state_s(start: Start) -> None:
    proc = start(["sh", "-c", "sleep 30; true"])
    sampler = Sampler(proc.pid, mark=MARK)
    # both asleep, not only exec'd: just after fork and exec they may still be running ("R") when sampled
    wait_for(lambda: (s := sampler.sample()) is not None and "sleep 30" in commands(s)
             and all(p.state == "S" for p in s.processes))
    s = sampler.sample()
    assert s is not None
    root, sleep = s.processes
    assert (root.pid, root.command, root.state) == (proc.pid, "sh -c sleep 30; true", "S")
    assert (sleep.ppid, sleep.state, sleep.cpu_seconds) == (proc.pid, "S", 0.0)
    assert sleep.rss_bytes > 0 and sleep.wchan != "0"  # wchan: a kernel function, or "" where hidden
    doc = json.loads(json.dumps(s.to_json()))  # the issue's shape, exactly
    assert list(doc) == ["sampled_ns", "cpu_seconds", "processes"]
    assert list(doc["processes"][1]) == ["pid", "ppid", "state", "cpu_seconds", "rss_bytes", "command", "wchan"]
    assert abs(doc["sampled_ns"] - time.time_ns()) < 5e9


def test_a_spinning_task_is_running_and_its_cpu_rises(start: Start) -> None:
    proc = start(SPIN)
    sampler = Sampler(proc.pid)
    time.sleep(0.3)
    first = sampler.sample()
    time.sleep(0.5)
    second = sampler.sample()
    assert first and second
    assert second.processes[0].state == "R"
    assert second.processes[0].cpu_seconds > first.processes[0].cpu_seconds
    assert second.cpu_seconds > first.cpu_seconds


def test_background_processes_are_in_the_tree(start: Start) -> None:
    # two children by parent; a double-forked one (parent init, still in the group); a setsid'd one that
    # double-forked (no parent, group or session link left: found by the mark in its environment)
    script = "sleep 31 & sleep 32 & (sleep 33 &); (setsid sleep 34 &); wait"
    proc = start(["sh", "-c", script])
    sampler = Sampler(proc.pid, mark=MARK)
    assert sampler.pgid == proc.pid and sampler.sid is None  # the session is ours (the terminal's): not followed
    expected = [f"sh -c {script}", "sleep 31", "sleep 32", "sleep 33", "sleep 34"]
    wait_for(lambda: commands(sampler.sample()) == expected)  # once the forked shells have exec'd sleep
    s = sampler.sample()
    assert s is not None
    by_cmd = {p.command: p for p in s.processes}
    assert by_cmd["sleep 31"].ppid == by_cmd["sleep 32"].ppid == proc.pid
    assert by_cmd["sleep 33"].ppid != proc.pid and by_cmd["sleep 34"].ppid != proc.pid
    # without the mark, the setsid'd daemon is lost: why the agent sets it
    assert "sleep 34" not in commands(Sampler(proc.pid).sample())


def test_a_task_in_our_own_group_does_not_bring_the_group_in() -> None:
    # `--ibex`: the task shares the agent's group, which holds the agent's parents and siblings too
    proc = subprocess.Popen(["sleep", "30"])
    try:
        sampler = Sampler(proc.pid)
        assert sampler.pgid is None and sampler.sid is None
        wait_for(lambda: commands(sampler.sample()) == ["sleep 30"])
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("reaper", ["task", "init"])
def test_cumulative_cpu_does_not_drop_when_children_exit(start: Start, tmp_path: Path, reaper: str) -> None:
    # Two children each burn 0.4 s of CPU and exit, one after the other. The task reaps them (their time
    # moves into its cutime), or they were double-forked and init reaps them (their time is kept from
    # their last sample). Either way the tree's CPU is both children's, once.
    spin = f"{sys.executable} -c 'import sys, time\nwhile time.process_time() < 0.4: pass\nopen(sys.argv[1], \"w\")'"
    one, two = tmp_path / "one", tmp_path / "two"
    if reaper == "task":
        script = f"{spin} {one}; {spin} {two}; sleep 30"
    else:
        script = f"({spin} {one} &); while [ ! -e {one} ]; do sleep 0.05; done; ({spin} {two} &); sleep 30"
    proc = start(["sh", "-c", script])
    sampler = Sampler(proc.pid, mark=MARK)
    seen: list[Sample] = []
    spun: dict[int, float] = {}  # spinner pid -> the most CPU a sample saw it use

    def both_done() -> bool:
        s = sampler.sample()
        assert s is not None
        seen.append(s)
        for p in s.processes:
            if p.command.startswith(sys.executable) or (p.command == "[python]" and p.pid in spun):
                spun[p.pid] = max(spun.get(p.pid, 0.0), p.cpu_seconds)
        return two.exists() and len(spun) == 2 and not set(spun) & {p.pid for p in s.processes}

    wait_for(both_done, 30)
    assert all(a.cpu_seconds <= b.cpu_seconds for a, b in pairwise(seen))  # it never drops
    assert sum(p.cpu_seconds for p in seen[-1].processes) < 0.2  # though the live processes' sum does
    burnt = sum(spun.values())
    assert burnt > 0.6
    # all of both children: none lost when one exits; none counted twice when the task reaps it
    assert burnt - 0.01 <= seen[-1].cpu_seconds <= burnt + 0.3


def test_a_comm_with_spaces_and_parentheses_parses(start: Start, tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c) d"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", odd)
    proc = start([str(odd), "30"])
    sampler = Sampler(proc.pid)
    # asleep, not only exec'd: just after exec the process may still be running ("R") when sampled
    wait_for(lambda: (s := sampler.sample()) is not None and [(p.state, p.command) for p in s.processes]
             == [("S", f"{odd} 30")])
    s = sampler.sample()
    assert s is not None
    (p,) = s.processes
    assert (p.pid, p.ppid, p.state, p.command) == (proc.pid, os.getpid(), "S", f"{odd} 30")
    # a zombie has no cmdline: its comm in brackets, as ps shows it
    zombie = start([str(tmp_path / "a) b (c) d"), "0"])
    wait_for(lambda: gone(zombie.pid))
    z = Sampler(zombie.pid).sample()
    assert z is not None and [(p.state, p.command) for p in z.processes] == [("Z", "[a) b (c) d]")]


def test_a_synthetic_proc_parses_and_a_vanished_process_is_skipped(tmp_path: Path) -> None:
    def stat(pid: int, comm: str, ppid: int) -> None:
        # fields 3..24: state ppid pgrp session tty tpgid flags 4 faults utime stime cutime cstime prio nice
        # threads itreal starttime vsize rss, then the rest
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(
            f"{pid} ({comm}) S {ppid} 7 7 0 -1 0 0 0 0 0 250 50 100 0 20 0 1 0 555 0 3 " + "0 " * 20)

    stat(7, "x) (y ) z", 1)
    stat(8, "kid", 7)
    (tmp_path / "9").mkdir()  # exited between the listing and its read: no stat
    stat(10, "odd", 7)
    (tmp_path / "10" / "stat").write_text("10 (odd) S 7 x")  # not what the kernel writes: left out
    (tmp_path / "self").mkdir()
    s = Sampler(7, proc=str(tmp_path)).sample()
    assert s is not None
    root = s.processes[0]
    assert (root.pid, root.ppid, root.state, root.command, root.wchan) == (7, 1, "S", "[x) (y ) z]", "")
    assert root.cpu_seconds == 300 / os.sysconf("SC_CLK_TCK")
    assert root.rss_bytes == 3 * os.sysconf("SC_PAGE_SIZE")
    assert [p.pid for p in s.processes] == [7, 8]


def test_without_proc_the_sampler_returns_none_and_says_so_once(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    sampler = Sampler(1, proc=str(tmp_path / "no-proc"))
    assert sampler.sample() is None and sampler.sample() is None
    assert capsys.readouterr().err.count("not sampled") == 1


# --- silence -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout, action, grace, error", [
    ("ten", None, None, "--silence-timeout 'ten' is not a duration"),
    ("-5m", "kill", None, "--silence-timeout '-5m' is not a duration"),
    ("10x", "warn", None, "not a duration"),
    (True, "warn", None, "not a duration"),
    ("0.5s", "kill", None, "--silence-timeout '0.5s' is out of range"),
    ("90d", "kill", None, "out of range"),
    ("10m", "explode", None, "--on-silence 'explode' is not an action"),
    ("10m", "KILL", None, "not an action"),
    ("10m", "kill", "soon", "--silence-grace 'soon' is not a duration"),
    ("10m", "kill", "2h", "--silence-grace '2h' is out of range"),
])
def test_bad_option_values_get_a_clear_error(timeout: object, action: object, grace: object, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        SilencePolicy.parse(timeout, action, grace)
    assert error in str(info.value) and info.value.hint


def test_good_option_values() -> None:
    assert SilencePolicy.parse("10m", "kill") == SilencePolicy(600.0, "kill", liveness.KILL_GRACE_S)
    assert SilencePolicy.parse(90, None, "5s") == SilencePolicy(90.0, "warn", 5.0)
    assert SilencePolicy.parse(None, "kill") is None and SilencePolicy.parse("0", "warn") is None  # off
    with pytest.raises(ConfigError, match="run.on_silence 'x'"):  # config keys name themselves
        SilencePolicy.parse("1m", "x", names=("run.silence_timeout", "run.on_silence", "run.silence_grace"))


def test_silence_fires_once_per_silent_stretch_and_output_resets_it() -> None:
    silence = Silence(100.0, SilencePolicy(60.0, "warn"))
    assert silence.silent_seconds(130.0) == 30.0 and not silence.due(130.0)
    assert silence.due(160.0) and not silence.due(161.0) and not silence.due(500.0)  # once
    silence.last_output = 170.0  # the task printed
    assert silence.silent_seconds(171.0) == 1.0 and not silence.due(229.0) and silence.due(230.0)
    assert not Silence(0.0).due(1e9)  # no policy, never due


def test_a_sample_makes_the_issues_liveness_object(start: Start) -> None:
    proc = start(["sleep", "30"])
    s = Sampler(proc.pid).sample()
    assert s is not None
    doc = fmt.Liveness(10**18, 10**18 - 12_500_000_000, s.sampled_ns, s.cpu_seconds, fmt.cut(s.processes), 1)
    out = doc.to_json()
    assert list(out)[:5] == ["last_output_ns", "silent_seconds", "sampled_ns", "cpu_seconds", "processes"]
    assert (out["last_output_ns"], out["silent_seconds"]) == (10**18 - 12_500_000_000, 12.5)
    assert [p["pid"] for p in out["processes"]] == [proc.pid] and fmt.loads(fmt.dumps(doc)) == doc


def test_kill_sends_term_then_kill_to_the_whole_tree(start: Start, tmp_path: Path) -> None:
    # The task traps TERM (writes it down and goes on); a background child and a setsid'd daemon that
    # left the group ignore TERM. Only KILL, to the group and to the daemon by pid, ends them all.
    said = tmp_path / "said"
    proc = start(["sh", "-c", f"trap 'echo term >> {said}' TERM; (trap '' TERM; sleep 61) & "
                              "(setsid sh -c \"trap '' TERM; sleep 62\" &); while :; do sleep 0.1; done"])
    sampler = Sampler(proc.pid, mark=MARK)
    wait_for(lambda: {"sleep 61", "sleep 62"} <= set(commands(sampler.sample())))
    killer = Killer(sampler, grace=1.0, now=time.monotonic())
    assert killer.tree is not None and {"sleep 61", "sleep 62"} <= set(commands(killer.tree))
    pids = [p.pid for p in killer.tree.processes]
    wait_for(lambda: said.exists() and said.read_text() == "term\n")  # the task heard TERM ...
    time.sleep(0.3)
    assert proc.poll() is None and [p for p in pids if not gone(p)]  # ... and it and the ignorers live on
    assert not killer.poll(time.monotonic())  # the grace is not over
    time.sleep(0.8)
    assert killer.poll(time.monotonic()) and not killer.poll(time.monotonic() + 5)  # KILL, once
    assert proc.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: all(gone(p) for p in pids))
    assert all(gone(p) for p in commands_pids(Sampler(proc.pid, mark=MARK).sample()))


def commands_pids(s: Sample | None) -> list[int]:
    return [p.pid for p in s.processes] if s else []


def test_signal_tree_never_signals_us_our_group_or_init() -> None:
    assert liveness.signal_tree(0, None, [os.getpid(), 1, 0]) == 0
    assert liveness.signal_tree(0, os.getpgid(0), []) == 0  # `--ibex`: the task's group is ours
