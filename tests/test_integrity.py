"""Stored bytes are checked on every read (issue 11): a corruption matrix — truncate, flip, delete, replace
with another log's valid object — over segment, index and checkpoint objects, through every reader (cat,
download, /log whole, Range, zstd passthrough, ?stream=, the tail over WebSocket and SSE), against the
file store and a real SeaweedFS. No wrong byte is served as good, other logs are unaffected, the error
names the object. Also: bytes the log does not hold keep their offsets (416), and tails survive a pruning
spool."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
import zstandard
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.keys import METRICS, SOURCE
from shipper.commands import s3local
from shipper.config import Config, load_config
from shipper.format import archive, index, manifest, names
from shipper.format.manifest import Manifest, Segment
from shipper.store import Store, open_store
from shipper.watcher import watch

from .support import LOGSHIP, env_for, kill_task, run_agent, start_agent

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

# Random base64 lines (≈ 75 % after zstd, so a 3 MiB segment is 3 blocks either way), both streams.
TASK = r'''
import base64, random, sys
n, seed, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rnd = random.Random(seed)
out, err = sys.stdout.buffer, sys.stderr.buffer
for i in range(n):
    f = err if i % 7 == 3 else out
    f.write(b"%06d " % i + base64.b64encode(rnd.randbytes(57)) + b"\n")
    if i % 1000 == 0:
        f.flush()
out.flush(); err.flush()
if pause:
    import time; time.sleep(pause)
'''
LINES_A = 95_000  # ≈ 7.3 MB: segments of 3 MiB, 3 MiB and the rest
LINES_B = 45_000  # ≈ 3.5 MB: a second log in the same store
LINES_C = 25_000  # ≈ 1.9 MB, then the task sleeps: a running log whose open segment is a checkpoint
SEGMENT = "3MiB"
KINDS = ("truncate", "flip", "delete", "replace")
TARGETS = ("segment", "index", "checkpoint", "checkpoint-index")
# "exits non-zero within seconds" means it gives up on its own rather than retrying or waiting for ever: the
# bound is for a hang, and generous, since three Pythons started one after another take tens of seconds on a
# loaded CI machine. That it stops at once is shown by what it says: the damaged object, by name (below).
CLI_DEADLINE_S = 100.0


# --- the archive under test --------------------------------------------------------------------------


@dataclass
class Archive:
    env: dict[str, str]
    store: Store
    server: TestServer
    truth: dict[str, bytes] = field(default_factory=dict)  # the log's bytes as the task wrote them
    docs: dict[str, Manifest] = field(default_factory=dict)  # manifests

    def url(self, task: str, what: str = "log", query: str = "") -> str:
        return str(self.server.make_url(f"/api/v1/tasks/{task}/hosts/h1/{what}")) + (f"?{query}" if query else "")

    def cfg(self) -> Config:
        return load_config(env=self.env)

    async def cli(self, *args: str) -> tuple[int, bytes, str, float]:
        """A `logship` command against this store and API, run without blocking the API's loop."""
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*LOGSHIP, *args, env=env_for(Path(self.env["LOGSHIP_SPOOL_DIR"]),
                                                                                  self.env),
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode is not None
        return proc.returncode, out, err.decode(errors="replace"), time.monotonic() - began


def _store_env(kind: str, tmp: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if kind == "file":
        return {"LOGSHIP_STORE_URL": f"file://{tmp / 'archive'}"}
    s3: s3local.LocalS3 = request.getfixturevalue("local_s3")
    return {"LOGSHIP_STORE_URL": f"s3://{s3.bucket}/i-{secrets.token_hex(4)}/", "LOGSHIP_STORE_ENDPOINT": s3.endpoint,
            "LOGSHIP_STORE_ACCESS_KEY": s3.access_key, "LOGSHIP_STORE_SECRET_KEY": s3.secret_key}


async def make_archive(tmp: Path, store_env: dict[str, str], compression: str, *, running: bool = True) -> Archive:
    """Logs a (3 segments), b (2), and c (running: a segment is uploaded as a checkpoint), in one store;
    an API that reads the store only."""
    env = {"LOGSHIP_SPOOL_DIR": str(tmp / "spool"), "LOGSHIP_SPOOL_SEGMENT_BYTES": SEGMENT,
           "LOGSHIP_STORE_COMPRESSION": compression, "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "0",
           "LOGSHIP_WATCH_CHECKPOINT_DELTAS": "false", **store_env}  # the prefix checkpoints' objects are damaged here
    spool = tmp / "spool"
    truth = {}
    for task, n, seed in (("a", LINES_A, 1), ("b", LINES_B, 2)):
        res = run_agent(spool, task, [sys.executable, "-c", TASK, str(n), str(seed), "0"], env=env_for(spool, env))
        assert res.returncode == 0, res.stderr[-2000:]
        truth[task] = b"".join(p.read_bytes() for p in sorted((spool / task / "h1").glob("*.log")))
    proc = None
    if running:
        proc = start_agent(spool, "c", [sys.executable, "-c", TASK, str(LINES_C), "3", "600"], env=env_for(spool, env),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        idx = spool / "c" / "h1" / "00000001.idx.open"
        deadline = time.monotonic() + 60
        while not (idx.exists() and idx.stat().st_size >= 40 and
                   list(index.unpack(idx.read_bytes()))[-1].end == LINES_C * 84):
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    try:
        cfg = load_config(env=env)
        await watch(cfg, once=True)
        if running:
            truth["c"] = (spool / "c" / "h1" / "00000001.log.open").read_bytes()
    finally:
        if proc is not None:
            kill_task(spool, "c")
            proc.kill()
            proc.wait()
    store = open_store(cfg.store)
    server = TestServer(create_app(cfg, serve_spool=False), host="127.0.0.1")
    await server.start_server()
    arc = Archive(env, store, server, truth)
    for task in truth:
        arc.docs[task] = await archive.load_manifest(store, task, "h1")
    assert len(arc.docs["a"].segments) == 3 and len(arc.docs["b"].segments) == 2
    if running:
        assert arc.docs["c"].status == "running" and arc.docs["c"].checkpoint is not None
        assert arc.docs["c"].checkpoint.raw_size == len(truth["c"])
    return arc


async def close_archive(arc: Archive) -> None:
    await arc.server.close()
    await arc.store.close()


@pytest.fixture(params=[("file", "zstd"), ("file", "none"), ("s3", "zstd"), ("s3", "none")],
                ids=lambda p: "-".join(p))
async def arc(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    kind, compression = request.param
    a = await make_archive(tmp_path, _store_env(kind, tmp_path, request), compression)
    try:
        yield a
    finally:
        await close_archive(a)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # the log's bytes on the wire (aiohttp offers gzip otherwise): tests/test_encoding.py has the codings' cuts
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                     headers={"Accept-Encoding": "identity"},
                                     timeout=aiohttp.ClientTimeout(total=300)) as s:  # a hang guard
        yield s


# --- readers -----------------------------------------------------------------------------------------


@dataclass
class Got:
    """What a reader got: the bytes it took as the log's, and whether (and how) it failed."""

    data: bytes
    failed: bool
    message: str = ""  # the error's text (JSON detail, CLI stderr, tail error event); "" for a cut transfer
    cut: bool = False  # an HTTP answer that began and broke off


async def http(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Got:
    async with session.get(url, headers=headers) as r:
        if r.status >= 400:
            body = await r.read()
            doc = json.loads(body)  # always our JSON error, never bytes of the log
            assert set(doc) >= {"error", "detail", "hint"}, doc
            assert r.headers["Content-Type"].startswith("application/json")
            return Got(b"", True, f"{doc['error']}: {doc['detail']}")
        assert r.status in (200, 206), r.status
        data = b""
        try:
            async for piece in r.content.iter_any():
                data += piece
        except aiohttp.ClientPayloadError:
            return Got(data, True, cut=True)
        if r.content_length is not None and len(data) != r.content_length:
            return Got(data, True, cut=True)
        return Got(data, False)


async def tail(session: aiohttp.ClientSession, url: str, sse: bool, size: int,  # noqa: C901  (WebSocket and SSE)
               start: int | None = 0, timeout: float = 60) -> tuple[Got, int | None]:
    """A tail from offset `start` (None: where its first message is) until the end event, an error event, the
    close, or `size` bytes (a running log never ends): (the bytes at their offsets, the WebSocket close code).
    Never silent: it ends within `timeout` s, handshake included."""
    msgs: list[dict[str, Any]] = []
    code = None

    def done() -> bool:
        return bool(msgs) and ("event" in msgs[-1] and msgs[-1]["event"] in ("end", "error")
                               or sum(len(m["data"].encode()) for m in msgs if "data" in m) >= size)

    async def ws() -> None:
        nonlocal code
        async with session.ws_connect(url) as w:
            async for m in w:
                assert m.type == aiohttp.WSMsgType.TEXT
                msgs.append(json.loads(m.data))
                if done() and msgs[-1].get("event") != "error":
                    break
            code = w.close_code

    async def events() -> None:
        async with session.get(url, headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 200, await r.text()
            buf = b""
            while piece := await r.content.readany():
                buf += piece
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    for line in block.decode().split("\n"):
                        if line.startswith("data: "):
                            msgs.append(json.loads(line[6:]))
                if done():
                    return

    try:
        await asyncio.wait_for(events() if sse else ws(), timeout)  # never silent: an end, an error, or the bytes
    except aiohttp.WSServerHandshakeError as exc:
        return Got(b"", True, f"handshake {exc.status}"), None
    data, pos = bytearray(), start
    for m in msgs:
        if pos is None:
            pos = m.get("offset", m.get("from", 0))
        if "data" in m:
            assert m["offset"] == pos, "a tail message out of place"
            data += m["data"].encode()
            pos += len(m["data"].encode())
        elif m.get("event") == "skipped":
            assert m["from"] == pos
            pos = m["to"]
    errors = [m for m in msgs if m.get("event") == "error"]
    if errors:
        assert msgs[-1] is errors[0], "nothing after an error event"
        return Got(bytes(data), True, f"{errors[0]['error']}: {errors[0]['detail']}"), code
    return Got(bytes(data), False), code


def stdout_of(arc: Archive, task: str) -> bytes:
    data = arc.truth[task]
    return b"".join(line for line in data.splitlines(keepends=True) if int(line[:6]) % 7 != 3)


# --- corrupting the store behind logship's back ------------------------------------------------------


def target_key(arc: Archive, target: str) -> str:
    if target.startswith("checkpoint"):
        ckpt = arc.docs["c"].checkpoint
        assert ckpt is not None
        keys = ckpt.keys("c", "h1")
    else:
        keys = arc.docs["a"].segments[1].keys("a", "h1")
    return keys[1] if target.endswith("index") else keys[0]


async def corrupt(arc: Archive, key: str, kind: str) -> None:
    data = await arc.store.get(key)
    if kind == "truncate":
        await arc.store.put(key, data[: len(data) * 2 // 3])
    elif kind == "flip":
        at = len(data) * 2 // 3
        await arc.store.put(key, data[:at] + bytes(b ^ 0xA5 for b in data[at:at + 16]) + data[at + 16:])
    elif kind == "delete":
        await arc.store.delete([key])
    else:  # another log's object of the same kind: valid zstd (or raw bytes), the manifest's size or near
        other = key.replace("logs/a/", "logs/b/").replace("logs/c/", "logs/b/")
        other = other.replace("00000002", "00000001")
        if ".ckpt-" in other:
            other = arc.docs["b"].segments[0].keys("b", "h1")[1 if ".idx" in other else 0]
        await arc.store.put(key, await arc.store.get(other))


def prefix_ok(got: bytes, good: bytes) -> bool:
    return good.startswith(got)


# --- the matrix --------------------------------------------------------------------------------------


async def test_corruption_matrix(arc: Archive, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
                                 tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING, logger="logship.api")
    a_doc, c_doc = arc.docs["a"], arc.docs["c"]
    seg2 = a_doc.segments[1]
    mid = (seg2.offset + seg2.raw_size // 2, seg2.end)  # a Range in segment 2
    ck = c_doc.checkpoint
    assert ck is not None
    ck_mid = (ck.offset + ck.raw_size // 2, ck.end)
    zstd = {"Accept-Encoding": "zstd"}
    good_zstd = await http(session, arc.url("a"), zstd)  # the stored frames as they are, before any damage
    assert not good_zstd.failed
    source = arc.server.app[SOURCE]

    for target in TARGETS:
        task = "c" if target.startswith("checkpoint") else "a"
        truth = arc.truth[task]
        rng = ck_mid if task == "c" else mid
        key = target_key(arc, target)
        saved = await arc.store.get(key)
        for kind in KINDS:
            case = f"{target} {kind} ({key})"
            before = source.integrity_errors
            await corrupt(arc, key, kind)
            try:
                results: dict[str, Got] = {}
                results["/log"] = await http(session, arc.url(task))
                results["Range"] = await http(session, arc.url(task), {"Range": f"bytes={rng[0]}-{rng[1] - 1}"})
                results["zstd"] = await http(session, arc.url(task), zstd)
                if task == "c":  # a running log: compressed on the fly; what decodes of it is what it took
                    z = results["zstd"]
                    results["zstd"] = replace(z, data=zstandard.ZstdDecompressor().decompressobj(
                    ).decompress(z.data) if z.data.startswith(b"\x28\xb5\x2f\xfd") else z.data)
                results["stream"] = await http(session, arc.url(task, query="stream=stdout"))
                for sse in (False, True):
                    got, code = await tail(session, arc.url(task, "tail", "from=0"), sse, len(truth))
                    results["SSE" if sse else "WebSocket"] = got
                    if got.failed and not sse and not got.message.startswith("handshake"):
                        assert code == aiohttp.WSCloseCode.BAD_GATEWAY, (case, code)
                rc, out, err, took = await arc.cli("cat", task, "--host", "h1")
                results["cat"] = Got(out, rc != 0, err)
                rc, out, err, took_s = await arc.cli("cat", task, "--host", "h1", "--stream", "stdout")
                results["cat --stream"] = Got(out, rc != 0, err)
                dest = tmp_path / f"dl-{target}-{kind}.log"
                rc, _, err, took_dl = await arc.cli("download", task, "--host", "h1", "-o", str(dest),
                                                    "--url", str(arc.server.make_url("")).rstrip("/"))
                results["download"] = Got(dest.read_bytes() if dest.exists() else b"", rc != 0, err)
                assert max(took, took_s, took_dl) < CLI_DEADLINE_S, (case, took, took_s, took_dl)

                for reader, got in results.items():
                    want = {"Range": truth[rng[0]:rng[1]], "zstd": good_zstd.data if task == "a" else truth,
                            "stream": stdout_of(arc, task), "cat --stream": stdout_of(arc, task)}.get(reader, truth)
                    if not got.failed:  # a reader that did not touch the damaged object: every byte right
                        assert got.data == want, (case, reader, "wrong bytes served as good")
                        continue
                    assert prefix_ok(got.data, want), (case, reader, "a failed reader still got wrong bytes")
                    assert b"HTTP/1.1" not in got.data, (case, reader)
                    if not got.cut:
                        assert key.rsplit("/", 1)[1] in got.message, (case, reader, got.message)
                # Who must fail: everything that reads the damaged object.
                touches = {"/log", "Range", "zstd", "cat", "download", "stream", "cat --stream", "WebSocket", "SSE"}
                if target.endswith("index"):
                    touches = {"stream", "cat --stream", "WebSocket", "SSE"}
                for reader in touches:
                    assert results[reader].failed, (case, reader, "served as good")
                assert source.integrity_errors > before, case
                # The other log in the same store is unaffected.
                other = await http(session, arc.url("b"))
                assert not other.failed and other.data == arc.truth["b"], case
            finally:
                await arc.store.put(key, saved)
        assert key in caplog.text, f"no log line names {key}"
    # Restored: everything reads right again, and /metrics counted what happened.
    assert (await http(session, arc.url("a"))).data == arc.truth["a"]
    async with session.get(str(arc.server.make_url("/metrics"))) as r:
        text = await r.text()
    assert f"logship_api_integrity_errors_total {source.integrity_errors}" in text
    assert source.integrity_errors > 0 and arc.server.app[METRICS].transfers_aborted > 0


# --- regressions -------------------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
async def finished(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    """Logs a and b, finished, zstd, in the store only."""
    a = await make_archive(tmp_path, _store_env(request.param, tmp_path, request), "zstd", running=False)
    try:
        yield a
    finally:
        await close_archive(a)


async def raw_get(arc: Archive, path: str) -> bytes:
    """Everything the API sends on one connection for a GET, status line and all, until it closes."""
    host, port = arc.server.host, arc.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return data


async def test_finding5_an_object_missing_mid_download_fails_the_transfer(finished: Archive) -> None:
    """A store object missing mid-download: never an HTTP response written inside the body of the 200; the
    answer breaks off (no terminating chunk); `logship download` exits non-zero within seconds naming the
    object, keeps the good bytes, and completes by resuming once the object is back."""
    arc = finished
    key = target_key(arc, "segment")
    saved = await arc.store.get(key)
    await arc.store.delete([key])
    try:
        wire = await raw_get(arc, "/api/v1/tasks/a/hosts/h1/log")
        head, _, body = wire.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"HTTP/1.1" not in body  # finding 5: a 404 answer was written into the body
        assert len(body) < len(arc.truth["a"])  # Content-Length not reached: a failed transfer for any client
        dest = Path(arc.env["LOGSHIP_SPOOL_DIR"]).parent / "a.log"
        rc, _, err, took = await arc.cli("download", "a", "--host", "h1", "-o", str(dest),
                                         "--url", str(arc.server.make_url("")).rstrip("/"))
        assert rc != 0 and took < CLI_DEADLINE_S, (rc, took, err)
        assert key.rsplit("/", 1)[1] in err and "missing" in err, err
        kept = dest.read_bytes()
        assert kept == arc.truth["a"][:arc.docs["a"].segments[1].offset]  # the good bytes, no error body
    finally:
        await arc.store.put(key, saved)
    rc, _, err, _ = await arc.cli("download", "a", "--host", "h1", "-o", str(dest),
                                  "--url", str(arc.server.make_url("")).rstrip("/"))
    assert rc == 0, err
    assert "resumed at byte" in err and dest.read_bytes() == arc.truth["a"]


async def test_finding8_a_segment_replaced_by_other_valid_zstd_is_never_served(
        finished: Archive, session: aiohttp.ClientSession) -> None:
    """The manifest's checksums are checked on read: another log's segment (valid zstd) under this log's key
    fails cat, /log, the zstd passthrough and a Range, each naming the object or breaking off."""
    arc = finished
    key = target_key(arc, "segment")
    saved = await arc.store.get(key)
    await corrupt(arc, key, "replace")
    try:
        rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
        assert rc != 0 and key.rsplit("/", 1)[1] in err, err
        assert arc.truth["a"].startswith(out)
        seg2 = arc.docs["a"].segments[1]
        for headers in ({}, {"Accept-Encoding": "zstd"}, {"Range": f"bytes={seg2.offset + 5}-{seg2.offset + 9}"}):
            got = await http(session, arc.url("a"), headers)
            assert got.failed, headers
            if headers.get("Range"):  # the first byte is in the replaced object: a JSON error naming it
                assert not got.cut and key.rsplit("/", 1)[1] in got.message
    finally:
        await arc.store.put(key, saved)


async def _edit_manifest(arc: Archive, task: str, edit: Any) -> None:
    key = names.manifest_key(task, "h1")
    doc = json.loads(await arc.store.get(key))
    edit(doc)
    await arc.store.put(key, json.dumps(doc).encode())
    await asyncio.sleep(0.15)  # past the API's reuse of a finished log's view


@pytest.mark.parametrize("recorded", [True, False], ids=["dropped", "unexplained"])
async def test_finding7_bytes_after_a_gap_keep_their_offsets(finished: Archive, session: aiohttp.ClientSession,
                                                             recorded: bool) -> None:
    """A range the log does not hold (segment 2 dropped, recorded in `dropped` or not at all): every
    reader keeps offsets exactly. A request that covers missing bytes is a 416 naming them, never a 2xx
    with fewer or moved bytes; bytes before and after it are served at their offsets."""
    arc = finished
    truth = arc.truth["a"]
    seg2 = arc.docs["a"].segments[1]
    a, b = seg2.offset, seg2.end

    def drop(doc: dict[str, Any]) -> None:
        gone = doc["segments"].pop(1)
        if recorded:
            doc["dropped"].append({k: gone[k] for k in ("seq", "offset", "raw_size", "lines")})
            doc["dropped_bytes"] = gone["raw_size"]

    await _edit_manifest(arc, "a", drop)
    for headers, query in (({}, ""), ({"Range": f"bytes={a - 10}-{a + 10}"}, ""),
                           ({"Range": f"bytes={a + 5}-{a + 9}"}, ""), ({"Accept-Encoding": "zstd"}, ""),
                           ({}, "stream=stdout"), ({}, f"start={a}"), ({}, "follow=true")):
        async with session.get(arc.url("a", query=query), headers=headers) as r:
            assert r.status == 416, (headers, query, r.status)
            doc = await r.json()
            assert doc["error"] == "bytes_missing" and doc["missing"] == [[a, b]]
            assert f"bytes {a}-{b - 1} of a/h1" in doc["detail"], doc
            assert ("dropped at the spool quota" in doc["detail"]) == recorded
            assert r.headers["Content-Range"] == f"bytes */{len(truth)}"
    ok = await http(session, arc.url("a"), {"Range": f"bytes={b}-{b + 99}"})
    assert ok.data == truth[b:b + 100]  # after the gap: at its offset
    ok = await http(session, arc.url("a"), {"Range": f"bytes={a - 100}-{a - 1}"})
    assert ok.data == truth[a - 100:a]
    async with session.get(arc.url("a", query="start=0")) as r:  # progressive: stops at the gap
        assert r.status == 200 and r.headers["X-More-Data"] == "true" and r.headers["X-Log-Size"] == str(len(truth))
        assert await r.read() == truth[:a]
    # The tail says what it skips; the CLI tail prints around it; download and cat stop and say so.
    for sse in (False, True):
        got, _ = await tail(session, arc.url("a", "tail", "from=0"), sse, len(truth))
        assert not got.failed and got.data == truth[:a] + truth[b:]
    rc, out, err, _ = await arc.cli("tail", "a", "--host", "h1", "--from", "0",
                                    "--url", str(arc.server.make_url("")).rstrip("/"))
    assert rc == 0 and out == truth[:a] + truth[b:], err
    assert f"bytes {a}-{b - 1}" in err
    dest = Path(arc.env["LOGSHIP_SPOOL_DIR"]).parent / "gap.log"
    rc, _, err, took = await arc.cli("download", "a", "--host", "h1", "-o", str(dest),
                                     "--url", str(arc.server.make_url("")).rstrip("/"))
    assert rc != 0 and f"bytes {a}-{b - 1}" in err and took < CLI_DEADLINE_S, err
    assert not dest.exists() or truth.startswith(dest.read_bytes())
    rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
    assert rc != 0 and f"bytes {a}-{b - 1}" in err and out == truth[:a], err


async def test_a_manifest_without_digests_is_checked_whole(finished: Archive, session: aiohttp.ClientSession) -> None:
    """A manifest written before the digests (no stored_sha256, index_sha256, blocks): a whole read checks
    the log bytes' sha256 (after the fact: the answer breaks off at the end of the bad part), the zstd
    representation falls back to the API's own decompression (so it is checked too), cat checks it whole."""
    arc = finished

    def strip(doc: dict[str, Any]) -> None:
        for e in doc["segments"]:
            for k in ("stored_sha256", "index_sha256", "blocks"):
                e.pop(k, None)

    await _edit_manifest(arc, "a", strip)
    good = await http(session, arc.url("a"))
    assert not good.failed and good.data == arc.truth["a"]
    async with session.get(arc.url("a"), headers={"Accept-Encoding": "zstd"}) as r:  # decompressed, compressed
        assert r.headers["Content-Encoding"] == "zstd" and "Content-Length" not in r.headers
        body = await r.read()
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).readall() \
            == arc.truth["a"]
    key = target_key(arc, "segment")
    saved = await arc.store.get(key)
    await corrupt(arc, key, "replace")
    try:
        for headers in ({}, {"Accept-Encoding": "zstd"}):
            got = await http(session, arc.url("a"), headers)
            assert got.failed and got.cut, headers
        rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
        assert rc != 0 and key.rsplit("/", 1)[1] in err
        assert arc.truth["a"].startswith(out)
    finally:
        await arc.store.put(key, saved)


async def test_a_damaged_manifest_is_an_error_naming_it(finished: Archive, session: aiohttp.ClientSession) -> None:
    arc = finished
    key = names.manifest_key("a", "h1")
    await arc.store.put(key, b'{"version": 1, "task": "a", "segm')
    await asyncio.sleep(0.15)  # past the API's reuse of a finished log's view
    for url in (arc.url("a"), arc.url("a", "")[:-1]):
        got = await http(session, url)
        assert got.failed and not got.cut and key in got.message, got
    rc, _, err, _ = await arc.cli("cat", "a", "--host", "h1")
    assert rc != 0 and key in err
    other = await http(session, arc.url("b"))
    assert other.data == arc.truth["b"]


async def test_the_watcher_records_digests_that_fit_the_objects(finished: Archive) -> None:
    arc = finished
    for task in ("a", "b"):
        for entry in arc.docs[task].segments:
            key, idx_key = entry.keys(task, "h1")
            data, idx = await arc.store.get(key), await arc.store.get(idx_key)
            assert entry.stored_sha256 == hashlib.sha256(data).hexdigest()
            assert entry.index_sha256 == hashlib.sha256(idx).hexdigest()
            assert entry.blocks is not None
            assert set(entry.blocks) == {"size", "xxh3_128"} and entry.blocks["size"] == archive.BLOCK
            assert entry.blocks["xxh3_128"] == "".join(
                xxhash.xxh3_128_hexdigest(data[i:i + archive.BLOCK]) for i in range(0, len(data), archive.BLOCK))
            archive.check_stored(key, entry, data)
            assert len(archive.check_index(idx_key, entry, idx)) == entry.chunks[1] - entry.chunks[0] + 1


async def test_stored_digest_is_the_same_however_the_bytes_come() -> None:
    data = os.urandom(3 * archive.BLOCK + 12345)
    one = archive.digest_fields(data)
    d = archive.StoredDigest()
    for i in range(0, len(data), 77777):
        d.update(memoryview(data)[i:i + 77777])
    assert d.fields() == one and d.size == len(data)
    assert one["stored_sha256"] == hashlib.sha256(data).hexdigest()
    assert [one["blocks"]["xxh3_128"][i:i + 32] for i in range(0, 128, 32)] == [
        xxhash.xxh3_128_hexdigest(data[i:i + archive.BLOCK]) for i in range(0, len(data), archive.BLOCK)]
    assert len(archive.digest_fields(b"")["blocks"]["xxh3_128"]) == 32


async def test_block_sizes_keep_first_bytes_near_and_manifests_small() -> None:
    """A 16 MiB segment (the default) is checked in 256 KiB blocks; larger objects get larger blocks, so
    that up to 64 MiB an object has at most 64 digests, and no block is over 1 MiB (what a reader holds)."""
    assert archive.block_for(1) == archive.block_for(16 << 20) == 256 << 10
    for size in (1, 100_000, 16 << 20, (16 << 20) + 1, 40 << 20, 64 << 20, 1 << 30, 1 << 40):
        bs = archive.block_for(size)
        assert bs in manifest.BLOCK_SIZES and archive.BLOCK <= bs <= 1 << 20
        assert -(-size // bs) <= 64 or bs == 1 << 20, size


def _blocks_of(arc: Archive, task: str) -> list[tuple[str, Segment, int]]:
    """(key, entry, number of blocks) of each segment of a log."""
    out = []
    for entry in arc.docs[task].segments:
        assert entry.blocks is not None
        out.append((entry.keys(task, "h1")[0], entry, -(-entry.stored_size // entry.blocks["size"])))
    return out


@pytest.mark.parametrize("piece", [1, 65536, 100_003, archive.BLOCK, 3 * archive.BLOCK + 7])
async def test_verified_lets_out_exactly_the_blocks_before_a_bad_one(piece: int) -> None:
    """However the store cuts an object into pieces, verified() lets out every byte of the good blocks
    before a bad one and nothing of it; a good object comes out whole, a longer or shorter one fails."""
    data = os.urandom(5 * archive.BLOCK + 4321)
    entry = Segment(0, 0, len(data), len(data), 1, "0" * 64, "none", 0, 0, 1, (1, 1),
                    **archive.digest_fields(data))

    async def pieces(d: bytes, step: int = piece) -> AsyncIterator[bytes]:
        for i in range(0, len(d), step):
            yield d[i:i + step]

    async def read(d: bytes, start: int = 0, end: int | None = None) -> tuple[bytes, str]:
        got = bytearray()
        try:
            async for x in archive.verified(pieces(d[start:end]), "k", entry, start, end):
                got += x
        except archive.IntegrityError as exc:
            return bytes(got), str(exc)
        return bytes(got), ""

    assert await read(data) == (data, "")
    bs = archive.BLOCK
    assert await read(data, 2 * bs, 4 * bs) == (data[2 * bs:4 * bs], "")
    bad = data[:3 * bs + 100] + bytes([data[3 * bs + 100] ^ 1]) + data[3 * bs + 101:]
    got, err = await read(bad)
    assert got == data[:3 * bs] and f"bytes {3 * bs}-{4 * bs - 1} do not match" in err
    got, err = await read(data[:-1])
    assert data.startswith(got) and len(got) <= 5 * bs and "ended at byte" in err
    got, err = await read(data + b"x")
    assert data.startswith(got) and "longer than" in err


async def test_a_bad_block_in_the_middle_cuts_the_transfer_before_it(
        finished: Archive, session: aiohttp.ClientSession) -> None:
    """One flipped byte in a middle block of segment 2: /log (decompressed), the zstd passthrough and cat
    break off; the passthrough sends nothing of the bad block (nor after it), every byte before is right."""
    arc = finished
    (_, first, _), (key, entry, n), *_ = _blocks_of(arc, "a")
    assert n >= 3, n
    assert entry.blocks is not None
    bs, k = entry.blocks["size"], n // 2
    good_zstd = await http(session, arc.url("a"), {"Accept-Encoding": "zstd"})
    assert not good_zstd.failed
    saved = await arc.store.get(key)
    at = k * bs + bs // 2
    await arc.store.put(key, saved[:at] + bytes([saved[at] ^ 0x01]) + saved[at + 1:])
    try:
        got = await http(session, arc.url("a"), {"Accept-Encoding": "zstd"})
        assert got.failed and got.cut and good_zstd.data.startswith(got.data)
        assert len(got.data) <= first.stored_size + k * bs  # not a byte of the bad block
        got = await http(session, arc.url("a"))
        assert got.failed and got.cut and arc.truth["a"].startswith(got.data)
        assert len(got.data) < entry.end
        rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
        assert rc != 0 and key.rsplit("/", 1)[1] in err and f"bytes {k * bs}-{(k + 1) * bs - 1}" in err, err
        assert arc.truth["a"].startswith(out)
    finally:
        await arc.store.put(key, saved)


async def test_manifests_with_sha256_block_digests_still_read(finished: Archive,
                                                              session: aiohttp.ClientSession) -> None:
    """A manifest written before XXH3 (`blocks: {"size": 1 MiB, "sha256": …}`): /log, a Range, the zstd
    passthrough and cat read it back, checked against those digests; a damaged object still fails them."""
    arc = finished
    olds: dict[int, dict[str, Any]] = {}
    for key, entry, _ in _blocks_of(arc, "a"):
        data, bs = await arc.store.get(key), 1 << 20
        olds[entry.seq] = {"size": bs, "sha256": "".join(
            hashlib.sha256(data[i:i + bs]).hexdigest()[:32] for i in range(0, len(data), bs))}

    def old(doc: dict[str, Any]) -> None:
        for e in doc["segments"]:
            e["blocks"] = olds[e["seq"]]

    await _edit_manifest(arc, "a", old)
    assert (await archive.load_manifest(arc.store, "a", "h1")).segments[1].blocks == olds[2]
    truth, seg2 = arc.truth["a"], arc.docs["a"].segments[1]
    got = await http(session, arc.url("a"))
    assert not got.failed and got.data == truth
    a = seg2.offset + 123_457
    got = await http(session, arc.url("a"), {"Range": f"bytes={a}-{a + 99_999}"})
    assert not got.failed and got.data == truth[a:a + 100_000]
    async with session.get(arc.url("a"), headers={"Accept-Encoding": "zstd"}) as r:
        assert r.headers["Content-Encoding"] == "zstd"  # passed through as stored, not decompressed
        body = await r.read()
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).readall() == truth
    rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
    assert rc == 0 and out == truth, err
    key = target_key(arc, "segment")
    saved = await arc.store.get(key)
    await corrupt(arc, key, "flip")
    try:
        for headers in ({}, {"Accept-Encoding": "zstd"}):
            got = await http(session, arc.url("a"), headers)
            assert got.failed and got.cut and not got.data.endswith(truth[-1000:]), headers
        rc, out, err, _ = await arc.cli("cat", "a", "--host", "h1")
        assert rc != 0 and key.rsplit("/", 1)[1] in err and truth.startswith(out), err
    finally:
        await arc.store.put(key, saved)


# --- many tails while the spool is pruned ------------------------------------------------------------


async def test_a_thousand_tails_while_segments_are_pruned(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """1,000 tails (and Range reads) of a log whose spool segments are pruned under them: no 500, no error,
    every follower gets every byte at its offset and the end."""
    env = {"LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive",
           "LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "3600"}
    spool = tmp_path / "spool"
    res = run_agent(spool, "p", [sys.executable, "-c", TASK, "6000", "5", "0"], env=env_for(spool, env))
    assert res.returncode == 0
    truth = b"".join(p.read_bytes() for p in sorted((spool / "p" / "h1").glob("*.log")))
    cfg = load_config(env=env)
    await watch(cfg, once=True)  # uploaded, but kept in the spool: the API reads it from there
    server = TestServer(create_app(cfg), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("/api/v1/tasks/p/hosts/h1"))
    statuses: list[int] = []

    async def follower(i: int) -> None:
        query = "from=0" if i % 4 == 0 else f"lines={i % 50}"
        got, code = await tail(session, f"{base}/tail?{query}", i % 2 == 1, len(truth),
                               0 if query == "from=0" else None, timeout=300)  # a thousand at once: the last wait
        assert not got.failed, got.message
        if query == "from=0":
            assert got.data == truth
        else:
            assert truth.endswith(got.data) and got.data.count(b"\n") == i % 50

    async def ranges(i: int) -> None:
        a = (i * 7919) % (len(truth) - 5000)
        async with session.get(f"{base}/log", headers={"Range": f"bytes={a}-{a + 4999}"}) as r:
            statuses.append(r.status)
            assert r.status == 206 and await r.read() == truth[a:a + 5000]

    async def prune() -> None:
        await asyncio.sleep(0.3)
        for p in sorted((spool / "p" / "h1").glob("0*.*")):
            if p.suffix in (".log", ".idx"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                await asyncio.sleep(0.01)

    try:
        jobs = [follower(i) for i in range(1000)] + [ranges(i) for i in range(200)] + [prune()]
        await asyncio.wait_for(asyncio.gather(*jobs), 400)
        assert set(statuses) == {206}
    finally:
        await server.close()


