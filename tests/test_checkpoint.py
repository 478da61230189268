"""Delta checkpoints (issue 14, docs/checkpoints.md): the watcher driven pass by pass against each store,
and killed with -9 at every step against a real SeaweedFS. What the store holds is read back through the
chain of deltas and the frame tables, and must be the spool's bytes: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from shipper import catalog
from shipper.commands import s3local
from shipper.config import Config
from shipper.errors import ObjectNotFound, StoreUnavailable
from shipper.format import archive, delta, frames, manifest, names, reader
from shipper.format.manifest import Manifest
from shipper.format.reader import LogNotFound
from shipper.store import Store, open_store
from shipper.watcher import Watcher

from .support import (
    DELTAS,
    STEADY,
    MakeConfig,
    agent_env,
    env_for,
    run_agent,
    sha,
    spooled,
    start_agent,
    start_watcher,
    steady,
    stop_agent,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

async def stored_bytes(store: Store, task: str, host: str = "h1") -> bytes:
    """The log as the store holds it: sealed segments (whole or framed, each checked), then the chain of
    deltas of the segment after them (what a reader of a running log must see, docs/checkpoints.md §6)."""
    doc = await archive.load_manifest(store, task, host)
    raw = await store.get(names.manifest_key(task, host))
    assert Manifest.load(raw).dump() == raw  # typed and back, byte for byte as the watcher wrote it
    out = b""
    for seg in doc.segments:
        if seg.frames is not None:
            out += (await frames.read_segment(store, task, host, seg))[1]
        else:
            key = seg.keys(task, host)[0]
            data = await store.get(key)
            archive.check_stored(key, seg, data)
            raw = archive.unzstd(key, data, seg.raw_size) if seg.compression == "zstd" else data
            archive.check_raw(key, seg, raw)
            out += raw
    nxt = doc.segments[-1].seq + 1 if doc.segments else 1
    held = {}
    for o in await store.list(names.delta_prefix(task, host, nxt)):
        parsed = names.parse_delta_name(o.key.rsplit("/", 1)[1])
        assert parsed is not None
        held[(parsed[1], parsed[2])] = o.key
    for span in frames.chain(held, len(out)):
        out += delta.parse(held[span], await store.get(held[span])).data
    return out


def delta_keys(keys: Iterable[str]) -> list[str]:
    return [k for k in keys if names.parse_delta_name(k.rsplit("/", 1)[1])]


async def passes_until(w: Watcher, done: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        await w.run_once()
        if await done():
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_a_checkpoint_is_one_put_of_the_new_bytes(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS)
    p = steady(cfg, "live", "60", "0.05")
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        seen: list[int] = []

        async def grown() -> bool:  # checkpoints taken while the task runs, each seen by a reader
            with contextlib.suppress(ObjectNotFound):
                got = await stored_bytes(store, "live")
                assert spooled(cfg.spool_dir, "live").startswith(got)  # no gap, no overlap: a prefix
                if not seen or len(got) > seen[-1]:
                    seen.append(len(got))
            return len(seen) >= 5

        await passes_until(w, grown)
        before = dict(w.store.stats.requests)
        ckpts = w.stats["checkpoints"]
        manifests = w.stats["manifests"]
        await asyncio.sleep(0.3)
        await w.run_once()  # one more checkpoint: its requests alone
        assert w.stats["checkpoints"] == ckpts + 1 and w.stats["manifests"] == manifests
        after = dict(w.store.stats.requests)
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {"put_object": 1}
        assert p.wait(30) == 0
        await w.run_once()
        doc = await archive.load_manifest(store, "live", "h1")
        assert doc.status == "finished" and doc.version == manifest.FRAMES_VERSION
        [seg] = doc.segments
        assert seg.frames == w.stats["deltas"] and seg.frames >= 6
        assert await stored_bytes(store, "live") == spooled(cfg.spool_dir, "live")
        keys = [o.key for o in await store.list("logs/live/")]
        assert not [k for k in keys if ".log" in k or ".idx" in k or ".ckpt-" in k]  # each byte went up once
        # every body byte PUT is in the stats, checkpoints and catalog rows included (S3 also counts the XML
        # body of the catalog's DeleteObjects of its running entry, which the watcher's stats leave out)
        assert w.stats["bytes_uploaded"] <= w.store.stats.bytes_sent <= w.stats["bytes_uploaded"] + 512
        assert w.stats["delta_bytes"] == seg.stored_size
        stored = sum(o.size for o in await store.list("logs/live/"))
        # the catalog's rows cost ~1 KB per status change of the log, not per byte: left out of the ratio, as
        # is the agent's liveness sample that each manifest carries (and its object, none here)
        catalog_sent = catalog.writer.writer(w.store).bytes_sent
        assert 0 < catalog_sent < 4096 and w.stats["liveness_bytes"] < 4096 * w.stats["manifests"]
        assert w.store.stats.bytes_sent - catalog_sent - w.stats["liveness_bytes"] < 1.3 * stored
    finally:
        stop_agent(p, cfg.spool_dir, "live")
        await store.close()


async def test_a_fast_log_and_one_sealed_before_its_first_checkpoint_go_up_whole(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    run_agent(cfg.spool_dir, "fast", ["sh", "-c", "seq 1 100000"], env=agent_env(cfg))
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        await w.run_once()
        doc = await archive.load_manifest(store, "fast", "h1")
        assert doc.version == 1 and len(doc.segments) >= 8 and w.stats["deltas"] == 0
        assert await stored_bytes(store, "fast") == spooled(cfg.spool_dir, "fast")
    finally:
        await store.close()


async def test_a_new_watcher_continues_the_chain_and_a_late_delta_is_recut(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS)
    p = steady(cfg, "cont", "3000", "0.002")
    log_dir = cfg.spool_dir / "cont" / "h1"
    store = open_store(cfg.store)
    try:
        first = Watcher(cfg, store)
        await passes_until(first, lambda: _deltas_at_least(store, "cont", 3))
        # A second watcher (the first one died): it continues where the store's chain ends, sending nothing twice.
        second = Watcher(cfg, store)
        await second.run_once()
        chain, before = second.logs[log_dir].deltas.chain, first.logs[log_dir].deltas.chain
        assert chain is not None and before is not None and chain.frames and chain.frames[0].start == before.pos
        # A PUT of a dead watcher that lands only now, after the second one listed: a delta from the chain's
        # end to the end of the next chunk. The second watcher cuts again from the same start, to a later end.
        await asyncio.sleep(0.3)
        late = await _put_late(store, cfg, "cont", chain.seq, chain.pos)
        await second.run_once()
        assert second.logs[log_dir].deltas.chain.frames[-1].start == late[0]  # type: ignore[union-attr]
        assert second.logs[log_dir].deltas.chain.frames[-1].end > late[1]  # type: ignore[union-attr]
        got = await stored_bytes(store, "cont")  # readers take the longer one, once
        assert spooled(cfg.spool_dir, "cont").startswith(got) and len(got) > late[1]
        assert p.wait(60) == 0
        for _ in range(2):
            await second.run_once()
        assert await stored_bytes(store, "cont") == spooled(cfg.spool_dir, "cont")
        doc = await archive.load_manifest(store, "cont", "h1")
        # the late one, off the chain, went at the seal's commit (docs/checkpoints.md §7): every delta left
        # is a frame of the sealed segment
        assert doc.status == "finished" and doc.segments[0].frames == len(delta_keys(
            o.key for o in await store.list("logs/cont/")))
        assert second.stats["deltas_repaired"] == 0 and second.stats["off_chain_deltas_deleted"] == 1
        assert second.stats["off_chain_deltas"] == 1
    finally:
        stop_agent(p, cfg.spool_dir, "cont")
        await store.close()


async def test_off_chain_deltas_go_after_the_seal_and_a_reader_holding_one_reads_right(
        make_config: MakeConfig) -> None:
    """A re-cut leaves a delta off the chain; a reader took a view naming it; the watcher is killed between
    the seal's commit and the delete (docs/checkpoints.md §7, §8): the next watcher deletes it at start, and
    the old view still reads the spool's bytes (a fresh view when it 404s), never other ones."""
    cfg = make_config(**DELTAS)
    p = steady(cfg, "offc", "3000", "0.002")
    log_dir = cfg.spool_dir / "offc" / "h1"
    store = open_store(cfg.store)
    try:
        first = Watcher(cfg, store)
        await passes_until(first, lambda: _deltas_at_least(store, "offc", 3))
        second = Watcher(cfg, store)
        await second.run_once()
        chain = second.logs[log_dir].deltas.chain
        assert chain is not None
        await asyncio.sleep(0.3)
        late = await _put_late(store, cfg, "offc", chain.seq, chain.pos)
        late_key = names.delta_key("offc", "h1", chain.seq, *late, cfg.store.compression)
        old = await reader.Reader(store).view("offc", "h1")  # its chain ends with the late delta
        assert old.size == late[1]
        await second.run_once()  # cut again from the same start, to a later end
        assert p.wait(60) == 0
        # killed between the commit and the delete: every delete of a delta fails as a dead store would
        real = second.store.delete

        async def delete(keys: Iterable[str]) -> None:
            keys = list(keys)
            if delta_keys(keys):
                raise StoreUnavailable("refused delete", "a test")
            await real(keys)

        second.store.delete = delete  # type: ignore[method-assign]
        with contextlib.suppress(ExceptionGroup):
            for _ in range(2):
                await second.run_once()
        second.store.delete = real  # type: ignore[method-assign]
        doc = await archive.load_manifest(store, "offc", "h1")
        assert doc.status == "finished" and doc.segments[0].frames is not None
        assert late_key in {o.key for o in await store.list("logs/offc/")}  # left for the next pass
        third = Watcher(cfg, store)
        await third.run_once()
        assert third.stats["off_chain_deltas_deleted"] == 1
        assert late_key not in {o.key for o in await store.list("logs/offc/")}
        assert await stored_bytes(store, "offc") == spooled(cfg.spool_dir, "offc")
        assert await reader.read_all(store, "offc", "h1") == spooled(cfg.spool_dir, "offc")
        # the old view, in a reader that holds nothing of it: the late delta 404s; the right bytes or a clean error
        want = spooled(cfg.spool_dir, "offc")[late[0]:late[1]]
        r = reader.Reader(store)
        got = b"".join([piece async for piece in r.read(old, late[0], late[1])])
        assert got == want
    finally:
        stop_agent(p, cfg.spool_dir, "offc")
        await store.close()


async def _deltas_at_least(store: Store, task: str, n: int) -> bool:
    return len(delta_keys(o.key for o in await store.list(f"logs/{task}/"))) >= n


async def _put_late(store: Store, cfg: Config, task: str, seq: int, start: int) -> tuple[int, int]:
    """The delta from `start` to the end of the chunk there, as a watcher that died mid-PUT would have sent it."""
    from shipper.format import index

    d = cfg.spool_dir / task / "h1"
    [c] = [c for c in index.read(str(names.spool_index(d, seq, open_=True))) if c.offset == start]
    data = names.spool_segment(d, seq, open_=True).read_bytes()
    first = index.read(str(names.spool_index(d, seq, open_=True)))[0].offset
    raw = index.pack(c.seq, c.ts_ns, c.offset, c.length, c.lines, c.stream, c.flags)
    await store.put(names.delta_key(task, "h1", seq, start, c.end, cfg.store.compression),
                    delta.encode(start, raw, data[start - first:c.end - first], cfg.store.compression))
    return start, c.end


async def test_the_seal_after_a_crash_at_each_step(make_config: MakeConfig) -> None:
    """The store as a watcher killed at each step of a seal leaves it; the next watcher finishes it."""
    cfg = make_config(**DELTAS)
    p = steady(cfg, "seal", "60", "0.05", "2")
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        await passes_until(w, lambda: _covered(cfg, w, "seal", 60 * 29))  # deltas hold all, the task still runs
        assert p.wait(30) == 0 and w.stats["deltas"] >= 2 and not w.stats["segments_uploaded"]
        # 1. killed after its deltas, before the seal; 2. the next one killed before the frame table
        second = Watcher(cfg, open_store(cfg.store))
        refused = _refusing(second, names.frames_key("seal", "h1", 1))
        with pytest.raises(ExceptionGroup):
            await second.run_once()
        await second.store.close()
        assert refused and not second.stats["segments_uploaded"]
        # 3. killed after the frame table, before the manifest
        third = Watcher(cfg, open_store(cfg.store))
        _refusing(third, names.manifest_key("seal", "h1"))
        with pytest.raises(ExceptionGroup):
            await third.run_once()
        await third.store.close()
        table = names.frames_key("seal", "h1", 1)
        first_table = await store.get(table)
        fourth = Watcher(cfg, store)
        await fourth.run_once()
        assert await store.get(table) == first_table  # the same table again: one key, one content
        doc = await archive.load_manifest(store, "seal", "h1")
        assert doc.status == "finished" and doc.segments[0].frames == w.stats["deltas"]
        assert fourth.stats["deltas"] == 0 and fourth.stats["deltas_repaired"] == 0  # nothing sent twice
        assert await stored_bytes(store, "seal") == spooled(cfg.spool_dir, "seal")
    finally:
        stop_agent(p, cfg.spool_dir, "seal")
        await store.close()


async def _covered(cfg: Config, w: Watcher, task: str, size: int) -> bool:
    """Whether `w`'s chain of the open segment holds `size` bytes (all the task writes)."""
    chain = w.logs.get(cfg.spool_dir / task / "h1")
    return chain is not None and chain.deltas.chain is not None and chain.deltas.chain.pos == size


def _refusing(w: Watcher, key: str) -> list[str]:
    """Make `w`'s store fail every PUT of `key` as an unreachable store would (the watcher dies there)."""
    refused: list[str] = []
    real = w.store.put

    async def put(k: str, data: bytes | memoryview, *, checked: bool = False) -> None:
        if k == key:
            refused.append(k)
            raise StoreUnavailable(f"refused {k}", "a test")
        await real(k, data, checked=checked)

    w.store.put = put  # type: ignore[method-assign,assignment]
    return refused


async def test_a_damaged_delta_is_put_again_at_the_seal(make_config: MakeConfig) -> None:
    cfg = make_config(**DELTAS)
    run = steady(cfg, "dmg", "60", "0.05", "2")
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)
        await passes_until(w, lambda: _covered(cfg, w, "dmg", 60 * 29))
        assert run.wait(30) == 0 and not w.stats["segments_uploaded"]
        [first, *_] = delta_keys(o.key for o in await store.list("logs/dmg/"))
        blob = await store.get(first)
        await store.put(first, blob[: len(blob) // 2])  # cut, as a store that kept half a body would
        with pytest.raises(delta.DeltaDamaged):
            delta.parse(first, await store.get(first))
        again = Watcher(cfg, store)
        await again.run_once()
        assert again.stats["deltas_repaired"] == 1 and await store.get(first) == blob
        assert await stored_bytes(store, "dmg") == spooled(cfg.spool_dir, "dmg")
    finally:
        stop_agent(run, cfg.spool_dir, "dmg")
        await store.close()


# --- kill -9 of a real watcher process, against SeaweedFS ----------------------------------------------


def _s3_env(inst: s3local.LocalS3, bucket: str, tag: str) -> dict[str, str]:
    return {"LOGSHIP_STORE_URL": f"s3://{bucket}/{tag}/", "LOGSHIP_STORE_ENDPOINT": inst.endpoint,
            "AWS_ACCESS_KEY_ID": inst.access_key, "AWS_SECRET_ACCESS_KEY": inst.secret_key}


@pytest.fixture
async def versioned(local_s3: s3local.LocalS3) -> str:
    """A bucket that keeps every version of every key, so a test sees each write ever made."""
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    bucket = "logship-ckpt-versioned"
    async with get_session().create_client("s3", endpoint_url=local_s3.endpoint, region_name="us-east-1",
                                           aws_access_key_id=local_s3.access_key,
                                           aws_secret_access_key=local_s3.secret_key) as s3:
        with contextlib.suppress(s3.exceptions.ClientError):
            await s3.create_bucket(Bucket=bucket)
        await s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


async def _versions(inst: s3local.LocalS3, bucket: str, prefix: str) -> dict[str, set[str]]:
    from aiobotocore.session import get_session

    etags: dict[str, set[str]] = defaultdict(set)
    async with get_session().create_client("s3", endpoint_url=inst.endpoint, region_name="us-east-1",
                                           aws_access_key_id=inst.access_key,
                                           aws_secret_access_key=inst.secret_key) as s3:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        async for page in pages:
            for v in page.get("Versions", []):
                etags[v["Key"]].add(v["ETag"])
    return etags


async def test_watcher_killed_9_between_deltas_and_in_seals_loses_and_repeats_nothing(
        local_s3: s3local.LocalS3, versioned: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    tag = f"k9-{random.randrange(1 << 30):x}"
    env = env_for(spool, _s3_env(local_s3, versioned, tag), LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", **DELTAS)
    agent = start_agent(spool, "k9", [sys.executable, "-c", STEADY, "6000", "0.002"], env=env,
                        stdout=subprocess.DEVNULL)
    from shipper.config import StoreConfig

    store = open_store(StoreConfig(url=env["LOGSHIP_STORE_URL"], endpoint=local_s3.endpoint,
                                   access_key=local_s3.access_key, secret_key=local_s3.secret_key))
    rnd = random.Random(9)
    kills = seen = 0
    try:
        while agent.poll() is None:  # kill -9 at random moments: between delta PUTs, inside them, in seals
            watcher = start_watcher(env, stderr=subprocess.DEVNULL)
            await _first_pass(spool, watcher, 60)  # its start-up is not what we test
            await asyncio.sleep(rnd.uniform(0, 1.0))
            watcher.send_signal(signal.SIGKILL)
            watcher.wait()
            kills += 1
            with contextlib.suppress(ObjectNotFound, LogNotFound):  # a reader after each kill: a prefix, exact
                got = await reader.read_all(store, "k9", "h1")
                assert spooled(spool, "k9").startswith(got)
                seen = max(seen, len(got))
        assert agent.returncode == 0 and kills >= 3 and seen > 0
        res = subprocess.run([sys.executable, "-m", "shipper.commands.cli", "watch", "--once"], env=env,
                             capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        doc = await archive.load_manifest(store, "k9", "h1")
        keys = [o.key for o in await store.list("logs/k9/")]
        assert doc.status == "finished" and any(s.frames is not None for s in doc.segments), keys
        assert sha(await stored_bytes(store, "k9")) == sha(spooled(spool, "k9"))
        assert sha(await reader.read_all(store, "k9", "h1")) == sha(spooled(spool, "k9"))
        etags = await _versions(local_s3, versioned, f"{tag}/")
        assert delta_keys(etags), "no delta was written: the test proved nothing"
        # every key but the manifest has one content: deltas, frame tables, segments (the catalog's records
        # are rows about the log, rewritten by each watcher that notes it, and the liveness object is the
        # agent's latest sample: not the log's bytes)
        assert {k: e for k, e in etags.items()
                if len(e) > 1 and not k.endswith(("/manifest.json", "/liveness.json"))
                and "/catalog/" not in f"/{k}"} == {}
    finally:
        stop_agent(agent, spool, "k9")
        await store.close()


async def _first_pass(spool: Path, watcher: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the watcher process finished a pass (its state file names it)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and watcher.poll() is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads((spool / names.WATCHER_STATE_FILE).read_bytes())["pid"] == watcher.pid:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the watcher made no pass")


async def test_a_delta_put_cut_after_its_headers_stores_nothing(local_s3: s3local.LocalS3, tmp_path: Path) -> None:
    """SeaweedFS keeps an empty object when a PUT ends after its headers; a delta carries Content-MD5, so it
    is refused instead, and the next checkpoint sends those bytes."""
    from .support import Proxy

    port = int(local_s3.endpoint.rsplit(":", 1)[1])
    async with (proxy := Proxy(port)) as endpoint:
        env = {"LOGSHIP_STORE_URL": f"s3://{local_s3.bucket}/cut-{random.randrange(1 << 30):x}/",
               "LOGSHIP_STORE_ENDPOINT": endpoint, "LOGSHIP_STORE_ACCESS_KEY": local_s3.access_key,
               "LOGSHIP_STORE_SECRET_KEY": local_s3.secret_key, **DELTAS}
        from .support import config

        cfg = config(tmp_path, **env)
        # 8 s of output: a loaded machine's first pass may come late, and a log that ended before its first
        # checkpoint has no delta to wait for
        p = steady(cfg, "cut", "400", "0.02")
        store = open_store(cfg.store)
        try:
            w = Watcher(cfg, store)
            await passes_until(w, lambda: _deltas_at_least(store, "cut", 1))
            await asyncio.sleep(0.2)
            proxy.headers_only = 1  # the next request: the delta PUT
            with contextlib.suppress(Exception):
                await w.run_once()
            keys = delta_keys(o.key for o in await store.list("logs/cut/"))
            for k in keys:
                delta.parse(k, await store.get(k))  # none is empty or cut
            assert p.wait(30) == 0
            for _ in range(3):
                with contextlib.suppress(Exception):
                    await w.run_once()
            assert await stored_bytes(store, "cut") == spooled(cfg.spool_dir, "cut")
        finally:
            stop_agent(p, cfg.spool_dir, "cut")
            await store.close()


async def test_a_deleted_manifest_takes_back_framed_segments_from_their_deltas(make_config: MakeConfig) -> None:
    """docs/checkpoints.md §8: the store lost the manifest of a running log whose sealed segments are frames
    only (the spool pruned them); a restarted watcher reads each segment's chain, checks it, writes the same
    frame table and names it again: the log reads whole, nothing sent again."""
    cfg = make_config(**DELTAS, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    n = 6000
    expected = b"".join(b"line %06d of a steady task\n" % i for i in range(n))
    p = steady(cfg, "adf", str(n), "0.0005", "60")
    log_dir = cfg.spool_dir / "adf" / "h1"
    store = open_store(cfg.store)
    try:
        w = Watcher(cfg, store)

        async def shipped_and_pruned() -> bool:
            with contextlib.suppress(ObjectNotFound):
                doc = await archive.load_manifest(store, "adf", "h1")
                return (len([s for s in doc.segments if s.frames]) >= 2 and not list(log_dir.glob("*[0-9].log"))
                        and await stored_bytes(store, "adf") == expected)
            return False

        await passes_until(w, shipped_and_pruned, timeout=60)
        before = await archive.load_manifest(store, "adf", "h1")
        tables = {s.seq: await store.get(names.frames_key("adf", "h1", s.seq)) for s in before.segments if s.frames}
        await store.delete([names.manifest_key("adf", "h1")])
        again = Watcher(cfg, store)  # a restart: it knows only what the store and spool hold
        await again.run_once()
        doc = await archive.load_manifest(store, "adf", "h1")
        assert again.stats["adopted_segments"] == len(before.segments) and not doc.dropped
        assert [(s.seq, s.frames, s.frames_sha256, s.sha256) for s in doc.segments] == [
            (s.seq, s.frames, s.frames_sha256, s.sha256) for s in before.segments]
        for seq, table in tables.items():
            assert await store.get(names.frames_key("adf", "h1", seq)) == table  # one key, one content
        assert await stored_bytes(store, "adf") == expected
        assert await reader.read_all(store, "adf", "h1") == expected
        assert again.stats["deltas"] == 0 and again.stats["deltas_repaired"] == 0
    finally:
        stop_agent(p, cfg.spool_dir, "adf")
        await store.close()
