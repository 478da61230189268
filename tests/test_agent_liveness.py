"""The agent's liveness: real `logship run` processes sample their tasks into liveness.json and apply
--silence-timeout; liveness.json is read back through the typed, checked loader the watcher and API use."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper import liveness
from shipper.format import liveness as fmt
from shipper.format import names

from .support import LOGSHIP, env_for, spooled

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

FAST = {"LOGSHIP_AGENT_SAMPLE_SECONDS": "0.2"}  # samples every 0.2 s, so the tests wait little
Start = Callable[..., subprocess.Popen[bytes]]


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)
    return got


def live(spool: Path, task: str, host: str = "h1") -> fmt.Liveness | None:
    return fmt.read(spool / task / host / names.LIVENESS_FILE)


def commands(doc: fmt.Liveness | None) -> list[str]:
    return [p.command for p in doc.processes] if doc else []


def marked(run_id: str) -> list[int]:
    """Live processes carrying the agent's mark for this run."""
    needle, pids = f"\0{liveness.MARK_ENV}={run_id}\0".encode(), []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if needle in b"\0" + (entry / "environ").read_bytes():
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                if state != b"Z":
                    pids.append(int(entry.name))
    return pids


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts `logship run --task T --host h1 [ARGS] -- CMD` on tmp_path/spool, sampling fast; at the end kills
    whatever of each task is left (by the mark the agent sets, so escaped daemons too) and reaps the agents."""
    spool = tmp_path / "spool"
    started: list[tuple[subprocess.Popen[bytes], str]] = []

    def run(task: str, cmd: list[str], *args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*LOGSHIP, "run", "--task", task, "--host", "h1", *args, "--", *cmd],
                                env=env_for(spool, None, **{**FAST, **env}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, process_group=0)
        started.append((proc, task))
        return proc

    yield run
    for proc, task in started:
        with contextlib.suppress(OSError, ValueError, KeyError):
            run_id = json.loads((spool / task / "h1" / names.RUN_FILE).read_bytes())["run_id"]
            for pid in marked(run_id):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def exit_doc(spool: Path, task: str, host: str = "h1") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((spool / task / host / names.EXIT_FILE).read_bytes())
    return doc


def test_a_sleeping_task_grows_silent_and_sleep_shows_state_s(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    agent = start("sleepy", ["sh", "-c", "echo started; sleep 3"])
    first = wait_for(lambda: (d := live(spool, "sleepy")) and "sleep 3" in commands(d) and d.silent_seconds() > 0.1
                     and d)
    later = wait_for(lambda: (d := live(spool, "sleepy")) and d.written_ns > first.written_ns + 500_000_000 and d)
    assert later.last_output_ns == first.last_output_ns  # nothing printed since "started"
    assert later.silent_seconds() > first.silent_seconds() + 0.4
    assert later.silent_seconds(time.time_ns()) >= later.silent_seconds()  # a reader's now: later still
    sleep = next(p for p in later.processes if p.command == "sleep 3")
    root = later.processes[0]
    assert (sleep.state, sleep.ppid, root.command) == ("S", root.pid, "sh -c echo started; sleep 3")
    assert sleep.rss_bytes > 0 and later.sampled_ns is not None and later.sampled_ns <= later.written_ns
    assert later.silence_timeout is None and later.events == ()  # no policy: sampling only
    run = json.loads((spool / "sleepy" / "h1" / names.RUN_FILE).read_bytes())
    assert root.pid == run["child_pid"]
    out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0 and out == b"started\n"
    # a finished log keeps its last sample, written before exit.json, its silence as of the end
    final = live(spool, "sleepy")
    assert final is not None and final.processes and final.processes[0].pid == run["child_pid"]
    assert final.written_ns <= exit_doc(spool, "sleepy")["ended_ns"] and final.silent_seconds() >= 2.5
    assert "end_reason" not in exit_doc(spool, "sleepy")


def test_a_spinning_task_is_running_with_rising_cpu(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    start("spin", [sys.executable, "-c", "print('go', flush=True)\nwhile True: pass"])
    first = wait_for(lambda: (d := live(spool, "spin")) and d.processes and d.processes[0].cpu_seconds > 0.05 and d)
    later = wait_for(lambda: (d := live(spool, "spin")) and d.cpu_seconds is not None and first.cpu_seconds
                     is not None and d.cpu_seconds >= first.cpu_seconds + 0.3 and d)
    assert later.processes[0].state == "R" and later.processes[0].cpu_seconds > first.processes[0].cpu_seconds
    assert later.processes[0].wchan == ""  # running: it waits nowhere


def test_silence_timeout_kill_exits_124_and_records_the_tree(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    # the task goes quiet; a background child ignores TERM, so only the KILL after the grace ends it. Its
    # sleeps outlast the wait for the agent: a run that ends within it was ended by the policy.
    agent = start("hung", ["sh", "-c", "echo start; (trap '' TERM; sleep 601) & sleep 602"],
                  "--silence-timeout", "1s", "--on-silence", "kill", "--silence-grace", "1s")
    out, err = agent.communicate(timeout=240)
    assert agent.returncode == liveness.EXIT_SILENCE == 124
    assert out == b"start\n"
    assert b"hung/h1 has written nothing for 1s" in err and b"exits 124" in err and b"sleep 602" in err
    ended = exit_doc(spool, "hung")
    assert (ended["end_reason"], ended["exit_code"], ended["status"]) == ("silence", 124, "finished")
    assert ended["signal"] == signal.SIGTERM  # the shell died of TERM; its TERM-deaf child needed the KILL
    doc = live(spool, "hung")
    assert doc is not None and (doc.silence_timeout, doc.on_silence) == (1.0, "kill")
    (kill,) = doc.events
    assert kill.action == "kill" and kill.silent_seconds >= 1.0  # however late a loaded machine ran the check
    assert {"sleep 601", "sleep 602"} <= {p.command for p in kill.processes}  # the tree at the moment of the kill
    assert kill.at_ns - doc.last_output_ns >= 1_000_000_000
    run_id = json.loads((spool / "hung" / "h1" / names.RUN_FILE).read_bytes())["run_id"]
    assert marked(run_id) == []  # the TERM-deaf child is gone too
    assert spooled(spool, "hung") == b"start\n"  # nothing of it in the log's bytes


def test_a_stopped_task_shows_state_t_and_the_kill_continues_it(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    agent = start("stopped", ["sh", "-c", "echo a; kill -STOP $$; echo never"],
                  "--silence-timeout", "2s", "--on-silence", "kill", "--silence-grace", "600s")
    doc = wait_for(lambda: (d := live(spool, "stopped")) and d.processes and d.processes[0].state == "T" and d)
    assert doc.processes[0].command.startswith("sh -c echo a")
    out, _ = agent.communicate(timeout=240)  # TERM then CONT, as timeout(1): no wait for the KILL 600 s later
    assert agent.returncode == 124 and out == b"a\n"
    assert exit_doc(spool, "stopped")["signal"] == signal.SIGTERM


def test_output_resets_the_clock_and_warn_never_touches_the_log(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    # output every 0.3 s never reaches the 1.5 s timeout; two quiet stretches of 4 s each do, once each (a
    # check a loaded machine runs late still falls within them)
    script = "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.3; done; sleep 4; echo half; sleep 4; echo done"
    agent = start("quiet", ["sh", "-c", script], "--silence-timeout", "1.5s", "--on-silence", "warn")
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0 and out == b"1\n2\n3\n4\n5\n6\n7\n8\nhalf\ndone\n"
    assert err.count(b"has written nothing for") == 2 and b"warning only" in err
    assert spooled(spool, "quiet") == out  # the warnings are on the agent's stderr, never in the log
    doc = live(spool, "quiet")
    assert doc is not None and [e.action for e in doc.events] == ["warn", "warn"]
    run = json.loads((spool / "quiet" / "h1" / names.RUN_FILE).read_bytes())
    first, second = doc.events
    assert first.at_ns - run["started_ns"] >= 2.1e9 + 1.5e9  # after the last echo of the loop and 1.5 s of quiet
    assert first.silent_seconds >= 1.5 and second.silent_seconds >= 1.5
    assert second.processes and not first.processes  # only the newest event keeps its tree
    assert "end_reason" not in exit_doc(spool, "quiet")


def test_background_processes_of_the_task_are_in_the_tree(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    # by parent; double-forked (parent init, same group); setsid'd and double-forked: only the mark
    # (LOGSHIP_RUN_ID, set by the agent in the task's environment) still links it to the task
    start("bg", ["sh", "-c", "sleep 41 & (sleep 42 &); (setsid sleep 43 &); echo started; wait"])
    doc = wait_for(lambda: (d := live(spool, "bg")) and {"sleep 41", "sleep 42", "sleep 43"} <= set(commands(d))
                   and d)
    by_cmd = {p.command: p for p in doc.processes}
    root = doc.processes[0].pid
    assert by_cmd["sleep 41"].ppid == root and by_cmd["sleep 42"].ppid != root and by_cmd["sleep 43"].ppid != root
    assert doc.processes_total == len(doc.processes) == 4


def test_a_task_whose_children_exit(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    burn = f"{sys.executable} -c 'import time\nwhile time.process_time() < 0.4: pass'"
    start("kids", ["sh", "-c", f"{burn}; {burn}; echo burnt; sleep 30"])
    doc = wait_for(lambda: (d := live(spool, "kids")) and commands(d)[1:] == ["sleep 30"] and d)
    # the exited children are gone from the list but their CPU stays in the tree's
    assert doc.cpu_seconds is not None and doc.cpu_seconds >= 0.75
    assert sum(p.cpu_seconds for p in doc.processes) < 0.2


@pytest.mark.parametrize("args, env, words", [
    (["--silence-timeout", "ten"], {}, ["--silence-timeout 'ten' is not a duration", "hint: e.g. 90, 90s, 10m"]),
    (["--silence-timeout=-5m"], {}, ["--silence-timeout '-5m' is not a duration"]),
    (["--silence-timeout", "0.1s"], {}, ["--silence-timeout '0.1s' is out of range", "0 turns it off"]),
    (["--silence-timeout", "10m", "--on-silence", "explode"], {}, ["--on-silence 'explode' is not an action"]),
    (["--on-silence", "kill"], {}, ["--on-silence kill needs a timeout", "--silence-timeout DURATION"]),
    (["--silence-timeout", "10m", "--silence-grace", "2h"], {}, ["--silence-grace '2h' is out of range"]),
    ([], {"LOGSHIP_AGENT_SILENCE_TIMEOUT": "soon"}, ["agent.silence_timeout = 'soon' is not allowed",
                                                      "0 (off) or a duration"]),
    ([], {"LOGSHIP_AGENT_ON_SILENCE": "explode"}, ["agent.on_silence = 'explode'", "one of warn, kill"]),
    ([], {"LOGSHIP_AGENT_SAMPLE_SECONDS": "0"}, ["agent.sample_seconds = '0' is not allowed"]),
])
def test_bad_option_values_get_a_clear_error(tmp_path: Path, args: list[str], env: dict[str, str],
                                             words: list[str]) -> None:
    spool = tmp_path / "spool"
    ran = subprocess.run([*LOGSHIP, "run", "--task", "t", "--host", "h1", *args, "--", "touch", str(tmp_path / "ran")],
                         env=env_for(spool, None, **env), capture_output=True, timeout=60)
    err = ran.stderr.decode()
    assert ran.returncode == 125 and all(w in err for w in words), err
    assert err.startswith("logship: ") and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "ran").exists() and not (spool / "t").exists()  # nothing ran, no log was made


def test_config_keys_set_the_policy_and_a_flag_overrides_them(tmp_path: Path, start: Start) -> None:
    spool = tmp_path / "spool"
    cfg = {"LOGSHIP_AGENT_SILENCE_TIMEOUT": "1s", "LOGSHIP_AGENT_ON_SILENCE": "kill",
           "LOGSHIP_AGENT_SILENCE_GRACE": "0"}
    agent = start("by-config", ["sleep", "30"], **cfg)
    agent.communicate(timeout=60)
    assert agent.returncode == 124 and exit_doc(spool, "by-config")["end_reason"] == "silence"
    agent = start("by-flag", ["sh", "-c", "sleep 2; echo ok"], "--on-silence", "warn", **cfg)
    out, err = agent.communicate(timeout=60)
    assert (agent.returncode, out) == (0, b"ok\n") and b"warning only" in err
    agent = start("off", ["sh", "-c", "sleep 1.5; echo ok"], "--silence-timeout", "0", **cfg)
    assert agent.communicate(timeout=60)[0] == b"ok\n" and agent.returncode == 0


def test_ibex_scripts_take_the_options(tmp_path: Path) -> None:
    spool, script = tmp_path / "spool", tmp_path / "meta" / "7" / "script"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hi\nsleep 30\n")
    script.chmod(0o755)
    # in a group of its own, as Categraf's `sh -c`: under --ibex the script shares the agent's group
    ran = subprocess.run([*LOGSHIP, "run", "--ibex", "--host", "h1", "--silence-timeout", "1s", "--on-silence",
                          "kill", "--silence-grace", "0", "--", "/bin/sh", str(script)],
                         env=env_for(spool, None, **FAST), capture_output=True, timeout=60, process_group=0)
    assert ran.returncode == 124 and ran.stdout == b"hi\n"
    assert exit_doc(spool, "ibex-7")["end_reason"] == "silence"
    doc = live(spool, "ibex-7")
    assert doc is not None and [e.action for e in doc.events] == ["kill"]
    assert "sleep 30" in {p.command for p in doc.events[0].processes}


# --- liveness.json is untrusted ------------------------------------------------------------------------------


def good() -> dict[str, Any]:
    proc = {"pid": 7, "ppid": 1, "state": "S", "cpu_seconds": 0.5, "rss_bytes": 4096, "command": "sleep 9",
            "wchan": "do_nanosleep"}
    return {"version": 1, "written_ns": 2_000_000_000, "last_output_ns": 1_000_000_000, "silent_seconds": 1.0,
            "sampled_ns": 2_000_000_000, "cpu_seconds": 0.5, "processes": [proc], "processes_total": 1,
            "silence": {"timeout_seconds": 60, "action": "kill"},
            "events": [{"action": "warn", "at_ns": 3, "silent_seconds": 60, "processes": [proc]}]}


def with_(path: str, value: Any) -> dict[str, Any]:
    doc = good()
    *parents, last = path.split(".")
    target: Any = doc
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    target[last] = value
    return doc


def test_a_good_document_round_trips() -> None:
    doc = fmt.loads(json.dumps(good()).encode())
    assert doc is not None and doc.silent_seconds() == 1.0 and doc.silent_seconds(11_000_000_000) == 10.0
    assert fmt.loads(fmt.dumps(doc)) == doc
    api = doc.to_json(3_000_000_000)
    assert list(api)[:5] == ["last_output_ns", "silent_seconds", "sampled_ns", "cpu_seconds", "processes"]
    assert api["silent_seconds"] == 2.0 and api["processes"][0]["wchan"] == "do_nanosleep"


@pytest.mark.parametrize("doc", [
    b"", b"not json", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"[]", b"null",
    json.dumps(with_("version", 2)).encode(),
    json.dumps(with_("written_ns", -1)).encode(),
    json.dumps(with_("last_output_ns", 1 << 63)).encode(),
    json.dumps(with_("last_output_ns", True)).encode(),
    json.dumps(with_("cpu_seconds", "1")).encode(),
    json.dumps(with_("processes.0.pid", 0)).encode(),
    json.dumps(with_("processes.0.state", "SS")).encode(),
    json.dumps(with_("processes.0.command", "x" * 201)).encode(),
    json.dumps(with_("processes.0.command", "\ud800")).encode(),  # a lone surrogate: no UTF-8 answer can carry it
    json.dumps(with_("processes.0.wchan", "<script>")).encode(),
    json.dumps(with_("processes.0.rss_bytes", 1.5)).encode(),
    json.dumps(with_("processes_total", 0)).encode(),
    json.dumps(with_("processes", [good()["processes"][0]] * 257)).encode(),
    json.dumps(with_("silence.action", "explode")).encode(),
    json.dumps(with_("events.0.silent_seconds", -1)).encode(),
    json.dumps(with_("events", [{}] * 17)).encode(),
    b'{"version": 1, "cpu_seconds": NaN}',
    json.dumps(with_("cpu_seconds", 1e300)).encode(),
])
def test_a_bad_document_is_no_liveness(doc: bytes) -> None:
    assert fmt.loads(doc) is None


def test_a_bad_file_is_no_liveness(tmp_path: Path) -> None:
    path = tmp_path / names.LIVENESS_FILE
    assert fmt.read(path) is None  # absent
    path.write_bytes(json.dumps(good()).encode() + b" " * fmt.LIVENESS_MAX)  # too large to be the agent's
    assert fmt.read(path) is None
    (tmp_path / "elsewhere.json").write_text(json.dumps(good()))
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")  # a link planted in the spool is not followed
    assert fmt.read(path) is None
    path.unlink()
    path.mkdir()
    assert fmt.read(path) is None
    path.rmdir()
    path.write_text(json.dumps(good()))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fmt.read(path, dir_fd=fd) == fmt.loads(path.read_bytes()) is not None
    finally:
        os.close(fd)


def test_what_the_agent_writes_stays_bounded() -> None:
    # a fork bomb with long command lines full of what JSON escapes at 6 bytes a character
    procs = [fmt.Process(p, 1, "S", 1.0, 1 << 30, "\x1b" * 500, "x" * 100) for p in range(1, 2001)]
    events = tuple(fmt.SilenceEvent("warn", n, 1.0, tuple(procs)) for n in range(40))
    doc = fmt.Liveness(5, 1, 5, 1.0, tuple(procs), len(procs), 60.0, "warn", events)
    data = fmt.dumps(doc)
    assert len(data) <= fmt.LIVENESS_MAX
    back = fmt.loads(data)
    assert back is not None and len(back.processes) == fmt.MAX_PROCESSES and back.processes_total == 2000
    assert len(back.events) == fmt.MAX_EVENTS and [len(e.processes) for e in back.events][-2:] == [0, 256]
    assert back.processes[0].command == "\x1b" * fmt.COMMAND_CHARS and back.processes[0].wchan == ""
