"""Content-Encoding of the log routes (api/encoding.py): zstd and gzip whichever part a log is read from (the
spool, the store as zstd or uncompressed, both), q-values, a validator per representation, and Range and
resume in identity — with curl, a real client, against a real `logship serve`."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp.test_utils import TestClient, TestServer

from api import encoding
from api.app import create_app
from shipper.config import load_config
from shipper.watcher import watch

from .support import Api, Client, env_for, run_agent, spooled, start_agent, stop_agent

pytestmark = [pytest.mark.timeout(180)]  # asyncio_mode = "auto", one loop per session (pyproject)

BIG = "import sys\nfor i in range(40000): sys.stdout.write('line %06d %s\\n' % (i, 'abcdefghij' * (i % 7)))\n"
GATED = ("import os, sys\nfor i in range(20000): sys.stdout.write('line %06d %s\\n' % (i, 'xyz' * (i % 9)))\n"
         "sys.stdout.flush()\nwhile not os.path.exists({gate!r}): __import__('time').sleep(0.01)\nprint('bye')\n")
URL = "/api/v1/tasks/{task}/hosts/h1/log"
ZSTD, GZIP, IDENT = {"Accept-Encoding": "zstd"}, {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "identity"}


def unzstd(body: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).readall()


def gunzip(body: bytes) -> bytes:
    return zlib.decompress(body, 16 + zlib.MAX_WBITS)


DECODE = {"zstd": unzstd, "gzip": gunzip}


# --- negotiation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "want"), [
    (None, "identity"), ("", "identity"), ("identity", "identity"), ("*", "identity"), ("br, deflate", "identity"),
    ("gzip", "gzip"), ("x-gzip", "gzip"), ("GZIP;Q=0.5", "gzip"), ("zstd", "zstd"),
    ("gzip, deflate", "gzip"), ("deflate, gzip, br, zstd", "zstd"),  # aiohttp's and curl --compressed's
    ("gzip, deflate, br, zstd", "zstd"),  # Chromium's: alike, so the server's preference
    ("gzip;q=1, zstd;q=0.5", "gzip"), ("gzip;q=0.5, zstd;q=0.9", "zstd"),
    ("zstd;q=0", "identity"), ("zstd;q=0, gzip", "gzip"), ("gzip;q=0, zstd;q=0", "identity"),
    ("gzip;q=0, zstd;q=0, identity;q=0", "identity"),  # nothing acceptable: identity rather than a 406
    ("gzip;q=0.5, identity", "identity"), ("gzip, identity;q=0.5", "gzip"), ("gzip;q=0.5, *;q=0.8", "identity"),
    ("gzip;q=abc", "identity"), ("gzip;q=2", "identity"), ("gzip;q=nan", "identity"), ("zstd;q=-1, gzip", "gzip"),
])
def test_choose(header: str | None, want: str) -> None:
    assert encoding.choose(header) == want


# --- in-process API over a spool and a file store --------------------------------------------------------------


class Logs:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.spool = tmp_path / "spool"
        self.env = {"LOGSHIP_SPOOL_DIR": str(self.spool), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive",
                    "LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", **env}

    def run(self, task: str, script: str = BIG, host: str = "h1") -> bytes:
        res = run_agent(self.spool, task, [sys.executable, "-c", script], env=env_for(self.spool, self.env), host=host)
        assert res.returncode == 0
        return res.stdout

    async def ship(self, keep: str = "0") -> None:
        await watch(load_config(env={**self.env, "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": keep}), once=True)

    async def client(self) -> Client:
        client = TestClient(TestServer(create_app(load_config(env=self.env))))
        await client.start_server()
        return client


async def get(client: Client, url: str, headers: dict[str, str]) -> tuple[aiohttp.ClientResponse, bytes]:
    r = await client.get(url, headers=headers, auto_decompress=False)
    return r, await r.read()


@pytest.fixture(params=["spool", "store-zstd", "store-none", "mixed"])
async def finished(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Client, bytes, str]]:
    """A finished multi-segment log read from the spool, the store (zstd or uncompressed), or both."""
    logs = Logs(tmp_path, **({"LOGSHIP_STORE_COMPRESSION": "none"} if request.param == "store-none" else {}))
    data = logs.run("big")
    if request.param.startswith("store"):
        await logs.ship()
    elif request.param == "mixed":
        await logs.ship(keep="1d")
        sealed = sorted((logs.spool / "big" / "h1").glob("*.log"))
        for p in sealed[1:-2] + sealed[-1:]:  # spool, store, spool, store
            p.unlink()
            p.with_suffix(".idx").unlink()
    client = await logs.client()
    yield client, data, request.param
    await client.close()


@pytest.mark.parametrize("coding", ["zstd", "gzip"])
async def test_a_finished_log_in_each_coding(finished: tuple[Client, bytes, str], coding: str) -> None:
    client, data, where = finished
    url = URL.format(task="big")
    plain = await client.get(url, headers=IDENT)
    r, body = await get(client, url, {"Accept-Encoding": coding})
    assert r.status == 200 and r.headers["Content-Encoding"] == coding and r.headers["Vary"] == "Accept-Encoding"
    assert DECODE[coding](body) == data and len(body) < len(data) / 2
    assert r.headers["ETag"] == f'W/"{plain.headers["ETag"].strip(chr(34))}-{coding}"'
    # only the stored frames passed through as they are have a length known before the first byte
    passthrough = coding == "zstd" and where == "store-zstd"
    assert ("Content-Length" in r.headers) == passthrough
    if passthrough:
        assert int(r.headers["Content-Length"]) == len(body)
    head = await client.head(url, headers={"Accept-Encoding": coding}, auto_decompress=False)
    assert head.headers["ETag"] == r.headers["ETag"] and head.headers["Content-Encoding"] == coding
    # aiohttp's own decoding (gzip) and a whole-log download without Accept-Encoding: the log's bytes
    assert await (await client.get(url)).read() == data


async def test_range_resume_and_validators_per_representation(tmp_path: Path) -> None:
    logs = Logs(tmp_path)
    data = logs.run("big")
    await logs.ship(keep="1d")
    for p in sorted((logs.spool / "big" / "h1").glob("*.log"))[::2]:  # every other part from the store
        p.unlink()
        p.with_suffix(".idx").unlink()
    client = await logs.client()
    url = URL.format(task="big")
    try:
        strong = (await client.head(url, headers=IDENT)).headers["ETag"]
        tags = {c: (await client.head(url, headers={"Accept-Encoding": c}, auto_decompress=False)).headers["ETag"]
                for c in ("zstd", "gzip")}
        assert strong.startswith('"') and all(t.startswith('W/"') for t in tags.values())
        assert len({strong, *tags.values()}) == 3
        for accept in ("zstd", "gzip", "gzip, zstd", "identity"):
            # a Range is of the log's bytes, in identity, with the strong validator
            r, body = await get(client, url, {"Accept-Encoding": accept, "Range": "bytes=70000-200000"})
            assert r.status == 206 and "Content-Encoding" not in r.headers and body == data[70000:200001]
            assert r.headers["ETag"] == strong and r.headers["Content-Range"] == f"bytes 70000-200000/{len(data)}"
            r, body = await get(client, url, {"Accept-Encoding": accept, "Range": "bytes=10-", "If-Range": strong})
            assert r.status == 206 and body == data[10:]
            # an encoded answer's weak validator never resumes: If-Range fails, the whole log (in identity)
            for tag in tags.values():
                r, body = await get(client, url, {"Accept-Encoding": accept, "Range": "bytes=10-", "If-Range": tag})
                assert r.status == 200 and "Content-Encoding" not in r.headers and body == data
            # ?start= offsets are the log's bytes too
            r, body = await get(client, url + "?start=1000", {"Accept-Encoding": accept})
            assert r.status == 200 and "Content-Encoding" not in r.headers and body == data[1000:]
        # If-None-Match: 304 for the representation its tag names, 200 for another
        for coding, tag in [("identity", strong), *tags.items()]:
            for other, other_tag in [("identity", strong), *tags.items()]:
                r, body = await get(client, url, {"Accept-Encoding": other, "If-None-Match": tag})
                if other == coding:
                    assert r.status == 304 and r.headers["ETag"] == other_tag and body == b""
                else:
                    assert r.status == 200 and r.headers["ETag"] == other_tag, (coding, other)
        r, _ = await get(client, url, {"Accept-Encoding": "gzip", "If-None-Match": f'"x", {tags["gzip"]}'})
        assert r.status == 304
    finally:
        await client.close()


async def test_q0_and_stream(tmp_path: Path) -> None:
    logs = Logs(tmp_path)
    data = logs.run("big")
    client = await logs.client()
    url = URL.format(task="big")
    try:
        for accept in ("gzip;q=0, zstd;q=0", "zstd;q=0", "identity", "*", "br", "gzip;q=0.3, identity;q=0.5"):
            r, body = await get(client, url, {"Accept-Encoding": accept})
            assert "Content-Encoding" not in r.headers and body == data
            assert r.headers["Content-Length"] == str(len(data))
        for accept, coding in (("zstd;q=0, gzip", "gzip"), ("gzip;q=0.1, zstd;q=0.2", "zstd")):
            r, body = await get(client, url, {"Accept-Encoding": accept})
            assert r.headers["Content-Encoding"] == coding and DECODE[coding](body) == data
        plain = await (await client.get(url + "?stream=stdout", headers=IDENT)).read()
        for coding in ("zstd", "gzip"):
            r, body = await get(client, url + "?stream=stdout", {"Accept-Encoding": coding})
            assert r.headers["Content-Encoding"] == coding and DECODE[coding](body) == plain == data
            assert "ETag" not in r.headers
    finally:
        await client.close()


async def test_all_hosts_log(tmp_path: Path) -> None:
    logs = Logs(tmp_path)
    logs.run("multi", host="a")
    logs.run("multi", "print('only a line')", host="b")
    await logs.ship()  # host a from the store, host b ...
    logs.run("multi", "print('again')\nprint('x' * 70000)", host="c")  # ... and host c from the spool
    client = await logs.client()
    try:
        plain = await (await client.get("/api/v1/tasks/multi/log", headers=IDENT)).read()
        assert plain.count(b"==> multi/") == 3
        for coding in ("zstd", "gzip"):
            r, body = await get(client, "/api/v1/tasks/multi/log", {"Accept-Encoding": coding})
            assert r.headers["Content-Encoding"] == coding and r.headers["Vary"] == "Accept-Encoding"
            assert DECODE[coding](body) == plain and len(body) < len(plain) / 2
    finally:
        await client.close()


async def test_a_followed_log_is_decoded_as_it_grows(tmp_path: Path) -> None:
    """Each piece of a followed log is flushed: the reader decodes what the task wrote before it ends."""
    logs = Logs(tmp_path)
    gate = tmp_path / "gate"
    p = start_agent(logs.spool, "live", [sys.executable, "-c", GATED.format(gate=str(gate))],
                    env=env_for(logs.spool, logs.env))
    client = await logs.client()
    try:
        while (await client.get(URL.format(task="live"), headers=IDENT)).status != 200:
            await asyncio.sleep(0.05)
        for coding in ("zstd", "gzip"):
            dec = zstandard.ZstdDecompressor().decompressobj() if coding == "zstd" else zlib.decompressobj(31)
            r = await client.get(URL.format(task="live") + "?follow=true", headers={"Accept-Encoding": coding},
                                 auto_decompress=False)
            assert r.status == 200 and r.headers["Content-Encoding"] == coding
            got = b""
            while not got.endswith(b"line 019999 " + b"xyz" * (19999 % 9) + b"\n"):
                got += dec.decompress(await r.content.readany())
            assert got == spooled(logs.spool, "live")  # all of it so far, while the task still runs
            if coding == "gzip":
                gate.touch()
                rest = await r.read()
                got += dec.decompress(rest) + dec.flush()
                assert dec.eof and got.endswith(b"bye\n")  # the gzip member ends with the task
            else:
                r.close()
        assert p.wait(30) == 0
        r, body = await get(client, URL.format(task="live"), ZSTD)
        assert unzstd(body) == spooled(logs.spool, "live")
    finally:
        gate.touch()
        stop_agent(p, logs.spool, "live")
        await client.close()


# --- curl against `logship serve` -----------------------------------------------------------------------------


def curl(*args: str) -> tuple[bytes, str]:
    """The body curl wrote (decoded when --compressed) and the headers it received."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "body"
        res = subprocess.run(["curl", "-sS", "-D", "-", "-o", str(out), *args], capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr[-500:]
        return out.read_bytes(), res.stdout.decode("latin-1").lower()


async def test_curl_compressed_of_a_running_log_and_resume(tmp_path: Path) -> None:
    api = Api(tmp_path, LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    api.start()
    gate = tmp_path / "gate"
    p = start_agent(api.spool, "run", [sys.executable, "-c", GATED.format(gate=str(gate))], env=api.env)
    try:
        url = f"{api.url}{URL.format(task='run')}"
        deadline = time.monotonic() + 30
        while not (api.spool / "run" / "h1").is_dir() or not spooled(api.spool, "run").endswith(b"line 019999 xyz\n"):
            assert time.monotonic() < deadline  # until line 19999 (the last before the gate) is written
            time.sleep(0.05)
        want = spooled(api.spool, "run")
        body, head = curl("--compressed", url)  # curl sends "deflate, gzip, br, zstd"
        assert body == want and "content-encoding: zstd" in head and "content-length" not in head
        body, head = curl("--compressed", "-H", "Accept-Encoding: gzip", url)
        assert body == want and "content-encoding: gzip" in head
        raw, head = curl("-H", "Accept-Encoding: gzip", url)
        assert gunzip(raw) == want and len(raw) < len(want) / 3
        # a download broken off and resumed: the Range asks for decoded bytes, answered in identity
        out = tmp_path / "resumed.log"
        out.write_bytes(want[:123_457])
        subprocess.run(["curl", "-sS", "--compressed", "-C", "-", "-o", str(out), url], check=True, timeout=60)
        assert out.read_bytes() == want
        gate.touch()
        assert p.wait(30) == 0
        final = spooled(api.spool, "run")
        out.write_bytes(final[:5000])
        subprocess.run(["curl", "-sS", "--compressed", "-H", "Accept-Encoding: gzip", "-C", "-", "-o", str(out), url],
                       check=True, timeout=60)
        assert out.read_bytes() == final
        # logship download (identity) of the same log, and its resume
        res = api.cli("download", "run", "-o", str(tmp_path / "dl.log"))
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "dl.log").read_bytes() == final
    finally:
        gate.touch()
        stop_agent(p, api.spool, "run")
        api.stop()


@pytest.mark.parametrize("coding", ["zstd", "gzip"])
async def test_a_damaged_object_cuts_an_encoded_answer(tmp_path: Path, coding: str) -> None:
    """Compressed on the fly or not, a block that fails its check is never encoded and sent: before the first
    byte a JSON error, after it a cut transfer whose decodable bytes are a prefix of the log."""
    logs = Logs(tmp_path, LOGSHIP_STORE_COMPRESSION="none")  # zstd: compressed on the fly from the store
    data = logs.run("big")
    await logs.ship()
    objects = sorted((tmp_path / "archive").rglob("*.log"))
    assert len(objects) > 6
    client = await logs.client()
    try:
        for victim, cut in ((objects[4], True), (objects[0], False)):
            saved = victim.read_bytes()
            victim.write_bytes(saved[:1000] + bytes([saved[1000] ^ 1]) + saved[1001:])
            r = await client.get(URL.format(task="big"), headers={"Accept-Encoding": coding}, auto_decompress=False)
            if not cut:
                assert r.status == 502 and (await r.json())["error"] == "integrity_error"
            else:
                assert r.status == 200
                body = b""
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for piece in r.content.iter_any():
                        body += piece
                dec = zstandard.ZstdDecompressor().decompressobj() if coding == "zstd" else zlib.decompressobj(31)
                got = dec.decompress(body)
                assert data.startswith(got) and len(got) < len(data)
            victim.write_bytes(saved)
    finally:
        await client.close()
