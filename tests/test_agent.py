"""The agent: passthrough, spool contents, chunking, rotation, signals, exit codes, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

from shipper.format import index, names
from shipper.spool import read_json

from .support import NASTY, env_for, run_agent, spooled, start_agent


def chunks_of(spool: Path, task: str, host: str = "h1") -> list[index.Chunk]:
    d = spool / task / host
    return [c for p in sorted(d.glob("*.idx")) for c in index.read(str(p))]


def stream_view(spool: Path, task: str, code: int) -> bytes:
    data = spooled(spool, task)
    return b"".join(data[c.offset:c.end] for c in chunks_of(spool, task) if c.stream == code)


def test_passthrough_and_spool_are_exact(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    alone = subprocess.run([sys.executable, "-c", NASTY], capture_output=True)
    res = run_agent(spool, "nasty", [sys.executable, "-c", NASTY])
    assert res.returncode == 0, res.stderr[-500:]
    assert res.stdout == alone.stdout and res.stderr == alone.stderr  # tee'd through unchanged
    assert stream_view(spool, "nasty", index.STDOUT) == alone.stdout
    assert stream_view(spool, "nasty", index.STDERR) == alone.stderr
    assert len(spooled(spool, "nasty")) == len(alone.stdout) + len(alone.stderr)


def test_chunks_are_line_aligned_and_partials_marked(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run_agent(spool, "nasty", [sys.executable, "-c", NASTY])
    data = spooled(spool, "nasty")
    chunks = chunks_of(spool, "nasty")
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    assert chunks[0].offset == 0 and all(a.end == b.offset for a, b in pairwise(chunks))
    assert all(a.ts_ns <= b.ts_ns for a, b in pairwise(chunks))
    for c in chunks:
        body = data[c.offset:c.end]
        assert c.lines == body.count(b"\n")
        assert body.endswith(b"\n") != bool(c.flags & index.PARTIAL)
    # the unterminated stderr half-line was flushed after the idle time, before its end arrived
    err = [data[c.offset:c.end] for c in chunks if c.stream == index.STDERR]
    assert b"half a line on stderr " in err and b"and its end\n" in err
    # the stdout line written meanwhile is whole: a line of one stream is never split by the other
    assert any(b"stdout between\n" in data[c.offset:c.end] for c in chunks if c.stream == index.STDOUT)


def test_rotation_by_size_and_age(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = env_for(spool, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_SEGMENT_SECONDS="1")
    script = ("import sys,time\nfor i in range(3000): print('line %05d ' % i + 'x'*60)\n"
              "sys.stdout.flush(); time.sleep(2.5); print('late')")
    res = run_agent(spool, "rot", [sys.executable, "-c", script], env=env)
    assert res.returncode == 0
    d = spool / "rot" / "h1"
    segs = sorted(p.name for p in d.glob("*.log"))
    assert not list(d.glob("*.open"))
    assert len(segs) >= 4  # ~210 KB in 64 KiB segments, then 'late' alone in a segment sealed by age
    # however much one read brings, a segment ends at a line end within its size
    assert all((d / n).stat().st_size <= 64 << 10 and (d / n).read_bytes().endswith(b"\n") for n in segs)
    assert spooled(spool, "rot") == res.stdout
    last = index.read(str(d / segs[-1].replace(".log", ".idx")))
    assert (d / segs[-1]).read_bytes() == b"late\n" and len(last) == 1


def test_empty_output(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    res = run_agent(spool, "quiet", ["true"])
    assert res.returncode == 0 and res.stdout == b""
    d = spool / "quiet" / "h1"
    assert not list(d.glob("*.log*"))
    assert read_json(d / names.EXIT_FILE)["exit_code"] == 0


def test_exit_codes(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert run_agent(spool, "e3", ["sh", "-c", "exit 3"]).returncode == 3
    assert run_agent(spool, "sig", ["sh", "-c", "kill -9 $$"]).returncode == 128 + 9
    assert read_json(spool / "sig" / "h1" / names.EXIT_FILE)["signal"] == 9
    res = run_agent(spool, "nf", ["/no/such/command"])
    assert res.returncode == 127 and b"command not found" in res.stderr


def test_signals_are_forwarded(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    p = start_agent(spool, "sigfwd", ["sh", "-c", script], stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 42
    assert b"got TERM" in p.stdout.read()
    assert stream_view(spool, "sigfwd", index.STDOUT) == b"ready\ngot TERM\n"


def test_second_run_is_refused_and_first_kept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert run_agent(spool, "dup", ["echo", "first"]).returncode == 0
    res = run_agent(spool, "dup", ["echo", "second"])
    assert res.returncode == 125
    assert b"already exists" in res.stderr and b"hint" in res.stderr
    assert spooled(spool, "dup") == b"first\n"


def test_bad_ids_and_config_change_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for bad in ["../etc", ".hidden", "a/b", "x" * 129, ""]:
        res = run_agent(spool, bad, ["echo", "hi"])
        assert res.returncode != 0 and b"invalid task id" in res.stderr, (bad, res.stderr)
    res = run_agent(spool, "ok", ["echo", "hi"], host="bad host")
    assert res.returncode != 0 and b"invalid host id" in res.stderr
    res = run_agent(spool, "ok", ["echo", "hi"], env=env_for(spool, LOGSHIP_SPOOL_SEGMENT_BYTES="lots"))
    assert res.returncode != 0 and b"spool.segment_bytes" in res.stderr and b"'lots'" in res.stderr
    assert not spool.exists() or not any(spool.rglob("*"))
