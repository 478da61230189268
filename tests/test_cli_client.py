"""`logship tail` and `logship download` against a real `logship serve` subprocess, with real agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from shipper.agent import default_host
from shipper.commands.client import base_url
from shipper.commands.download import ETAG_SUFFIX, Progress
from shipper.commands.tail import lines_start
from shipper.config import Config, load_config
from shipper.format import names

from .support import LOGSHIP, NASTY, Api, Proxy, free_port, sha, spooled, start_agent, stop_agent, watch_once

# 50 MB of log lines, written fast
BIG = ("import sys\nw = sys.stdout.buffer.write\nrow = b'%07d ' + b'x' * 91 + b'\\n'\n"
       "for i in range(0, 500000, 1000): w(b''.join(row % j for j in range(i, i + 1000)))\n")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = Api(tmp_path)
    a.start()
    try:
        yield a
    finally:
        a.stop(signal.SIGKILL)


class Collector:
    """Reads a process's stdout in a thread, so a test can wait for some of it while the process runs."""

    def __init__(self, p: subprocess.Popen[bytes]) -> None:
        self.data = b""
        self._lock = threading.Lock()
        assert p.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(p.stdout,), daemon=True)
        self._thread.start()

    def _read(self, f: IO[bytes]) -> None:
        fd = f.fileno()
        while piece := os.read(fd, 65536):
            with self._lock:
                self.data += piece

    def wait_for(self, ok: Callable[[bytes], bool], timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if ok(self.data):
                    return self.data
            time.sleep(0.01)
        raise AssertionError(f"timed out; got {len(self.data)} bytes: {self.data[-200:]!r}")

    def finish(self) -> bytes:
        self._thread.join(30)
        return self.data


def last_lines(data: bytes, n: int) -> bytes:
    """What `tail -n N` prints: an unterminated last line counts as one."""
    return b"".join(re.findall(rb"[^\n]*\n|[^\n]+\Z", data)[-n:]) if n else b""


# --- helpers without a server ----------------------------------------------------------------


def test_lines_start() -> None:
    assert lines_start(b"a\nb\nc\n", 2, True) == 2
    assert lines_start(b"a\nb\nc", 2, True) == 2  # the unterminated last line counts
    assert lines_start(b"a\nb\n", 5, True) == 0
    assert lines_start(b"a\nb\n", 5, False) is None  # not the whole log: read further back
    assert lines_start(b"a\nb\n", 0, False) == 4
    assert lines_start(b"", 3, True) == 0
    assert lines_start(b"\n\n\n", 2, False) == 1


def test_base_url() -> None:
    def cfg(listen: str) -> Config:
        return load_config(env={"LOGSHIP_API_LISTEN": listen, "LOGSHIP_API_TOKENS": "t" * 16})

    assert base_url(cfg("127.0.0.1:8080"), None) == "http://127.0.0.1:8080"
    assert base_url(cfg("0.0.0.0:9000"), None) == "http://127.0.0.1:9000"
    assert base_url(cfg("[::]:9000"), None) == "http://[::1]:9000"
    assert base_url(cfg("[::1]:9000"), "https://logs.example/x/") == "https://logs.example/x"


def test_progress_bar_on_a_terminal_only() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (plain, False)):
        p = Progress("t/h", out, is_tty)
        p.total, p.first = 4 << 20, 0
        p.update(1 << 20, force=True)
        p.finish(4 << 20, "logship: downloaded t/h")
    assert "\r" in tty.getvalue() and "25%" in tty.getvalue() and "4.0 MiB/4.0 MiB 100%" in tty.getvalue()
    assert plain.getvalue() == "logship: downloaded t/h\n"


# --- tail ------------------------------------------------------------------------------------


def test_tail_prints_the_last_lines_exactly(api: Api) -> None:
    script = "import sys\nfor i in range(3000): print('line', i, 'y' * (i % 50))\nsys.stdout.write('no newline')\n"
    data = api.run("lines", script)
    for args, want in [((), last_lines(data, 10)), (("-n", "3"), last_lines(data, 3)),
                       (("--lines", "1"), b"no newline"), (("-n", "0"), b""),
                       (("-n", "100000"), data), (("--from", "12345"), data[12345:]),
                       (("--from", str(len(data))), b"")]:
        res = api.cli("tail", "lines", "--host", "h1", *args)
        assert res.returncode == 0, res.stderr
        assert res.stdout == want, args
    # awkward bytes (invalid UTF-8, NUL, \r, a 5 MiB line: the tail Range must grow) come out exact
    nasty = api.run("nasty", NASTY)
    for n in (1, 2, 3, 6):
        res = api.cli("tail", "nasty", "--host", "h1", "-n", str(n))
        assert res.returncode == 0 and res.stdout == last_lines(nasty, n), n
    # an empty log: nothing to print, an empty file
    api.run("empty", "pass")
    assert api.cli("tail", "empty", "--host", "h1").stdout == b""
    assert api.cli("download", "empty", "--host", "h1", "-o", "empty.log").returncode == 0
    assert (api.tmp_path / "empty.log").read_bytes() == b""
    # the host defaults to this machine's, as for the agent
    data = api.run("here", "print('on this host')", host=default_host())
    assert api.cli("tail", "here").stdout == b"on this host\n"


def test_tail_follow_prints_every_byte_until_the_task_ends(api: Api) -> None:
    gate = api.tmp_path / "gate"
    script = (f"import os, sys, time\nfor i in range(500): print('early', i)\nsys.stdout.flush()\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
              "w = sys.stdout.buffer\n"
              "for i in range(100):\n"
              "    w.write(b'late %d \\xff\\xfe\\r' % i); w.flush(); time.sleep(0.005)\n"
              "    w.write(b'done\\n'); w.flush(); sys.stderr.write('err %d\\n' % i); sys.stderr.flush()\n"
              "w.write(b'the end, no newline'); w.flush()\n")
    p = start_agent(api.spool, "follow", [sys.executable, "-c", script], env=api.env, stdout=subprocess.DEVNULL)
    try:
        early = b"".join(b"early %d\n" % i for i in range(500))
        wait_spooled(api.spool, "follow", early)
        whole = api.popen("tail", "-f", "--from", "0", "follow", "--host", "h1")
        last = api.popen("tail", "--follow", "follow", "--host", "h1", "-n", "5")
        got_whole, got_last = Collector(whole), Collector(last)
        got_whole.wait_for(lambda d: d == early)
        got_last.wait_for(lambda d: d == last_lines(early, 5))
        gate.touch()
        assert whole.wait(60) == 0 and last.wait(60) == 0
        assert p.wait(30) == 0
        log = spooled(api.spool, "follow")
        assert log.endswith(b"the end, no newline") and b"err 99\n" in log
        assert got_whole.finish() == log
        assert got_last.finish() == last_lines(early, 5) + log[len(early):]
    finally:
        stop_agent(p, api.spool, "follow")


def test_tail_follow_resumes_across_an_api_restart(api: Api) -> None:
    script = ("import sys, time\nfor i in range(400):\n"
              "    sys.stdout.write('tick %d %s\\n' % (i, 'z' * (i % 30))); sys.stdout.flush(); time.sleep(0.01)\n")
    p = start_agent(api.spool, "restart", [sys.executable, "-c", script], env=api.env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        tail = api.popen("tail", "-f", "--from", "0", "restart", "--host", "h1")
        out = Collector(tail)
        out.wait_for(lambda d: b"tick 50 " in d)
        api.stop(signal.SIGKILL)  # mid-follow: the client sees its connection refused or dropped
        time.sleep(0.5)
        api.start()  # same port
        assert tail.wait(60) == 0
        assert p.wait(30) == 0
        assert out.finish() == spooled(api.spool, "restart")
        assert tail.stderr is not None and b"lost the API" in tail.stderr.read()
    finally:
        stop_agent(p, api.spool, "restart")


# --- download --------------------------------------------------------------------------------


def test_download_is_byte_identical_from_spool_and_store(api: Api) -> None:
    data = api.run("dl", NASTY)
    res = api.cli("download", "dl", "--host", "h1", "-o", "a.log")
    assert res.returncode == 0, res.stderr
    out = api.tmp_path / "a.log"
    assert sha(out.read_bytes()) == sha(data)
    assert not (api.tmp_path / ("a.log" + ETAG_SUFFIX)).exists()
    assert res.stderr.startswith(b"logship: downloaded dl/h1: ") and b"\r" not in res.stderr  # not a TTY
    # shipped to the store (zstd) and pruned from the spool: the same bytes
    watch = watch_once({**api.env, "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "0"})
    assert watch.returncode == 0, watch.stderr
    assert not list((api.spool / "dl" / "h1").glob("*.log"))
    assert api.cli("download", "dl", "--host", "h1", "-o", "b.log").returncode == 0
    assert sha((api.tmp_path / "b.log").read_bytes()) == sha(data)


def test_download_resumes_a_partial_file(api: Api) -> None:
    data = api.run("part", "for i in range(100000): print('row', i)")
    out, sidecar = api.tmp_path / "p.log", api.tmp_path / ("p.log" + ETAG_SUFFIX)
    out.write_bytes(data[:300000])
    sidecar.write_text(api.etag("part"))
    res = api.cli("download", "part", "--host", "h1", "-o", "p.log")
    assert res.returncode == 0, res.stderr
    assert b"resumed at byte 300000" in res.stderr
    assert out.read_bytes() == data and not sidecar.exists()
    # a complete file whose sidecar was left behind: one byte is asked for, nothing changes
    sidecar.write_text(api.etag("part"))
    res = api.cli("download", "part", "--host", "h1", "-o", "p.log")
    assert res.returncode == 0 and out.read_bytes() == data and not sidecar.exists()


@pytest.mark.parametrize("case", ["other-run", "not-a-prefix", "longer-than-the-log", "no-sidecar"])
def test_download_starts_over_when_the_partial_file_is_not_this_log(api: Api, case: str) -> None:
    data = api.run("stale", "for i in range(20000): print('row', i)")
    out, sidecar = api.tmp_path / "s.log", api.tmp_path / ("s.log" + ETAG_SUFFIX)
    etag = api.etag("stale")
    partial = {"other-run": data[:5000], "not-a-prefix": data[:4999] + b"#", "no-sidecar": data[:5000],
               "longer-than-the-log": data + b"more"}[case]
    out.write_bytes(partial)
    if case != "no-sidecar":
        sidecar.write_text('"0123456789abcdef-5000"' if case == "other-run" else etag)
    res = api.cli("download", "stale", "--host", "h1", "-o", "s.log")
    assert res.returncode == 0, res.stderr
    assert b"resumed" not in res.stderr
    assert out.read_bytes() == data and not sidecar.exists()


def test_download_of_a_running_log_then_the_rest(api: Api) -> None:
    gate = api.tmp_path / "gate"
    script = (f"import os, time\nfor i in range(20000): print('before', i)\nimport sys; sys.stdout.flush()\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
              "for i in range(20000): print('after', i)\n")
    p = start_agent(api.spool, "live", [sys.executable, "-c", script], env=api.env, stdout=subprocess.DEVNULL)
    try:
        before = b"".join(b"before %d\n" % i for i in range(20000))
        wait_spooled(api.spool, "live", before)
        res = api.cli("download", "live", "--host", "h1", "-o", "live.log")
        assert res.returncode == 0 and b"still running" in res.stderr, res.stderr
        assert (api.tmp_path / "live.log").read_bytes() == before
        assert (api.tmp_path / ("live.log" + ETAG_SUFFIX)).exists()
        gate.touch()
        assert p.wait(30) == 0
        res = api.cli("download", "live", "--host", "h1", "-o", "live.log")
        assert res.returncode == 0 and b"still running" not in res.stderr, res.stderr
        assert f"resumed at byte {len(before)}".encode() in res.stderr
        assert (api.tmp_path / "live.log").read_bytes() == spooled(api.spool, "live")
        assert not (api.tmp_path / ("live.log" + ETAG_SUFFIX)).exists()
    finally:
        stop_agent(p, api.spool, "live")


async def run_cli(api: Api, *args: str, timeout: float = 120) -> tuple[int, bytes, bytes]:
    p = await asyncio.create_subprocess_exec(*LOGSHIP, *args, env=api.env, cwd=api.tmp_path,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode is not None
    return p.returncode, out, err


@pytest.mark.asyncio(loop_scope="session")
async def test_big_download_survives_drops_and_a_killed_client(api: Api) -> None:
    data = await asyncio.to_thread(api.run, "big", BIG)
    assert len(data) == 50_000_000
    out, sidecar = api.tmp_path / "big.log", api.tmp_path / ("big.log" + ETAG_SUFFIX)

    # Every connection is cut after 12 MB: the client resumes by itself, with no gap and no duplicate.
    proxy = Proxy(api.port, cut_after=12_000_000)
    async with proxy as cutting:
        code, _, msg = await run_cli(api, "download", "big", "--host", "h1", "-o", "big.log", "--url", cutting)
    assert code == 0, msg
    assert proxy.cuts == 4
    assert await asyncio.to_thread(lambda: sha(out.read_bytes())) == sha(data)
    assert not sidecar.exists()
    out.unlink()

    # Killed mid-way (a slow link, kill -9): the next run resumes from what the file holds.
    async with Proxy(api.port, rate=25e6) as slow:
        p = await asyncio.create_subprocess_exec(*LOGSHIP, "download", "big", "--host", "h1", "-o", "big.log",
                                                 "--url", slow, env=api.env, cwd=api.tmp_path,
                                                 stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (out.stat().st_size if out.exists() else 0) < 10_000_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        p.kill()
        await p.wait()
    have = out.stat().st_size
    assert 10_000_000 <= have < len(data) and sidecar.exists()
    code, _, msg = await run_cli(api, "download", "big", "--host", "h1", "-o", "big.log")
    assert code == 0, msg
    assert f"resumed at byte {have}".encode() in msg
    assert await asyncio.to_thread(lambda: sha(out.read_bytes())) == sha(data)


@pytest.mark.asyncio(loop_scope="session")
async def test_tail_follow_through_a_connection_that_keeps_dropping(api: Api) -> None:
    script = ("import sys, time\nfor i in range(300):\n"
              "    sys.stdout.write('beat %d %s\\n' % (i, 'q' * (i * 37 % 900)))\n"
              "    sys.stdout.flush(); time.sleep(0.005)\n")
    p = await asyncio.to_thread(start_agent, api.spool, "drops", [sys.executable, "-c", script], env=api.env,
                                stdout=subprocess.DEVNULL)
    try:
        # `tail` of a task with no log yet is an error (issue 13), so the log must exist first
        run_file = api.spool / "drops" / "h1" / names.RUN_FILE
        for _ in range(300):
            if run_file.exists():
                break
            await asyncio.sleep(0.1)
        proxy = Proxy(api.port, cut_after=20_000)
        async with proxy as cutting:
            code, out, err = await run_cli(api, "tail", "-f", "--from", "0", "drops", "--host", "h1",
                                           "--url", cutting)
        assert code == 0, err
        assert await asyncio.to_thread(p.wait, 30) == 0
        assert out == spooled(api.spool, "drops")
        assert proxy.cuts >= 3 and b"lost the API" in err
    finally:
        stop_agent(p, api.spool, "drops")


# --- errors ----------------------------------------------------------------------------------


def test_errors_exit_non_zero_with_a_message(api: Api) -> None:
    api.run("ok", "print('fine')")
    res = api.cli("tail", "../etc", "--host", "h1")
    assert res.returncode == 2 and res.stderr.startswith(b"logship: invalid task id '../etc' (hint:")
    res = api.cli("download", "nope", "--host", "h1", "-o", "x.log")
    assert res.returncode == 2 and b"no log of task nope at http" in res.stderr and b"hint:" in res.stderr
    assert not (api.tmp_path / "x.log").exists()
    res = api.cli("tail", "ok", "--host", "h1", "--from", "999")
    assert res.returncode == 2 and b"past the end of the log" in res.stderr and b"--from" in res.stderr
    down = f"http://127.0.0.1:{free_port()}"
    for cmd in (["tail", "ok"], ["tail", "-f", "ok"], ["download", "ok", "-o", "y.log"]):
        res = api.cli(*cmd, "--host", "h1", "--url", down, timeout=30)
        assert res.returncode == 2, cmd
        assert f"cannot reach the API at {down}".encode() in res.stderr, res.stderr
        assert f"is `logship serve` running at {down}?".encode() in res.stderr
    assert api.cli("tail", "ok", "--host", "h1", "--url", "ftp://x").returncode == 2
    assert api.cli("tail", "ok", "--from", "-3").returncode == 2  # argparse: not a count


def test_tokens(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    a = Api(tmp_path, LOGSHIP_API_TOKENS=token)
    a.start()
    try:
        a.run("sec", "print('secret')")
        without = {k: v for k, v in a.env.items() if k != "LOGSHIP_API_TOKENS"}
        res = subprocess.run([*LOGSHIP, "tail", "sec", "--host", "h1"], env=without, capture_output=True, timeout=60)
        assert res.returncode == 2 and b"HTTP 401" in res.stderr and b"LOGSHIP_TOKEN" in res.stderr
        res = subprocess.run([*LOGSHIP, "tail", "sec", "--host", "h1"], env={**without, "LOGSHIP_TOKEN": token},
                             capture_output=True, timeout=60)
        assert res.returncode == 0 and res.stdout == b"secret\n"
        assert a.cli("tail", "sec", "--host", "h1").stdout == b"secret\n"  # the first of api.tokens
    finally:
        a.stop(signal.SIGKILL)


def wait_spooled(spool: Path, task: str, data: bytes, timeout: float = 30) -> None:
    """Until the spool holds exactly `data` of the log (or the timeout; the caller's asserts then say why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if spooled(spool, task) == data:
                return
        time.sleep(0.02)
