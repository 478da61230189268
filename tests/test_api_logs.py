"""The log routes of the API: whole log, Range, If-Range, follow, progressive, streams, listing, errors."""

from __future__ import annotations

import asyncio
import io
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api import source
from api.app import create_app
from api.keys import METRICS
from shipper.config import Config, load_config
from shipper.errors import StoreError
from shipper.format import zstdio
from shipper.format.archive import IntegrityError
from shipper.watcher import watch

from .support import NASTY, Client, env_for, run_agent, spooled, start_agent, stop_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")

BIG = "import sys\nfor i in range(60000): sys.stdout.write('line %06d %s\\n' % (i, 'abcdefghij' * (i % 7)))\n"

Shipped = tuple[Client, bytes]  # a test client and the log's bytes


class Setup:
    def __init__(self, tmp_path: Path, base: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = {"LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive",
                    "LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", **base}

    def cfg(self, **extra: str) -> Config:
        return load_config(env={**self.env, **extra})

    @property
    def spool(self) -> Path:
        return self.tmp_path / "spool"

    def agent_env(self) -> dict[str, str]:
        return env_for(self.spool, self.env)

    def run(self, task: str, script: str, host: str = "h1") -> bytes:
        res = run_agent(self.spool, task, [sys.executable, "-c", script], env=self.agent_env(), host=host)
        assert res.returncode == 0
        return res.stdout + res.stderr if script is NASTY else res.stdout


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, {})


async def client_for(cfg: Config, serve_spool: bool = True) -> Client:
    # identity unless a test asks for an encoding (aiohttp offers gzip; tests/test_encoding.py tests codings)
    client = TestClient(TestServer(create_app(cfg, serve_spool=serve_spool)), headers={"Accept-Encoding": "identity"})
    await client.start_server()
    return client


@pytest.fixture(params=["spool", "store-zstd", "store-none"])
async def shipped(request: pytest.FixtureRequest, setup: Setup) -> AsyncIterator[Shipped]:
    """A finished multi-segment log served from the spool only, or from the store only (spool pruned)."""
    if request.param == "store-none":
        setup.env["LOGSHIP_STORE_COMPRESSION"] = "none"
    data = setup.run("big", BIG)
    if request.param.startswith("store"):
        await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0"), once=True)
        assert not list((setup.spool / "big" / "h1").glob("*.log"))
    client = await client_for(setup.cfg())
    yield client, data
    await client.close()


async def test_whole_log_is_byte_identical(shipped: Shipped) -> None:
    client, data = shipped
    r = await client.get("/api/v1/tasks/big/hosts/h1/log")
    assert r.status == 200 and r.headers["Content-Length"] == str(len(data))
    assert await r.read() == data
    assert r.headers["ETag"].startswith('"') and r.headers["Accept-Ranges"] == "bytes"


async def test_ranges(shipped: Shipped) -> None:
    client, data = shipped
    n = len(data)
    for header, want in [("bytes=0-0", data[:1]), (f"bytes={n - 1}-", data[-1:]), ("bytes=-1", data[-1:]),
                         ("bytes=65530-65560", data[65530:65561]),  # across a segment boundary
                         ("bytes=100000-300000", data[100000:300001]), (f"bytes={n - 5000}-{n + 99}", data[-5000:]),
                         ("bytes=70000-70100", data[70000:70101])]:  # inside a (compressed) segment
        r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"Range": header})
        assert r.status == 206, header
        body = await r.read()
        assert body == want, header
        first = n - 1 if header.startswith("bytes=-") else int(header[6:].split("-")[0])
        assert r.headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{n}"
    for bad in [f"bytes={n}-", "bytes=5-1", "bytes=0-1,4-5", "lines=1-2", "bytes=-0"]:
        r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"Range": bad})
        assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{n}", bad
        assert (await r.json())["error"] == "bad_range"


async def test_if_range(shipped: Shipped) -> None:
    client, data = shipped
    etag = (await client.head("/api/v1/tasks/big/hosts/h1/log")).headers["ETag"]
    r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"Range": "bytes=10-19", "If-Range": etag})
    assert r.status == 206 and await r.read() == data[10:20]
    r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"Range": "bytes=10-19", "If-Range": '"other-1"'})
    assert r.status == 200 and await r.read() == data


async def test_progressive_start(shipped: Shipped) -> None:
    client, data = shipped
    r = await client.get("/api/v1/tasks/big/hosts/h1/log?start=1000")
    assert await r.read() == data[1000:]
    assert r.headers["X-Log-Size"] == str(len(data)) and r.headers["X-More-Data"] == "false"
    r = await client.get(f"/api/v1/tasks/big/hosts/h1/log?start={len(data) + 1}")
    assert r.status == 416


async def test_streams_and_metadata(setup: Setup) -> None:
    res = run_agent(setup.spool, "nasty", [sys.executable, "-c", NASTY], env=setup.agent_env())
    await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0"), once=True)
    for serve_spool in (True, False):
        client = await client_for(setup.cfg(), serve_spool)
        assert await (await client.get("/api/v1/tasks/nasty/hosts/h1/log?stream=stdout")).read() == res.stdout
        assert await (await client.get("/api/v1/tasks/nasty/hosts/h1/log?stream=stderr")).read() == res.stderr
        meta = await (await client.get("/api/v1/tasks/nasty/hosts/h1")).json()
        assert meta["status"] == "finished" and meta["exit_code"] == 0
        assert meta["live_size"] == meta["size"] == len(res.stdout) + len(res.stderr)
        await client.close()


async def test_running_log_download_and_follow(setup: Setup) -> None:
    gate = setup.tmp_path / "gate"
    script = (f"import os, time\nfor i in range(3000): print('early', i)\nimport sys; sys.stdout.flush()\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
              "for i in range(50): print('late', i, flush=True); time.sleep(0.01)\n")
    p = start_agent(setup.spool, "run", [sys.executable, "-c", script], env=setup.agent_env())
    client = await client_for(setup.cfg())
    try:
        for _ in range(200):
            r = await client.get("/api/v1/tasks/run/hosts/h1/log")
            if r.status == 200 and (body := await r.read()).endswith(b"early 2999\n"):
                break
            await asyncio.sleep(0.05)
        assert "Content-Length" not in r.headers  # running: no length yet
        r = await client.get("/api/v1/tasks/run/hosts/h1/log", headers={"Range": "bytes=0-9"})
        assert r.status == 206 and r.headers["Content-Range"] == "bytes 0-9/*"
        meta = await (await client.get("/api/v1/tasks/run/hosts/h1")).json()
        assert meta["status"] == "running" and meta["live_size"] == len(body)
        r = await client.get("/api/v1/tasks/run/hosts/h1/log?start=0")
        assert r.headers["X-More-Data"] == "true"
        follow = await client.get("/api/v1/tasks/run/hosts/h1/log?follow=true")
        first = await follow.content.readexactly(len(body))
        assert first == body
        gate.touch()
        rest = await asyncio.wait_for(follow.read(), 30)  # ends when the task ends
        assert p.wait(10) == 0
        assert first + rest == spooled(setup.spool, "run")
        assert rest.endswith(b"late 49\n")
    finally:
        stop_agent(p, setup.spool, "run")
        await client.close()


async def test_a_follower_that_goes_away_is_forgotten_quietly(setup: Setup,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    script = "import time\nfor i in range(600): print('tick', i, flush=True); time.sleep(0.05)\n"
    p = start_agent(setup.spool, "gone", [sys.executable, "-c", script], env=setup.agent_env())
    # Run as `logship serve` runs it (web.run_app): a handler is not cancelled when its client goes,
    # it finds out on its next write. (aiohttp's TestServer cancels handlers.)
    app = create_app(setup.cfg())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    metrics = app[METRICS]
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                r = await session.get(f"{base}/tasks/gone/hosts/h1/log?follow=true")
                if r.status == 200:
                    break
                r.release()
                await asyncio.sleep(0.05)
            assert (await r.content.readline()).startswith(b"tick")
            assert metrics.followers == 1
            r.close()  # the client goes; the task writes on
            for _ in range(200):
                if metrics.followers == 0:
                    break
                await asyncio.sleep(0.05)
            assert metrics.followers == 0 and metrics.client_gone == 1
            async with session.get(f"{base.removesuffix('/api/v1')}/metrics") as m:
                assert "logship_api_downloads_cut_by_client_total 1" in await m.text()
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    finally:
        stop_agent(p, setup.spool, "gone")
        await runner.cleanup()


async def test_listing_filters_and_pages(setup: Setup) -> None:
    for i in range(5):
        setup.run(f"job{i}", "print('hi')", host="a" if i % 2 else "b")
    await watch(setup.cfg(), once=True)
    client = await client_for(setup.cfg())
    try:
        everything = (await (await client.get("/api/v1/tasks")).json())["logs"]
        assert [r["task"] for r in everything] == [f"job{i}" for i in reversed(range(5))]  # newest first
        hosts = (await (await client.get("/api/v1/tasks?host=a")).json())["logs"]
        assert {r["task"] for r in hosts} == {"job1", "job3"}
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await (await client.get("/api/v1/tasks", params=params)).json()
            seen += [r["task"] for r in page["logs"]]
            if not (cursor := page["next_cursor"]):
                break
        assert seen == [r["task"] for r in everything]
        assert (await (await client.get("/api/v1/tasks?status=running")).json())["logs"] == []
        assert len((await (await client.get("/api/v1/tasks?since=1h")).json())["logs"]) == 5
        r = await client.get("/api/v1/tasks/job1/log")
        assert (await r.read()) == b"==> job1/a (finished, 3 bytes) <==\nhi\n"
    finally:
        await client.close()


@pytest.mark.parametrize("path,status,code", [
    ("/api/v1/tasks/..%2Fetc/hosts/h1/log", 400, "bad_id"),
    ("/api/v1/tasks/a%20b/hosts/h1", 400, "bad_id"),
    ("/api/v1/tasks/nope/hosts/h1/log", 404, "not_found"),
    ("/api/v1/tasks/nope/log", 404, "not_found"),
    ("/api/v1/tasks?status=sleeping", 400, "bad_request"),
    ("/api/v1/tasks?limit=0", 400, "bad_request"),
    ("/api/v1/tasks?since=yesterdayish", 400, "bad_request"),
    ("/api/v1/tasks?cursor=%%%", 400, "bad_request"),
    ("/api/v1/tasks/x/hosts/h1/log?stream=stdin", 400, "bad_request"),
    ("/api/v1/tasks/x/hosts/h1/log?follow=maybe", 400, "bad_request"),
    ("/api/v1/tasks/x/hosts/h1/log?start=-1", 400, "bad_request"),
    ("/api/v1/nothing", 404, "not_found"),
])
async def test_bad_requests_get_json_errors(setup: Setup, path: str, status: int, code: str) -> None:
    client = await client_for(setup.cfg())
    try:
        r = await client.get(path)
        body = await r.json()
        assert r.status == status and body["error"] == code and body["detail"] and "hint" in body
    finally:
        await client.close()


async def test_tokens_are_required_when_configured(setup: Setup) -> None:
    setup.run("sec", "print('secret')")
    token = secrets.token_urlsafe(24)
    client = await client_for(setup.cfg(LOGSHIP_API_TOKENS=token))
    try:
        r = await client.get("/api/v1/tasks/sec/hosts/h1/log")
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        r = await client.get("/api/v1/tasks/sec/hosts/h1/log", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
        assert r.status == 401
        r = await client.get("/api/v1/tasks/sec/hosts/h1/log", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 200 and await r.read() == b"secret\n"
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_refuses_to_listen_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    from shipper.errors import ConfigError

    with pytest.raises(ConfigError, match="api.tokens"):
        create_app(load_config(env={"LOGSHIP_API_LISTEN": "0.0.0.0:8080"}))
    create_app(load_config(env={"LOGSHIP_API_LISTEN": "0.0.0.0:8080", "LOGSHIP_API_TOKENS": "t" * 20}))


async def test_metrics_are_prometheus_text(setup: Setup) -> None:
    setup.run("m", "print('x' * 100)")
    await watch(setup.cfg(), once=True)
    client = await client_for(setup.cfg())
    try:
        await (await client.get("/api/v1/tasks/m/hosts/h1/log")).read()
        r = await client.get("/metrics")
        text = await r.text()
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "logship_api_bytes_out_total 101" in text
        assert "logship_watcher_segments_uploaded_total 1" in text and "logship_watcher_healthy 1" in text
    finally:
        await client.close()


async def test_store_down_the_spool_still_serves(setup: Setup) -> None:
    setup.env.update({"LOGSHIP_STORE_URL": "s3://nowhere/x", "LOGSHIP_STORE_ENDPOINT": "http://127.0.0.1:9",
                      "LOGSHIP_STORE_ACCESS_KEY": "k", "LOGSHIP_STORE_SECRET_KEY": "s"})
    data = setup.run("offline", BIG)
    client = await client_for(setup.cfg())
    try:
        r = await client.get("/api/v1/tasks/offline/hosts/h1/log")
        assert r.status == 200 and await r.read() == data
        r = await client.get("/api/v1/tasks/elsewhere/hosts/h1/log")  # not in the spool: the store must answer
        assert r.status == 503 and (await r.json())["error"] == "store_unavailable"
    finally:
        await client.close()


async def test_follow_from_an_offset_and_edge_cases(setup: Setup) -> None:
    gate = setup.tmp_path / "gate"
    script = (f"import os, time\nprint('one', flush=True)\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\nprint('two')\n")
    p = start_agent(setup.spool, "off", [sys.executable, "-c", script], env=setup.agent_env())
    setup.run("empty", "pass")
    client = await client_for(setup.cfg())
    try:
        # until "one\n" is in the spool (the log exists, empty, a moment before)
        while await (await client.get("/api/v1/tasks/off/hosts/h1/log")).read() != b"one\n":
            await asyncio.sleep(0.05)
        r = await client.get("/api/v1/tasks/off/hosts/h1/log?start=2&follow=true")
        assert await r.content.readexactly(2) == b"e\n"
        gate.touch()
        assert await asyncio.wait_for(r.read(), 30) == b"two\n"
        r = await client.get("/api/v1/tasks/empty/hosts/h1/log", headers={"Range": "bytes=-10"})
        assert r.status == 416 and r.headers["Content-Range"] == "bytes */0"
        r = await client.get("/api/v1/tasks/off/hosts/h1/log?stream=stdout&start=1")
        assert r.status == 400
        r = await client.get("/api/v1/tasks/off/hosts/h1/log?stream=stdout")
        assert "ETag" not in r.headers and await r.read() == b"one\ntwo\n"
    finally:
        stop_agent(p, setup.spool, "off")
        await client.close()


async def test_concurrent_downloads_of_a_compressed_log(setup: Setup) -> None:
    setup.env["LOGSHIP_SPOOL_SEGMENT_BYTES"] = "4MiB"  # several reads per segment, interleaved across requests
    data = setup.run("many", BIG.replace("60000", "200000"))
    await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0"), once=True)
    client = await client_for(setup.cfg())
    try:
        async def download() -> bytes:
            return await (await client.get("/api/v1/tasks/many/hosts/h1/log")).read()

        assert await asyncio.gather(*(download() for _ in range(6))) == [data] * 6
    finally:
        await client.close()


# --- Content-Encoding: zstd, and the reading underneath -----------------------------------------------

ZSTD = {"Accept-Encoding": "gzip, zstd"}


def unzstd(body: bytes) -> bytes:
    """Decode a zstd stream of several frames, as a client does (the zstd CLI too, when installed)."""
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).readall()
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout == out
    return out


async def test_zstd_encoding_sends_the_stored_frames(shipped: Shipped) -> None:
    client, data = shipped
    url = "/api/v1/tasks/big/hosts/h1/log"
    plain = await client.get(url)
    r = await client.get(url, headers=ZSTD, auto_decompress=False)
    body = await r.read()
    assert r.status == 200 and r.headers["Vary"] == plain.headers["Vary"] == "Accept-Encoding"
    assert r.headers["Content-Encoding"] == "zstd" and len(body) < len(data) / 2
    # stored frames as they are: their length is known; spool and uncompressed parts are compressed on the fly
    # (tests/test_encoding.py: which answers have a length)
    assert r.headers.get("Content-Length") in (None, str(len(body)))
    assert r.headers["ETag"].startswith('W/"') and r.headers["ETag"] != plain.headers["ETag"]
    assert unzstd(body) == data
    head = await client.head(url, headers=ZSTD, auto_decompress=False)
    assert head.headers.get("Content-Length") == r.headers.get("Content-Length")
    assert head.headers["ETag"] == r.headers["ETag"]
    # a Range is of the log's bytes: answered as they are, also for a client that accepts zstd
    r = await client.get(url, headers={**ZSTD, "Range": "bytes=70000-200000"}, auto_decompress=False)
    assert r.status == 206 and "Content-Encoding" not in r.headers and await r.read() == data[70000:200001]
    # the zstd answer's weak validator is no good for If-Range: the whole log comes back (in identity, as
    # every answer to a request with a Range)
    r = await client.get(url, headers={**ZSTD, "Range": "bytes=0-9", "If-Range": head.headers["ETag"]},
                         auto_decompress=False)
    assert r.status == 200 and "Content-Encoding" not in r.headers and await r.read() == data
    for refused in ("zstd;q=0", "br", "*", "", "identity"):
        r = await client.get(url, headers={"Accept-Encoding": refused}, auto_decompress=False)
        assert "Content-Encoding" not in r.headers and await r.read() == data, refused


async def test_zstd_encoding_of_a_log_partly_in_the_spool(setup: Setup) -> None:
    """Segments still in the spool go out as frames of raw blocks between the stored frames."""
    data = setup.run("mixed", BIG)
    await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="1d"), once=True)
    d = setup.spool / "mixed" / "h1"
    sealed = sorted(d.glob("*.log"))
    assert len(sealed) >= 6
    for p in sealed[1:-2]:  # the store's copies serve these; the first and the last two stay in the spool
        p.unlink()
        p.with_suffix(".idx").unlink()
    client = await client_for(setup.cfg())
    try:
        r = await client.get("/api/v1/tasks/mixed/hosts/h1/log", headers=ZSTD, auto_decompress=False)
        body = await r.read()
        assert r.headers["Content-Encoding"] == "zstd" and "Content-Length" not in r.headers  # spool parts compressed
        assert unzstd(body) == data and len(body) < len(data) / 2
        assert await (await client.get("/api/v1/tasks/mixed/hosts/h1/log")).read() == data
    finally:
        await client.close()


async def test_spool_segments_pruned_under_a_recent_view(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished log's view is reused for a moment, and its sealed spool parts are remembered: a segment
    pruned meanwhile is read from the store, with or without zstd encoding."""
    data = setup.run("pruned", BIG)
    await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="1d"), once=True)
    monkeypatch.setattr(source, "FINISHED_VIEW_TTL", 3600.0)
    client = await client_for(setup.cfg())
    try:
        url = "/api/v1/tasks/pruned/hosts/h1/log"
        assert await (await client.get(url)).read() == data  # the view and its spool parts, remembered
        for p in sorted((setup.spool / "pruned" / "h1").glob("*.log"))[:-1]:
            p.unlink()
            p.with_suffix(".idx").unlink()
        assert await (await client.get(url)).read() == data
        assert await (await client.get(url, headers={"Range": "bytes=1000-200000"})).read() == data[1000:200001]
        monkeypatch.setattr(source, "FINISHED_VIEW_TTL", 0.0)  # a new view: most of the log is in the store now
        r = await client.get(url, headers=ZSTD, auto_decompress=False)
        assert r.headers["Content-Encoding"] == "zstd" and unzstd(await r.read()) == data
    finally:
        await client.close()


async def test_running_log_is_zstd_encoded(setup: Setup) -> None:
    gate = setup.tmp_path / "gate"
    script = f"import os, time\nprint('hi', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
    p = start_agent(setup.spool, "live", [sys.executable, "-c", script], env=setup.agent_env())
    client = await client_for(setup.cfg())
    try:
        while (r := await client.get("/api/v1/tasks/live/hosts/h1/log", headers=ZSTD, auto_decompress=False)
               ).status != 200 or unzstd(await r.read()) != b"hi\n":
            await asyncio.sleep(0.05)
        assert r.headers["Content-Encoding"] == "zstd" and "Content-Length" not in r.headers
    finally:
        gate.touch()
        stop_agent(p, setup.spool, "live")
        await client.close()


async def test_downloads_broken_off_leave_the_api_well(setup: Setup) -> None:
    """Clients that go away mid-download (with the next segment requested early) cost nothing later."""
    setup.env["LOGSHIP_SPOOL_SEGMENT_BYTES"] = "256KiB"
    data = setup.run("cut", BIG.replace("60000", "100000"))
    await watch(setup.cfg(LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0"), once=True)
    client = await client_for(setup.cfg())
    try:
        for headers in ({}, ZSTD) * 5:
            r = await client.get("/api/v1/tasks/cut/hosts/h1/log", headers=headers, auto_decompress=False)
            await r.content.readexactly(50_000)
            r.close()  # gone, mid-segment
        r = await client.get("/api/v1/tasks/cut/hosts/h1/log")
        assert await r.read() == data
    finally:
        await client.close()


def _split(data: bytes, rnd: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rnd.choice((1, 7, 1000, 65536, 300_000))
        out.append(data[i:i + n])
        i += n
    return out


async def _agen(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


@pytest.mark.parametrize("kind", ["text", "one byte repeated", "text and a run"])
async def test_decompress_pieces_stay_small_and_exact(kind: str) -> None:
    rnd = random.Random(kind)
    text = b"".join(b"%d %s\n" % (i, bytes(rnd.choices(b"abcdefgh ", k=rnd.randrange(80)))) for i in range(60000))
    raw = {"text": text, "one byte repeated": b"y" * (64 << 20),
           "text and a run": text + b"\0" * (32 << 20) + text}[kind]
    comp = zstandard.ZstdCompressor(level=1).compress(raw)
    for a, b in ((0, len(raw)), (12345, len(raw) - 999), (len(raw) - 1, len(raw))):
        got = [p async for p in zstdio.decompress(_agen(_split(comp, rnd)), a, b)]
        assert b"".join(got) == raw[a:b]
        assert max(map(len, got)) <= zstdio.ZSTD_OUT  # a 2,000-byte frame of 64 MiB comes out in small pieces
    with pytest.raises(IntegrityError, match="ended"):
        [p async for p in zstdio.decompress(_agen([comp[:len(comp) // 2]]), 0, len(raw))]


@pytest.mark.parametrize("n", [0, 1, zstdio.RAW_BLOCK - 1, zstdio.RAW_BLOCK, zstdio.RAW_BLOCK + 1, 1_000_003])
async def test_raw_frame_decodes_to_its_bytes(n: int) -> None:
    rnd = random.Random(n)
    raw = rnd.randbytes(n)
    frame = b"".join([p async for p in zstdio.raw_frame(_agen(_split(raw, rnd)), n)])
    assert len(frame) == zstdio.raw_frame_size(n)
    assert unzstd(frame + zstandard.ZstdCompressor().compress(b"next")) == raw + b"next"
    with pytest.raises(StoreError):
        [p async for p in zstdio.raw_frame(_agen([raw, b"x"]), n)]


async def test_if_none_match_with_the_current_etag_is_304(shipped: tuple[Client, bytes]) -> None:
    """A client that holds the log as it is gets 304 and no body; another run, or an older size, gets it all."""
    client, data = shipped
    r = await client.get("/api/v1/tasks/big/hosts/h1/log")
    etag = r.headers["ETag"]
    assert await r.read() == data
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"If-None-Match": header})
        assert r.status == 304, header
        assert await r.read() == b"" and r.headers["ETag"] == etag
    r = await client.head("/api/v1/tasks/big/hosts/h1/log", headers={"If-None-Match": etag})
    assert r.status == 304
    stale = etag.replace(f"-{len(data)}", f"-{len(data) - 1}")
    r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={"If-None-Match": stale})
    assert r.status == 200 and await r.read() == data
    r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers=ZSTD, auto_decompress=False)
    zetag = r.headers["ETag"]
    await r.read()
    r = await client.get("/api/v1/tasks/big/hosts/h1/log", headers={**ZSTD, "If-None-Match": zetag},
                         auto_decompress=False)
    assert r.status == 304 and r.headers["ETag"] == zetag
