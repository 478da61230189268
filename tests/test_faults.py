"""The guarantees under real faults, with real processes and a real SeaweedFS (DESIGN §6.1-6.3)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session  # type: ignore[import-untyped]

from shipper.commands import s3local
from shipper.config import StoreConfig
from shipper.errors import ObjectNotFound
from shipper.format import archive
from shipper.format.manifest import Manifest
from shipper.format.reader import Reader
from shipper.store import Store, open_store

from .support import env_for, run_agent, sha, spooled, start_agent, start_watcher, watch_once

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Writes `mb` MB of varied log lines (deterministic), fast: a 1 MB block rewritten with a counter.
GENERATOR = r'''
import random, sys
mb = int(sys.argv[1]); rnd = random.Random(7); out = sys.stdout.buffer
words = [bytes(rnd.choices(range(97, 123), k=rnd.randint(2, 12))) for _ in range(500)]
block = b"".join(b" ".join(rnd.choices(words, k=rnd.randint(3, 30))) + b"\n" for _ in range(12000))[:1 << 20]
for i in range(mb):
    out.write(b"%08d " % i + block)
'''


def s3_env(inst: s3local.LocalS3, bucket: str | None = None) -> dict[str, str]:
    return {"LOGSHIP_STORE_URL": f"s3://{bucket or inst.bucket}/t-{secrets.token_hex(4)}/",
            "LOGSHIP_STORE_ENDPOINT": inst.endpoint, "AWS_ACCESS_KEY_ID": inst.access_key,
            "AWS_SECRET_ACCESS_KEY": inst.secret_key}


def store_cfg(env: dict[str, str]) -> StoreConfig:
    return StoreConfig(url=env["LOGSHIP_STORE_URL"], endpoint=env["LOGSHIP_STORE_ENDPOINT"],
                       access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"])


async def archived_sha(store: Store, task: str, host: str = "h1") -> str:
    r = Reader(store)
    view = await r.view(task, host)
    h = hashlib.sha256()
    async for data in r.read_whole(view):
        h.update(data)
    return h.hexdigest()


async def wait_status(store: Store, task: str, status: str, timeout: float = 120) -> Manifest:
    deadline = time.monotonic() + timeout
    while True:
        try:
            doc = await archive.load_manifest(store, task, "h1")
            if doc.status == status:
                return doc
        except ObjectNotFound:
            pass
        assert time.monotonic() < deadline, f"log {task} not {status} after {timeout}s"
        await asyncio.sleep(0.2)


def stop_watcher(p: subprocess.Popen[bytes]) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(30)


async def test_200_mb_over_many_segments_is_byte_identical(local_s3: s3local.LocalS3, tmp_path: Path) -> None:
    env = env_for(tmp_path / "spool", s3_env(local_s3), LOGSHIP_SPOOL_SEGMENT_BYTES="8MiB",
                  LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.5")
    watcher = start_watcher(env, stderr=subprocess.DEVNULL)
    store = open_store(store_cfg(env))
    try:
        with open(tmp_path / "out", "wb") as out:
            p = start_agent(tmp_path / "spool", "big", [sys.executable, "-c", GENERATOR, "200"], env=env, stdout=out)
            assert p.wait(120) == 0
        doc = await wait_status(store, "big", "finished")
        assert len(doc.segments) >= 20 and doc.size == 200 * ((1 << 20) + 9)
        want = hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest()
        assert await archived_sha(store, "big") == want
        assert stop_watcher(watcher) == 0
    finally:
        watcher.kill()
        await store.close()


@pytest.fixture
async def versioned_bucket(local_s3: s3local.LocalS3) -> AsyncIterator[str]:
    """A bucket that keeps every version of every key, so a test can see each write ever made."""
    bucket = "logship-versioned"
    async with _client(local_s3) as s3:
        try:
            await s3.create_bucket(Bucket=bucket)
        except s3.exceptions.ClientError as exc:
            if "BucketAlready" not in str(exc):
                raise
        await s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    yield bucket


def _client(inst: s3local.LocalS3) -> Any:
    return get_session().create_client("s3", endpoint_url=inst.endpoint, region_name="us-east-1",
                                       aws_access_key_id=inst.access_key, aws_secret_access_key=inst.secret_key)


async def test_watcher_killed_9_mid_upload_resumes_without_duplicates(
        local_s3: s3local.LocalS3, versioned_bucket: str, tmp_path: Path) -> None:
    # Uncompressed 24 MiB segments are uploaded in multipart, so the kill lands inside uploads.
    spool = tmp_path / "spool"
    env = env_for(spool, s3_env(local_s3, versioned_bucket), LOGSHIP_SPOOL_SEGMENT_BYTES="24MiB",
                  LOGSHIP_STORE_COMPRESSION="none")
    assert run_agent(spool, "k9", [sys.executable, "-c", GENERATOR, "300"], env=env).returncode == 0
    store = open_store(store_cfg(env))
    prefix = env["LOGSHIP_STORE_URL"].split("/", 3)[3]
    left_open = 0
    try:
        async with _client(local_s3) as s3:
            async def in_flight() -> int:
                return len((await s3.list_multipart_uploads(Bucket=versioned_bucket, Prefix=prefix)).get("Uploads", []))

            for kill_after in (1, 5):  # twice: early, and once some segments are done
                log = tmp_path / f"watcher-{kill_after}.log"
                with open(log, "wb") as err:
                    watcher = start_watcher(env, stderr=err)
                deadline = time.monotonic() + 60
                # kill only while a multipart upload is under way, after `kill_after` segments made it
                while (len([o for o in await store.list("logs/k9/") if o.key.endswith(".log")]) < kill_after
                       or not await in_flight()):
                    assert time.monotonic() < deadline and watcher.poll() is None, log.read_text()[-3000:]
                    await asyncio.sleep(0.01)
                watcher.kill()
                watcher.wait()
                left_open += await in_flight()
        assert left_open > 0, "no kill landed inside a multipart upload: the test proved nothing"
        res = watch_once(env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert await archived_sha(store, "k9") == sha(spooled(spool, "k9"))
        async with _client(local_s3) as s3:
            uploads = await s3.list_multipart_uploads(Bucket=versioned_bucket, Prefix=prefix)
            assert uploads.get("Uploads", []) == []
            versions = await s3.list_object_versions(Bucket=versioned_bucket, Prefix=prefix)
        etags: dict[str, set[str]] = defaultdict(set)
        for v in versions.get("Versions", []):
            etags[v["Key"]].add(v["ETag"])
        assert [k for k in etags if k.endswith(".log")], "no segment was written"
        # the manifest is rewritten as the log progresses; every other key has one content
        assert {k: e for k, e in etags.items() if len(e) > 1 and not k.endswith("manifest.json")} == {}
    finally:
        await store.close()


async def test_store_down_20s_neither_slows_the_task_nor_loses_data(tmp_path: Path) -> None:
    inst = s3local.start(tmp_path / "s3")  # our own server: this test stops it
    env = env_for(tmp_path / "spool", s3_env(inst), LOGSHIP_SPOOL_SEGMENT_BYTES="1MiB",
                  LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.5")
    # 26 s of output on fixed deadlines: a line every 10 ms, 256 KiB bursts every second, both streams.
    task = ("import sys, time\nt0 = time.monotonic()\nfor i in range(2600):\n"
            "    time.sleep(max(0, t0 + i / 100 - time.monotonic()))\n"
            "    print('tick', i, flush=True)\n"
            "    if i % 100 == 0: sys.stderr.write(('burst %d ' % i) * 20000 + '\\n'); sys.stderr.flush()\n"
            "print('elapsed %.3f' % (time.monotonic() - t0))\n")
    watcher = start_watcher(env, stderr=subprocess.PIPE)
    store = open_store(store_cfg(env))
    try:
        out = tmp_path / "out"
        with open(out, "wb") as f:
            agent = start_agent(tmp_path / "spool", "outage", [sys.executable, "-c", task], env=env, stdout=f)
            deadline = time.monotonic() + 120  # the agent's start: seconds on a loaded machine
            while b"tick 200\n" not in out.read_bytes():  # a burst or two shipped before the outage
                assert agent.poll() is None and time.monotonic() < deadline, "the task did not get going"
                await asyncio.sleep(0.05)
            s3local.stop(inst)
            # The task goes on and ends while the store is still down: the store never holds it back (a task
            # that waited for it would not end before the store is back: the wait would time out)
            assert await asyncio.to_thread(agent.wait, 150) == 0
            s3local.restart(inst)
        assert b"tick 2599\n" in out.read_bytes()  # every line passed through, during the outage too
        doc = await wait_status(store, "outage", "finished", timeout=120)
        assert await archived_sha(store, "outage") == sha(spooled(tmp_path / "spool", "outage"))
        assert doc.size == len(spooled(tmp_path / "spool", "outage"))
        state = json.loads((tmp_path / "spool" / ".watcher.json").read_bytes())
        assert state["stats"]["retries"] >= 1 and state["healthy"]
        assert stop_watcher(watcher) == 0
    finally:
        watcher.kill()
        await store.close()
        s3local.stop(inst)
