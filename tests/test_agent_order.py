"""Stream order: --merge-streams (one pipe, exact order, no split); with two pipes, each stream's own order is
exact and lines of the two move against each other only within the window docs/format.md states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.stream_order import WRITER, displacement
from shipper import agent, pipes
from shipper.format import index

from .support import LOGSHIP, env_for, run_agent, spooled

FIVE = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; echo out3"
IN_ORDER = b"out1\nerr1\nout2\nerr2\nout3\n"
RUNS = 5
# docs/format.md ("Stream order"): a line never lands past more than one read (1 MiB) and one held partial
# line (256 KiB) of the other stream's output, however long the agent waits for a CPU. The writer's lines
# are ~100 bytes.
MOVED_BOUND_LINES = (pipes.BIG_READ + agent.FLUSH_CAP) // 96


def chunks(spool: Path, task: str) -> list[index.Chunk]:
    return [c for p in sorted((spool / task / "h1").glob("*.idx")) for c in index.read(str(p))]


def late_ms(spool: Path, task: str) -> float:
    """The most any of the writer's lines waited between its write and the agent's read (the chunk index's
    time against the line's stamp)."""
    data = spooled(spool, task)
    return max((c.ts_ns - int(line.split()[1])) / 1e6 for c in chunks(spool, task)
               for line in data[c.offset:c.end].splitlines())


def test_merge_streams_keeps_the_written_order_and_drops_the_split(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for i in range(RUNS):
        res = run_agent(spool, f"merged-{i}", ["bash", "-c", FIVE], args=["--merge-streams"])
        assert res.returncode == 0, res.stderr[-500:]
        assert res.stdout == IN_ORDER and res.stderr == b""  # passed through as 2>&1 would
        assert spooled(spool, f"merged-{i}") == IN_ORDER
        assert {c.stream for c in chunks(spool, f"merged-{i}")} == {index.STDOUT}  # the split is gone
        assert json.loads((spool / f"merged-{i}" / "h1" / "run.json").read_text())["merge_streams"] is True


def test_the_config_key_merges_and_the_flag_wins_over_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    res = run_agent(spool, "by-config", ["bash", "-c", FIVE], env=env_for(spool, LOGSHIP_AGENT_MERGE_STREAMS="true"))
    assert res.returncode == 0 and res.stdout == IN_ORDER and spooled(spool, "by-config") == IN_ORDER
    split = run_agent(spool, "split", ["bash", "-c", FIVE])
    assert split.stdout == b"out1\nout2\nout3\n" and split.stderr == b"err1\nerr2\n"
    assert {c.stream for c in chunks(spool, "split")} == {index.STDOUT, index.STDERR}
    assert json.loads((spool / "split" / "h1" / "run.json").read_text())["merge_streams"] is False


def test_bad_values_are_refused_and_run_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    res = run_agent(spool, "bad", ["touch", str(tmp_path / "ran")],
                    env=env_for(spool, LOGSHIP_AGENT_MERGE_STREAMS="maybe"))
    assert res.returncode == 125 and b"agent.merge_streams" in res.stderr and b"true or false" in res.stderr
    flag = subprocess.run([*LOGSHIP, "run", "--task", "bad", "--merge-streams=yes", "--", "touch",
                           str(tmp_path / "ran")], env=env_for(spool), capture_output=True, timeout=60)
    assert flag.returncode != 0 and b"--merge-streams" in flag.stderr
    assert not (tmp_path / "ran").exists() and not (spool / "bad").exists()


def test_ibex_scripts_take_the_flag(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = tmp_path / "meta" / "77" / "script"
    script.parent.mkdir(parents=True)
    script.write_text(FIVE + "\n")
    res = subprocess.run([*LOGSHIP, "run", "--ibex", "--merge-streams", "--host", "h1", "--", "/bin/sh",
                          str(script)], env=env_for(spool), cwd=tmp_path, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr[-500:]
    assert res.stdout == IN_ORDER and spooled(spool, "ibex-77") == IN_ORDER


def test_two_pipes_keep_each_streams_order_and_a_slow_writers_order(tmp_path: Path) -> None:
    """Lines 10 ms apart, alternating stdout and stderr, come back in the written order in every run (from
    0.3 s on: the agent's start-up, run.json's fsync, is the documented exception) unless the agent itself
    read a line more than 10 ms late, the documented case of a machine too busy to give it a CPU."""
    spool = tmp_path / "spool"
    for i in range(3):
        task = f"slow-{i}"
        res = run_agent(spool, task, [sys.executable, "-c", WRITER, "40", "10000", "2", "300"])
        assert res.returncode == 0, res.stderr[-500:]
        got = displacement(spooled(spool, task), every=2)
        assert got.lines == 40 and got.streams_exact, got
        assert got.moved == 0 or late_ms(spool, task) > 10, (got, late_ms(spool, task))


def test_a_fast_writers_lines_move_only_within_the_window(tmp_path: Path) -> None:
    """As fast as Python writes (≈ 1 µs apart): lines swap, but each stream's order is exact and no line moves
    past more of the other stream's output than the documented bound."""
    spool = tmp_path / "spool"
    for every, lines in ((2, 50_000), (1000, 200_000)):
        task = f"fast-{every}"
        res = run_agent(spool, task, [sys.executable, "-c", WRITER, str(lines), "0", str(every)])
        assert res.returncode == 0, res.stderr[-500:]
        got = displacement(spooled(spool, task), every=every)
        assert got.lines == lines and got.streams_exact, got
        assert got.max_lines < MOVED_BOUND_LINES, got


def test_a_held_partial_line_holds_back_nothing_of_the_other_stream(tmp_path: Path) -> None:
    """stdout's unterminated line waits for its end (up to FLUSH_IDLE_S, 50 ms); stderr's complete lines written
    meanwhile are stored at once, before it, and the stdout line stays whole."""
    spool = tmp_path / "spool"
    script = ("import os, time\nos.write(1, b'out starts ')\ntime.sleep(0.003)\n"
              "for i in range(3):\n    os.write(2, b'err %d\\n' % i)\n    time.sleep(0.005)\n"
              "os.write(1, b'and ends\\n')\n")
    res = run_agent(spool, "held", [sys.executable, "-c", script])
    assert res.returncode == 0, res.stderr[-500:]
    assert spooled(spool, "held") == b"err 0\nerr 1\nerr 2\nout starts and ends\n"
    streams = [c.stream for c in chunks(spool, "held")]
    assert streams == sorted(streams, reverse=True) and streams[-1] == index.STDOUT, streams  # stderr's first
