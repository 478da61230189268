"""A damaged spool affects only its own log: the watcher sets it aside or repairs it, records what is lost,
ships every other log byte-exact, and never dies of one file (issue 11, findings 6, 7, 11, 12).

Each case damages one of two logs in one spool for real (truncated, overwritten or linked files), then
runs a real `logship watch --once` (or `logship watch`) process against a store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from shipper.config import Config
from shipper.format import archive, index, names
from shipper.format.manifest import Manifest, Segment
from shipper.format.reader import Reader
from shipper.spool import read_json
from shipper.store import open_store

from .support import (
    LOGSHIP,
    agent_env,
    config,
    run_agent,
    sha,
    spooled,
    start_agent,
    start_watcher,
    stop_agent,
    watch_once,
)

SEG = 64 << 10
GOOD_CMD = ["sh", "-c", "seq 1 30000"]  # 168,894 bytes: three segments
# 212,000 bytes of stdout and stderr lines, interleaved: four segments of ~67 chunks each
BAD_SCRIPT = r"""
import sys, time
o, e = sys.stdout.buffer, sys.stderr.buffer
for i in range(4000):
    f = o if i % 3 else e
    f.write(b"line %06d %s\n" % (i, b"x" * 40)); f.flush()
    if i % 50 == 0: time.sleep(0.002)
"""
BAD_CMD = [sys.executable, "-c", BAD_SCRIPT]


def two_logs(tmp_path: Path, **env: str) -> tuple[Config, bytes, bytes]:
    """A spool holding two finished logs, `good/h1` and `bad/h1`; returns their bytes as the tasks wrote them."""
    cfg = config(tmp_path, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_QUERY_COPY="false", **env)
    good = run_agent(cfg.spool_dir, "good", GOOD_CMD, env=agent_env(cfg))
    bad = run_agent(cfg.spool_dir, "bad", BAD_CMD, env=agent_env(cfg))
    assert good.returncode == bad.returncode == 0
    assert len(list((cfg.spool_dir / "bad" / "h1").glob("*.log"))) == 4
    return cfg, good.stdout, spooled(cfg.spool_dir, "bad")


@dataclass(frozen=True)
class Span:
    """Where a part with no manifest entry (a delta of the open segment) sits in the log."""
    seq: int
    offset: int
    raw_size: int


async def stored(cfg: Config, task: str) -> tuple[Manifest, list[tuple[Segment | Span, bytes]]] | None:
    """The log's manifest and each part's bytes as the store holds them; None if it has no manifest."""
    store = open_store(cfg.store)
    try:
        try:
            doc = await archive.load_manifest(store, task, "h1")
        except Exception:
            return None
        raw = await store.get(names.manifest_key(task, "h1"))
        assert Manifest.load(raw).dump() == raw  # typed and back, byte for byte as the watcher wrote it
        reader = Reader(store)
        view = await reader.view(task, "h1")
        parts: list[tuple[Segment | Span, bytes]] = []
        for p in view.parts:
            data = b"".join([bytes(x) async for x in reader.read(view, p.offset, p.end)])
            if p.entry is None:  # a delta of a running log's open segment: checked by the reader on its own digests
                assert p.kind == "delta", p
                parts.append((Span(p.seq, p.offset, p.end - p.offset), data))
                continue
            assert hashlib.sha256(data).hexdigest() == p.entry.sha256
            parts.append((p.entry, data))
        return doc, parts
    finally:
        await store.close()


def state(cfg: Config) -> dict[str, Any]:
    doc: dict[str, Any] = read_json(cfg.spool_dir / names.WATCHER_STATE_FILE)
    return doc


def watch(cfg: Config) -> subprocess.CompletedProcess[bytes]:
    res = watch_once(agent_env(cfg))
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b"Traceback" not in res.stderr, res.stderr.decode()[-2000:]
    return res


async def assert_good_shipped(cfg: Config, good: bytes) -> None:
    got = await stored(cfg, "good")
    assert got is not None, "the good log was not shipped"
    doc, parts = got
    assert doc.status == "finished" and not doc.dropped and doc.size == len(good)
    assert sha(b"".join(data for _, data in parts)) == sha(good)


def assert_at_offsets(parts: list[tuple[Segment | Span, bytes]], original: bytes) -> None:
    """Every byte the store holds is the task's byte at that offset."""
    for p, data in parts:
        assert len(data) == p.raw_size
        assert data == original[p.offset:p.offset + p.raw_size], p.seq


def seg(cfg: Config, task: str, seq: int, what: str = "log") -> Path:
    d = cfg.spool_dir / task / "h1"
    return names.spool_segment(d, seq) if what == "log" else names.spool_index(d, seq)


# --- run.json, exit.json and the store's manifest: the log is set aside, the others ship -------------------

def _run_doc(cfg: Config) -> dict[str, Any]:
    doc: dict[str, Any] = read_json(cfg.spool_dir / "bad" / "h1" / names.RUN_FILE)
    return doc


def _link_segment(cfg: Config) -> None:
    seg(cfg, "bad", 2).unlink()
    seg(cfg, "bad", 2).symlink_to("/etc/hostname")


SET_ASIDE: dict[str, tuple[Callable[[Config], object], str]] = {
    "run.json is {}": (lambda cfg: (cfg.spool_dir / "bad/h1/run.json").write_text("{}"), "task"),
    "run.json not JSON": (lambda cfg: (cfg.spool_dir / "bad/h1/run.json").write_bytes(b"\x00\xffnope"), "not JSON"),
    "run.json a list": (lambda cfg: (cfg.spool_dir / "bad/h1/run.json").write_text("[1, 2]"), "not a JSON object"),
    "bad task id": (lambda cfg: (cfg.spool_dir / "bad/h1/run.json").write_text(
        json.dumps({**_run_doc(cfg), "task": "../../etc"})), "not a valid task id"),
    "another log's ids": (lambda cfg: (cfg.spool_dir / "bad/h1/run.json").write_text(
        json.dumps({**_run_doc(cfg), "task": "good"})), "names the log good/h1"),
    "exit.json damaged": (lambda cfg: (cfg.spool_dir / "bad/h1/exit.json").write_text('{"status": 3}'), "status"),
    "segment is a link": (_link_segment, "symbolic link"),
}


@pytest.mark.parametrize("case", list(SET_ASIDE))
async def test_damaged_run_files_set_the_log_aside(tmp_path: Path, case: str) -> None:
    cfg, good, bad = two_logs(tmp_path)
    damage, words = SET_ASIDE[case]
    damage(cfg)
    before = sorted((p.name, p.stat().st_size) for p in (cfg.spool_dir / "bad" / "h1").iterdir())
    res = watch(cfg)
    await assert_good_shipped(cfg, good)
    assert await stored(cfg, "bad") is None  # nothing of it is served as good bytes
    st = state(cfg)
    assert words in st["set_aside"]["bad/h1"], st["set_aside"]
    assert st["stats"]["logs_set_aside"] == 1 and st["stats"]["retries"] == 0  # not a store fault
    assert res.stderr.count(b"bad/h1: log set aside") == 1, res.stderr.decode()  # one line naming it
    # its spool is kept as it was, for the operator
    assert sorted((p.name, p.stat().st_size) for p in (cfg.spool_dir / "bad" / "h1").iterdir()) == before


async def test_a_bad_task_id_is_not_a_store_fault(tmp_path: Path) -> None:
    """Before: a run.json naming an invalid task made every pass fail with 'store unavailable', forever."""
    cfg, good, _ = two_logs(tmp_path)
    SET_ASIDE["bad task id"][0](cfg)
    res = watch(cfg)
    assert b"retrying" not in res.stderr  # the watcher says "the store failed, retrying in …"
    assert state(cfg)["healthy"] is True and state(cfg)["last_error"] == ""
    await assert_good_shipped(cfg, good)


async def test_a_manifest_that_is_not_json_sets_its_log_aside(tmp_path: Path) -> None:
    cfg, good, _ = two_logs(tmp_path)
    garbage = tmp_path / "archive" / "logs" / "bad" / "h1" / "manifest.json"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"<html>not a manifest</html>")
    watch(cfg)
    await assert_good_shipped(cfg, good)
    assert garbage.read_bytes() == b"<html>not a manifest</html>"  # not overwritten: it may be another run's
    assert "not a valid manifest" in state(cfg)["set_aside"]["bad/h1"]
    assert (seg(cfg, "bad", 1)).exists()  # the spool keeps the log
    # once the operator removes the object, the log ships on the next look
    garbage.unlink()
    watch(cfg)
    got = await stored(cfg, "bad")
    assert got is not None and sha(b"".join(d for _, d in got[1])) == sha(spooled(cfg.spool_dir, "bad"))


# --- a segment's index against its bytes: every good byte kept at its offset, the lost ones recorded -------

def _records(path: Path) -> list[index.Chunk]:
    return list(index.unpack(path.read_bytes()))


def _write_records(path: Path, recs: list[index.Chunk]) -> None:
    path.write_bytes(b"".join(index.pack(r.seq, r.ts_ns, r.offset, r.length, r.lines, r.stream, r.flags)
                              for r in recs))


def _bump(path: Path, i: int, **change: int) -> None:
    recs = _records(path)
    fields = {k: getattr(recs[i], k) for k in ("seq", "ts_ns", "offset", "length", "lines", "stream", "flags")}
    recs[i] = index.Chunk(**{**fields, **change})
    _write_records(path, recs)


NO_LOSS: dict[str, Callable[[Config], object]] = {
    "index of random bytes": lambda cfg: seg(cfg, "bad", 2, "idx").write_bytes(
        os.urandom(seg(cfg, "bad", 2, "idx").stat().st_size)),
    "index truncated": lambda cfg: _write_records(seg(cfg, "bad", 2, "idx"), _records(seg(cfg, "bad", 2, "idx"))[:20]),
    "index torn": lambda cfg: seg(cfg, "bad", 3, "idx").write_bytes(seg(cfg, "bad", 3, "idx").read_bytes()[:57]),
    "index empty": lambda cfg: seg(cfg, "bad", 2, "idx").write_bytes(b""),
    "chunks not contiguous": lambda cfg: _bump(seg(cfg, "bad", 2, "idx"), 0,
                                                offset=_records(seg(cfg, "bad", 2, "idx"))[0].offset + 7),
    "a length pointing past the end": lambda cfg: _bump(seg(cfg, "bad", 2, "idx"), -1, length=1 << 30),
    "last index longer than its segment": lambda cfg: _write_records(seg(cfg, "bad", 4, "idx"), [
        *(recs := _records(seg(cfg, "bad", 4, "idx"))),
        index.Chunk(recs[-1].seq + 1, recs[-1].ts_ns, recs[-1].end, 5000, 3, index.STDOUT, 0)]),
}


@pytest.mark.parametrize("case", list(NO_LOSS))
async def test_a_damaged_index_keeps_every_byte_at_its_offset(tmp_path: Path, case: str) -> None:
    """Before: a truncated index lost the bytes it no longer covered, silently, and shifted later ones."""
    cfg, good, bad = two_logs(tmp_path)
    NO_LOSS[case](cfg)
    watch(cfg)
    await assert_good_shipped(cfg, good)
    got = await stored(cfg, "bad")
    assert got is not None
    doc, parts = got
    assert_at_offsets(parts, bad)
    if case == "last index longer than its segment":  # a finished log's last segment: what it claims is recorded
        [lost] = doc.dropped
        assert (lost.offset, lost.raw_size, lost.reason) == (len(bad), 5000, "damaged")
        assert doc.size == len(bad) + 5000 and sha(b"".join(d for _, d in parts)) == sha(bad)
        return
    assert not doc.dropped and doc.dropped_bytes == 0
    assert sha(b"".join(d for _, d in parts)) == sha(bad) and doc.size == len(bad)
    assert state(cfg)["stats"]["damaged_segments"] == 1
    # the repaired index describes the bytes: stdout and stderr views still add up to the whole
    store = open_store(cfg.store)
    try:
        reader = Reader(store)
        view = await reader.view("bad", "h1")
        chunks = [c for p in view.parts for c in await reader.chunks(view, p)]
    finally:
        await store.close()
    assert chunks[0].offset == 0 and all(a.end == b.offset for a, b in pairwise(chunks))
    assert chunks[-1].end == len(bad)


@pytest.mark.parametrize("which", [2, 4])
async def test_a_truncated_segment_records_the_lost_range(tmp_path: Path, which: int) -> None:
    cfg, good, bad = two_logs(tmp_path)
    path = seg(cfg, "bad", which)
    start = _records(seg(cfg, "bad", which, "idx"))[0].offset
    full = path.stat().st_size
    os.truncate(path, 1000)
    watch(cfg)
    await assert_good_shipped(cfg, good)
    got = await stored(cfg, "bad")
    assert got is not None
    doc, parts = got
    assert_at_offsets(parts, bad)  # later segments keep their offsets
    [lost] = doc.dropped
    assert (lost.seq, lost.offset, lost.raw_size, lost.reason) == (which, start + 1000, full - 1000,
                                                                               "damaged")
    assert doc.dropped_bytes == full - 1000 and doc.size == len(bad)
    held = sum(p.raw_size for p, _ in parts)
    assert held + lost.raw_size == len(bad)
    stats = state(cfg)["stats"]
    assert stats["damaged_segments"] == 1 and stats["damaged_bytes"] == full - 1000


async def test_the_watcher_process_keeps_running_through_damage(tmp_path: Path) -> None:
    """A real `logship watch`: damaged logs appear while it runs; it ships a later good log and stays up."""
    cfg, good, _ = two_logs(tmp_path)
    (cfg.spool_dir / "bad/h1/run.json").write_text("{}")
    original = {}
    for task in ("trunc", "rand"):
        run_agent(cfg.spool_dir, task, BAD_CMD, env=agent_env(cfg))
        original[task] = spooled(cfg.spool_dir, task)
    os.truncate(seg(cfg, "trunc", 2), 10)
    seg(cfg, "rand", 3, "idx").write_bytes(os.urandom(4000))
    p = start_watcher(agent_env(cfg), stderr=subprocess.PIPE)
    try:
        later = run_agent(cfg.spool_dir, "later", ["sh", "-c", "seq 1 5000"], env=agent_env(cfg)).stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any([await stored(cfg, t) is None for t in ("later", "trunc", "rand")]):
            assert p.poll() is None, "the watcher died"
            time.sleep(0.2)
        got = await stored(cfg, "later")
        assert got is not None and b"".join(d for _, d in got[1]) == later
        await assert_good_shipped(cfg, good)
        for task in ("trunc", "rand"):
            doc_parts = await stored(cfg, task)
            assert doc_parts is not None
            assert_at_offsets(doc_parts[1], original[task])
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.stderr is not None
    err = p.stderr.read()
    assert b"Traceback" not in err
    assert err.count(b"bad/h1: log set aside") == 1, err.decode()[-3000:]


# --- symbolic links: nothing outside the spool is written, shipped or deleted --------------------------

def _tree(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_the_agent_does_not_write_through_a_link(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    cfg.spool_dir.mkdir(parents=True)
    (cfg.spool_dir / "evil").symlink_to(outside)
    res = run_agent(cfg.spool_dir, "evil", ["echo", "secret"], env=agent_env(cfg))
    assert res.returncode == 125 and b"symbolic link" in res.stderr and b"Traceback" not in res.stderr
    assert list(outside.iterdir()) == []
    # the host level too
    (cfg.spool_dir / "t2").mkdir()
    (cfg.spool_dir / "t2" / "h1").symlink_to(outside)
    res = run_agent(cfg.spool_dir, "t2", ["echo", "secret"], env=agent_env(cfg))
    assert res.returncode == 125 and b"symbolic link" in res.stderr
    assert list(outside.iterdir()) == []


async def test_the_watcher_does_not_ship_or_prune_through_a_link(tmp_path: Path) -> None:
    cfg, good, _ = two_logs(tmp_path, LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    # a real log, outside the spool, that links make look like three logs of it
    other = config(tmp_path / "o", LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    run_agent(other.spool_dir, "evil", GOOD_CMD, env=agent_env(other))
    outside = other.spool_dir
    (cfg.spool_dir / "evil").symlink_to(outside / "evil")  # the task level
    (cfg.spool_dir / "t2").mkdir()
    (cfg.spool_dir / "t2" / "h1").symlink_to(outside / "evil" / "h1")  # the host level
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not ship me\n")
    seg(cfg, "bad", 3).unlink()
    seg(cfg, "bad", 3).symlink_to(secret)  # a file inside a real log dir
    before = _tree(outside)
    watch(cfg)
    await assert_good_shipped(cfg, good)
    assert _tree(outside) == before and secret.read_bytes() == b"do not ship me\n"  # nothing written or deleted
    store = open_store(cfg.store)
    try:
        keys = [o.key for o in await store.list("")]
    finally:
        await store.close()
    assert not [k for k in keys if k.startswith(("logs/evil/", "logs/t2/", "logs/bad/"))], keys
    st = state(cfg)
    assert st["stats"]["refused_links"] == 2 and "symbolic link" in st["set_aside"]["bad/h1"]
    assert not list((cfg.spool_dir / "good" / "h1").glob("*.log"))  # the good log was pruned as usual


# --- a full disk under the agent ----------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[str]:
    """A real small filesystem at `path` (tmpfs, as root); else a per-file size limit (RLIMIT_FSIZE: EFBIG)."""
    path.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                    str(path)], capture_output=True).returncode == 0
    try:
        yield "tmpfs" if mounted else "fsize"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.mark.parametrize("fill", [False, True], ids=["disk-fills", "disk-full-at-exit"])
async def test_a_full_disk_keeps_the_exit_code_and_records_the_loss(tmp_path: Path, fill: bool) -> None:
    """Before: `logship run` exited 1 with a traceback and left a temporary file when exit.json did not fit."""
    with small_disk(tmp_path / "small") as kind:
        if kind == "fsize" and fill:
            pytest.skip("no tmpfs (not root): a per-file limit cannot fill the disk")
        cfg = config(tmp_path, LOGSHIP_SPOOL_DIR=str(tmp_path / "small" / "spool"), LOGSHIP_QUERY_COPY="false",
                     LOGSHIP_SPOOL_SEGMENT_BYTES="256KiB")
        script = "seq 1 400000; " + (f"head -c 4000000 /dev/zero > {tmp_path / 'small' / 'fill'} 2>/dev/null; "
                                    "echo after the disk filled; " if fill else "") + "exit 7"
        res = subprocess.run([*LOGSHIP, "run", "--task", "full", "--host", "h1", "--", "sh", "-c", script],
                             env=agent_env(cfg), capture_output=True, timeout=120,
                             preexec_fn=_limit_files if kind == "fsize" else None)
        expected = subprocess.run(["sh", "-c", "seq 1 400000"], capture_output=True).stdout
        if fill:
            expected += b"after the disk filled\n"
        assert res.returncode == 7, res.stderr.decode()[-2000:]
        assert b"Traceback" not in res.stderr
        assert res.stdout == expected  # passed through whole
        assert b"not spooled" in res.stderr  # a log line says so
        d = cfg.spool_dir / "full" / "h1"
        assert not [p.name for p in d.iterdir() if ".tmp-" in p.name or p.name.endswith(".open")]
        done = read_json(d / names.EXIT_FILE)
        assert done["exit_code"] == 7 and done["dropped_bytes"] > 0
        kept = len(spooled(cfg.spool_dir, "full"))
        assert kept + done["dropped_bytes"] == len(expected)
        watch(cfg)  # with the spool's disk still full: shipping is what frees it
        got = await stored(cfg, "full")
        assert got is not None
        doc, parts = got
        assert doc.exit_code == 7 and doc.dropped_bytes == done["dropped_bytes"]
        assert b"".join(data for _, data in parts) == spooled(cfg.spool_dir, "full")


# --- a running log whose manifest was deleted, then a restarted watcher ----------------------------------

async def test_a_restarted_watcher_takes_back_what_a_deleted_manifest_named(tmp_path: Path) -> None:
    """Before: the spool no longer held the pruned segments, so the new manifest named 3,500 of 11,480 bytes
    (its size came from the newest segment's end). Now the watcher takes the store's segments back."""
    cfg = config(tmp_path, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0",
                 LOGSHIP_QUERY_COPY="false", LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.1")
    expected = subprocess.run(["sh", "-c", "seq 1 100000"], capture_output=True).stdout
    p = start_agent(cfg.spool_dir, "live", ["sh", "-c", "seq 1 100000; sleep 60"], env=agent_env(cfg),
                    stdout=subprocess.DEVNULL)
    try:
        from shipper.watcher import Watcher

        deadline = time.monotonic() + 30
        while True:
            w = Watcher(cfg, open_store(cfg.store))
            await w.run_once()
            await w.store.close()
            got = await stored(cfg, "live")
            sealed = list((cfg.spool_dir / "live/h1").glob("0000000[1-3].log"))
            # the manifest names the sealed segments; the open one's bytes are its chain of deltas
            if got and sum(len(data) for _, data in got[1]) == len(expected) and not sealed:
                break
            assert time.monotonic() < deadline, "never shipped and pruned"
            time.sleep(0.2)
        assert got[0].status == "running" and len(got[0].segments) >= 5
        (tmp_path / "archive" / "logs" / "live" / "h1" / "manifest.json").unlink()
        w = Watcher(cfg, open_store(cfg.store))  # a restart: it knows only what the store and spool hold
        await w.run_once()
        await w.store.close()
        got = await stored(cfg, "live")
        assert got is not None
        doc, parts = got
        assert not doc.dropped
        assert b"".join(data for _, data in parts) == expected
        assert w.stats["adopted_segments"] >= 3
    finally:
        stop_agent(p, cfg.spool_dir, "live")


async def test_a_deleted_manifest_with_segments_gone_everywhere_claims_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0",
                 LOGSHIP_QUERY_COPY="false")
    expected = run_agent(cfg.spool_dir, "gone", ["sh", "-c", "seq 1 100000; sleep 1"], env=agent_env(cfg)).stdout
    d = cfg.spool_dir / "gone" / "h1"
    (d / names.EXIT_FILE).unlink()  # as if it still ran: the watcher ships without marking it done
    (d / names.RUN_FILE).write_text(json.dumps({**read_json(d / names.RUN_FILE), "agent_pid": os.getpid(),
                                                "agent_start_ticks": _ticks()}))
    watch(cfg)
    arch = tmp_path / "archive" / "logs" / "gone" / "h1"
    (arch / "manifest.json").unlink()
    (arch / "00000002.log.zst").unlink()  # the store lost one; the spool pruned it
    watch(cfg)
    got = await stored(cfg, "gone")
    assert got is not None
    doc, parts = got
    assert_at_offsets(parts, expected)
    [lost] = doc.dropped
    assert lost.seq == 2 and lost.reason == "missing"
    assert sum(p.raw_size for p, _ in parts) + lost.raw_size == doc.size == len(expected)


def _ticks() -> int | None:
    from shipper.spool import pid_start_ticks

    return pid_start_ticks(os.getpid())

