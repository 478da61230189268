"""What wakes the watcher (shipper/wakeups.py) and what an idle pass costs (shipper/settled.py): a seal is
shipped at once, appends wake nothing, a spool the kernel cannot watch is still shipped by the periodic
pass, a hostile spool neither crashes the notifier nor makes it watch through a link, and a pass over a
log with nothing new does not read its files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shipper import settled, wakeups
from shipper.config import Config
from shipper.format import names
from shipper.format.manifest import Manifest
from shipper.spool import SegmentWriter, make_log_dir, pid_start_ticks, write_json_atomic
from shipper.store import open_store
from shipper.watcher import Watcher, daemon, watch

from .support import config

ALIVE = os.getpid()  # the "agent" of the logs these tests write themselves: alive while the test runs


def start_log(spool: Path, task: str, agent_pid: int = ALIVE, host: str = "h1") -> SegmentWriter:
    """A running log as an agent makes it (run.json, then the open segment), written by this process."""
    fd = make_log_dir(spool, task, host)
    write_json_atomic(spool / task / host / names.RUN_FILE, {
        "task": task, "host": host, "run_id": os.urandom(16).hex(), "command": ["t"], "labels": {},
        "started_ns": time.time_ns(), "agent_pid": agent_pid, "agent_start_ticks": pid_start_ticks(agent_pid),
        "child_pid": None, "segment_bytes": 1 << 24}, dir_fd=fd)
    return SegmentWriter(spool / task / host, 1 << 24, 600, fd)


def append(w: SegmentWriter, data: bytes) -> None:
    w.append(1, [data], len(data), data.count(b"\n"), False)


def seal_now(w: SegmentWriter) -> float:
    """Seal the open segment; the monotonic time its `.log` got its final name."""
    seq = w.seq
    w.seal()
    sealed = names.spool_segment(w.log_dir, seq)
    while not sealed.exists():
        time.sleep(0.0002)
    return time.monotonic()


def stored(cfg: Config, task: str, seq: int) -> bool:
    root = Path(cfg.store.url.removeprefix("file://"))
    return any((root / k).exists() for k in (names.segment_key(task, "h1", seq, "zstd"),
                                             names.frames_key(task, "h1", seq)))


def passes(cfg: Config) -> int:
    """The watcher's passes so far, from its state file: `watching` has it written after every pass."""
    return int(json.loads((cfg.spool_dir / names.WATCHER_STATE_FILE).read_text())["stats"]["passes"])


async def until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def watching(cfg: Config) -> AsyncIterator[asyncio.Task[Watcher]]:
    # the state file after every pass (watch.state_seconds 0), not every 10 s: `passes` reads each pass from it
    cfg = dataclasses.replace(cfg, watch=dataclasses.replace(cfg.watch, state_seconds=0.0))
    stop = asyncio.Event()
    task = asyncio.create_task(watch(cfg, stop=stop))
    await until(lambda: (cfg.spool_dir / names.WATCHER_STATE_FILE).exists())
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def without_periodic_passes(cfg: Config) -> Config:
    """`cfg` with its periodic pass once an hour (past what a config file may say): after the watcher's first
    pass, every pass is one a wake-up brought."""
    return dataclasses.replace(cfg, watch=dataclasses.replace(cfg.watch, checkpoint_seconds=3600.0))


async def only_wake_ups_pass(cfg: Config) -> None:
    """Wait (60 s at most) for a stretch of 2.5 s with no pass: the passes something woke are over, and nothing
    polls (a watcher that cannot watch the spool passes every second). With periodic passes an hour apart, a
    seal shipped after this was shipped by its wake-up."""
    deadline = time.monotonic() + 60
    while True:
        before = passes(cfg)
        await asyncio.sleep(2.5)
        if passes(cfg) == before:
            return
        assert time.monotonic() < deadline, "a pass every few seconds: the watcher polls (the notifier is broken?)"


async def seal_latencies(cfg: Config, task: str, count: int) -> list[float]:
    """Seconds from each of `count` seals to the segment in the store (polled every ms, off the loop)."""
    w = start_log(cfg.spool_dir, task)
    out: list[float] = []
    for i in range(count):
        append(w, b"line %d\n" % i * 50)
        t = await asyncio.to_thread(seal_now, w)
        await until(lambda i=i: stored(cfg, task, i + 1))  # type: ignore[misc]
        out.append(time.monotonic() - t)
        await asyncio.sleep(0.2)
    return out


async def test_a_seal_is_shipped_by_its_wake_up(tmp_path: Path) -> None:
    """No periodic pass for an hour: only the kernel's word can bring each sealed segment to the store. How fast
    (p50 under 100 ms) is a speed, measured by `python -m bench.wakeups`, not here: a loaded machine is slow."""
    cfg = without_periodic_passes(config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_DELTAS="true", LOGSHIP_QUERY_COPY="false"))
    async with watching(cfg):
        await only_wake_ups_pass(cfg)
        lat = await seal_latencies(cfg, "fast", 7)
    assert len(lat) == 7, lat  # every seal: each woke a pass that shipped it


async def test_a_log_that_starts_or_ends_is_shipped_at_once(tmp_path: Path) -> None:
    """No periodic pass for an hour: a log's start and its end each wake a pass that ships it."""
    cfg = without_periodic_passes(config(tmp_path, LOGSHIP_QUERY_COPY="false"))
    archive = tmp_path / "archive"
    async with watching(cfg):
        await only_wake_ups_pass(cfg)
        w = start_log(cfg.spool_dir, "short")
        await until(lambda: (archive / names.manifest_key("short", "h1")).exists())
        append(w, b"the only line\n")
        await asyncio.to_thread(w.close)
        write_json_atomic(cfg.spool_dir / "short" / "h1" / names.EXIT_FILE, {
            "status": "finished", "exit_code": 0, "signal": None, "ended_ns": time.time_ns(), "dropped_bytes": 0})
        await until(lambda: (cfg.spool_dir / "short" / "h1" / names.SHIPPED_FILE).exists())
    doc = Manifest.load((archive / names.manifest_key("short", "h1")).read_bytes(), "short", "h1")
    assert doc.status == "finished" and doc.size == len(b"the only line\n")  # within `until`'s minute, not the hour


async def test_appends_wake_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="5", LOGSHIP_QUERY_COPY="false")
    async with watching(cfg):
        w = start_log(cfg.spool_dir, "busy")
        append(w, b"first\n")
        await until(lambda: (tmp_path / "archive" / names.manifest_key("busy", "h1")).exists())
        before = passes(cfg)
        t0 = time.monotonic()
        for i in range(600):  # 200 appends a second for 3 s
            append(w, b"line %d of a busy log\n" % i)
            await asyncio.sleep(0.005)
        spent, after = time.monotonic() - t0, passes(cfg)
    # only the periodic pass (every 5 s) may fall in this window; watchfiles woke ~20 times a second
    assert after - before <= 1 + int(spent // 5), (before, after, spent)


def _no_inotify() -> None:  # a kernel built without it (another OS), or every inotify instance taken
    raise OSError(38, "Function not implemented")


async def test_without_inotify_watchfiles_wakes_the_watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Without inotify the watcher also passes every second; here that pass is an hour apart, so that only
    watchfiles' wake-ups can ship the seals."""
    monkeypatch.setattr(wakeups, "_inotify", _no_inotify)
    monkeypatch.setattr(daemon, "_period", lambda _cfg, _notifier: 3600.0)
    cfg = config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="5", LOGSHIP_QUERY_COPY="false")
    async with watching(cfg):
        await only_wake_ups_pass(cfg)
        # watchfiles' watch is set up in its own thread: a new file in the spool wakes a pass once it is there
        deadline = time.monotonic() + 60
        while True:
            before = passes(cfg)
            (cfg.spool_dir / "probe").write_bytes(b"")
            with contextlib.suppress(AssertionError):
                await until(lambda b=before: passes(cfg) > b, 1)  # type: ignore[misc]
                break
            assert time.monotonic() < deadline, "watchfiles never woke the watcher"
            (cfg.spool_dir / "probe").unlink()
        await only_wake_ups_pass(cfg)
        lat = await seal_latencies(cfg, "portable", 5)
    assert len(lat) == 5, lat  # each seal woke a pass that shipped it


async def test_without_any_notifier_the_periodic_pass_still_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    import watchfiles

    def no_watchfiles(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")  # what inotify's exhausted watch limit says

    monkeypatch.setattr(wakeups, "_inotify", _no_inotify)
    monkeypatch.setattr(watchfiles, "awatch", no_watchfiles)
    cfg = without_periodic_passes(config(tmp_path, LOGSHIP_QUERY_COPY="false"))
    async with watching(cfg):
        lat = await seal_latencies(cfg, "polled", 3)  # each within `until`'s minute: not the hourly interval
    assert len(lat) == 3, lat  # found by the pass every second that a watcher with no notifier makes


async def test_a_spool_removed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    cfg = without_periodic_passes(config(tmp_path, LOGSHIP_QUERY_COPY="false"))
    async with watching(cfg):
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(cfg.spool_dir)], check=True)
        await until(lambda: cfg.spool_dir.is_dir())  # the pass the removal woke makes it again
        await until(lambda: (cfg.spool_dir / names.WATCHER_STATE_FILE).exists())
        await only_wake_ups_pass(cfg)
        lat = await seal_latencies(cfg, "again", 3)
    assert len(lat) == 3, lat  # each seal in the new spool woke a pass that shipped it


# --- a hostile spool ---------------------------------------------------------------------------------


async def test_links_files_and_junk_in_the_spool_are_never_watched_through(tmp_path: Path) -> None:
    spool, outside = tmp_path / "spool", tmp_path / "outside"
    (outside / "h1").mkdir(parents=True)
    (spool / "real" / "h1").mkdir(parents=True)
    (spool / "linked").symlink_to(outside)  # a task directory that is a link
    (spool / "real" / "hostlink").symlink_to(outside / "h1")  # a log directory that is a link
    (spool / "afile").write_bytes(b"")  # a task that is a file
    (spool / "real" / "hfile").write_bytes(b"")  # a log that is a file
    for junk in ("-dash", "sp ace", ".hidden"):
        (spool / junk / "h1").mkdir(parents=True)
    os.mkdir(os.path.join(os.fsencode(spool), b"bad\xff\xfe"))  # not UTF-8
    wake = asyncio.Event()
    sw = wakeups.SpoolWatch.start(spool, wake)
    assert sw is not None
    try:
        assert sorted(sw.dirs.values()) == [(), ("real",), ("real", "h1")]
        # news beyond a link, and entries that name nothing of a log, wake nothing
        (outside / "h1" / names.RUN_FILE).write_bytes(b"{}")
        (outside / "h1" / "00000001.log").write_bytes(b"")
        (spool / "real" / "h1" / "notes.txt").write_bytes(b"")
        (spool / "real" / "h1" / "00000001.log.open").write_bytes(b"")
        os.mkdir(os.path.join(os.fsencode(spool / "real"), b"\xff"))
        (spool / "real" / "h2").symlink_to(outside)
        await asyncio.sleep(0.2)
        assert sw.wakeups == 0 and not wake.is_set()
        # a new task and log are watched as they come, and say so
        (spool / "new" / "h9").mkdir(parents=True)
        await until(lambda: ("new", "h9") in sw.dirs.values())
        assert wake.is_set()
    finally:
        sw.close()


async def test_a_flood_of_100000_entries_does_not_stop_the_watcher(tmp_path: Path) -> None:
    cfg = without_periodic_passes(config(tmp_path, LOGSHIP_QUERY_COPY="false"))
    async with watching(cfg) as task:
        w = start_log(cfg.spool_dir, "flood")
        log_dir = cfg.spool_dir / "flood" / "h1"

        def flood() -> None:  # far more than the kernel queues (16,384): events are lost, the notifier rescans
            fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for i in range(100_000):
                    os.close(os.open(f"junk-{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
                for i in range(100_000):
                    os.unlink(f"junk-{i}", dir_fd=fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(flood)
        assert not task.done()
        await only_wake_ups_pass(cfg)  # the lost events' rescan is over, and the notifier still works
        for i in range(3):
            append(w, b"after the flood %d\n" % i)
            await asyncio.to_thread(seal_now, w)
            await until(lambda i=i: stored(cfg, "flood", i + 1))  # type: ignore[misc]
        assert not task.done()


# --- idle passes -------------------------------------------------------------------------------------


async def test_an_idle_pass_reads_no_file_of_a_settled_log(tmp_path: Path) -> None:
    cfg = config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1", LOGSHIP_WATCH_CHECKPOINT_DELTAS="true",
                 LOGSHIP_QUERY_COPY="false")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        writers = [start_log(cfg.spool_dir, f"idle{i}") for i in range(3)]
        dead = start_log(cfg.spool_dir, "dies", agent_pid=sleeper.pid)
        for w in [*writers, dead]:
            append(w, b"a line\n")
        wat = Watcher(cfg, open_store(cfg.store))
        try:
            t_end = time.monotonic() + settled.RACY_NS / 1e9 + 0.3  # past the directories' last change
            while time.monotonic() < t_end:
                await wat.run_once()
                await asyncio.sleep(0.12)
            checkpoints = wat.stats["checkpoints"]
            # run.json damaged in place (the directory does not change): a pass that read it would set it aside
            run = cfg.spool_dir / "idle0" / "h1" / names.RUN_FILE
            with open(run, "r+b") as f:
                f.write(b"not json at all")
            for _ in range(5):
                await asyncio.sleep(0.12)
                await wat.run_once()
            assert wat.stats["logs_set_aside"] == 0 and wat.stats["checkpoints"] == checkpoints
            # new bytes in a settled log: checkpointed by the next pass
            append(writers[1], b"new bytes\n")
            await asyncio.sleep(0.12)
            await wat.run_once()
            assert wat.stats["checkpoints"] == checkpoints + 1
            # its agent killed (no file changes): found, its segment sealed and the log marked lost
            sleeper.kill()
            sleeper.wait()
            await wat.run_once()
            assert wat.stats["lost_logs"] == 1
            # a seal changes the directory: shipped by the next pass
            seal_now(writers[2])
            await wat.run_once()
            assert stored(cfg, "idle2", 1)
            # and every FULL_PASS_SECONDS everything is read again: then the damage is found
            wat.settled._full_at -= settled.FULL_PASS_SECONDS
            await wat.run_once()
            assert wat.stats["logs_set_aside"] == 1
        finally:
            await wat.store.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_news_is_a_start_a_seal_or_an_end() -> None:
    yes = [((), "task", wakeups.IN_ISDIR), (("t",), "h", wakeups.IN_ISDIR), (("t", "h"), names.RUN_FILE, 0),
           (("t", "h"), names.EXIT_FILE, 0), (("t", "h"), "00000012.log", 0)]
    no = [((), names.WATCHER_STATE_FILE, 0), ((), "task", 0), ((), ".x", wakeups.IN_ISDIR),
          (("t", "h"), "00000012.log.open", 0), (("t", "h"), "00000012.idx", 0),
          (("t", "h"), names.SHIPPED_FILE, 0), (("t", "h"), names.DROPPED_FILE, 0),
          (("t", "h"), ".run.json.tmp-0a0b0c0d", 0), (("t", "h"), "1.log", 0)]
    assert all(wakeups.news(*c) for c in yes)
    assert not any(wakeups.news(*c) for c in no)



@pytest.mark.parametrize("deltas", ["true", "false"])
async def test_the_first_bytes_are_checkpointed_by_the_next_pass_and_then_every_interval(tmp_path: Path,
                                                                                       deltas: str) -> None:
    cfg = config(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="5", LOGSHIP_WATCH_CHECKPOINT_DELTAS=deltas,
                 LOGSHIP_QUERY_COPY="false")
    w = start_log(cfg.spool_dir, "first")
    w._open()  # the open segment, before its first byte (as at a wake-up for run.json)
    wat = Watcher(cfg, open_store(cfg.store))
    try:
        await wat.run_once()
        assert wat.stats["checkpoints"] == 0
        append(w, b"the first bytes\n")
        await wat.run_once()  # not an interval later: a dead host would lose them
        assert wat.stats["checkpoints"] == 1
        append(w, b"more\n")
        await wat.run_once()
        assert wat.stats["checkpoints"] == 1  # the interval holds between checkpoints that sent something
    finally:
        await wat.store.close()
