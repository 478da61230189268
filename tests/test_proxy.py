"""A central API and the node API a manifest names: only allowed nodes, never the user's token, and nothing
a node answers is served unless it agrees with the manifest.

The node here is hostile: an aiohttp server that records every request and answers as each test says.
The log is real: an agent's output, checkpointed by `logship watch --once` into a file store, whose
manifest (status running) then names the node, as a watcher host can write any manifest.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.app import create_app
from api.keys import METRICS
from shipper.config import load_config
from shipper.format import archive, names, reader
from shipper.store import open_store
from shipper.watcher import watch

from .support import env_for, spooled, start_agent, stop_agent, watch_once

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

USER = "user-token-" + secrets.token_hex(12)  # the user's token: must never reach a node
NODE = "proxy-token-" + secrets.token_hex(12)  # the central API's own token for nodes
TASK, HOST = "live", "h1"
Answer = Callable[[web.Request, "Node"], Awaitable[web.StreamResponse]]


@dataclass
class Node:
    """A node API that records what it is sent and answers with `answer` (honest unless a test says)."""

    run_id: str
    held: bytes  # what the manifest's checkpoint holds
    newer: bytes = b"newer than any checkpoint\n"
    seen: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)
    answer: Answer | None = None
    url: str = ""

    @property
    def body(self) -> bytes:
        return self.held + self.newer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, list(request.headers.items())))
        return await (self.answer or honest)(request, self)


async def honest(request: web.Request, node: Node) -> web.StreamResponse:
    """What a logship node API would answer, for the routes a central API forwards."""
    body, etag = node.body, f'"{node.run_id}-{len(node.body)}"'
    if request.path.endswith("/tail"):
        start = int(request.query.get("from", "0"))
        msgs = [{"offset": start, "ts": 1, "stream": "stdout", "data": body[start:].decode()},
                {"event": "end", "status": "finished", "exit_code": 0, "signal": None, "size": len(body)}]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            for m in msgs:
                await ws.send_str(json.dumps(m))
            await ws.close()
            return ws
        ids = [len(body), len(body)]
        return web.Response(text="".join(f"id: {i}\ndata: {json.dumps(m)}\n\n" for i, m in zip(ids, msgs, strict=True)),
                            content_type="text/event-stream")
    if request.path.endswith("/index"):
        return web.json_response({"size": len(body), "status": "running", "line": 0,
                                  "columns": ["offset", "length", "lines", "stream", "flags", "ts"],
                                  "chunks": [[0, len(body), 2, "stdout", 0, 1]], "more": False})
    if request.path.endswith("/log"):
        rng = request.headers.get("Range")
        if rng:
            a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            return web.Response(status=206, body=body[a:b + 1], headers={
                "ETag": etag, "Content-Range": f"bytes {a}-{b}/*", "Content-Type": "text/plain"})
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": "text/plain"})
    return web.json_response({"task": TASK, "host": HOST, "run_id": node.run_id, "status": "running",
                              "live_size": len(body)})


@dataclass
class Setup:
    tmp: Path
    env: dict[str, str]
    node: Node
    session: aiohttp.ClientSession

    def set_api_url(self, url: str) -> None:
        """Rewrite the manifest's api_url, as any host with the store's credentials can."""
        path = self.tmp / "archive" / names.manifest_key(TASK, HOST)
        doc = json.loads(path.read_bytes())  # as JSON: a url that is not a string must reach the reader
        doc["api_url"] = url
        path.write_bytes(json.dumps(doc, indent=1).encode())

    async def central(self, **env: str) -> TestServer:
        cfg = load_config(env={**self.env, "LOGSHIP_API_TOKENS": USER, "LOGSHIP_API_PROXY_ALLOW": "127.0.0.1",
                               "LOGSHIP_API_PROXY_TOKEN": NODE, **env})
        server = TestServer(create_app(cfg, serve_spool=False), host="127.0.0.1")
        await server.start_server()
        return server

    async def get(self, server: TestServer, route: str = "/log", **kw: Any) -> tuple[int, bytes, Any]:
        headers = {"Authorization": f"Bearer {USER}", **kw.pop("headers", {})}
        async with self.session.get(f"{base(server)}/api/v1/tasks/{TASK}/hosts/{HOST}{route}", headers=headers,
                                    **kw) as r:
            return r.status, await r.read(), r.headers


def base(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    env = {"LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive"}
    spool = tmp_path / "spool"
    agent = start_agent(spool, TASK, [sys.executable, "-c", "import time; print('checkpointed', flush=True); "
                                      "time.sleep(60)"], env=env_for(spool, env), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (spool / TASK / HOST).is_dir() or not spooled(spool, TASK).endswith(b"\n"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        res = watch_once(env_for(spool, env, LOGSHIP_WATCH_API_URL="http://127.0.0.1:9"))
        assert res.returncode == 0, res.stderr
    finally:
        stop_agent(agent, spool, TASK)
    store = open_store(load_config(env=env).store)
    doc = await archive.load_manifest(store, TASK, HOST)
    assert doc.status == "running" and await reader.read_all(store, TASK, HOST) == b"checkpointed\n"
    await store.close()
    node = Node(doc.run_id, b"checkpointed\n")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", node.handle)
    node_server = TestServer(app, host="127.0.0.1")
    await node_server.start_server()
    node.url = base(node_server)
    async with aiohttp.ClientSession() as session:
        st = Setup(tmp_path, env, node, session)
        st.set_api_url(node.url)
        try:
            yield st
        finally:
            await node_server.close()


# What a client has decoded of an answer so far (a cut one too: no end of frame or member needed).
DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda raw: raw,
    "zstd": lambda raw: zstandard.ZstdDecompressor().decompressobj().decompress(raw),
    "gzip": lambda raw: zlib.decompressobj(31).decompress(raw),
}


def leaked(node: Node) -> list[str]:
    """Everything the node was sent that holds the user's token or a cookie."""
    out = []
    for method, path_qs, headers in node.seen:
        if USER in path_qs or "token=" in path_qs:
            out.append(f"{method} {path_qs}")
        out += [f"{k}: {v}" for k, v in headers if USER in v or k.lower() in ("cookie", "proxy-authorization")]
    return out


async def test_the_node_gets_the_proxy_token_never_the_users(setup: Setup) -> None:
    central = await setup.central()
    node = setup.node
    try:
        cookie = {"Cookie": f"session={USER}", "Proxy-Authorization": f"Bearer {USER}",
                  "Connection": "keep-alive, Range", "TE": "trailers", "X-Forwarded-For": "10.9.9.9"}
        status, body, headers = await setup.get(central, params={"token": USER}, headers=cookie)
        assert status == 200 and body == node.body  # the newest bytes: the node's answer agrees with the manifest
        assert headers["Content-Type"].startswith("text/plain") and headers["Content-Encoding"] == "gzip"
        assert headers["ETag"] == f'W/"{node.run_id}-{len(body)}-gzip"'  # aiohttp asks for gzip: encoded here
        status, body, _ = await setup.get(central, headers={"Range": "bytes=2-20"})
        assert status == 206 and body == node.body[2:21]
        status, body, _ = await setup.get(central, "/index", params={"token": USER, "start": "0"})
        assert status == 200 and json.loads(body)["size"] == len(node.body)
        status, body, _ = await setup.get(central, "", params={"token": USER})
        assert status == 200 and json.loads(body)["live_size"] == len(node.body)
        # the tail: a browser's WebSocket carries the token in the URL; SSE with the header
        url = f"{base(central)}/api/v1/tasks/{TASK}/hosts/{HOST}/tail?from=3&token={USER}"
        async with setup.session.ws_connect(url) as ws:
            msgs = [json.loads(m.data) async for m in ws]
        assert msgs[0]["offset"] == 3 and msgs[0]["data"].encode() == node.body[3:] and msgs[-1]["event"] == "end"
        status, body, _ = await setup.get(central, "/tail", params={"from": "3"},
                                          headers={"Accept": "text/event-stream", "Cookie": f"s={USER}"})
        assert status == 200 and f"id: {len(node.body)}".encode() in body
        assert len(node.seen) == 6
        assert leaked(node) == []
        for _, path_qs, sent in node.seen:
            names_sent = {k.lower() for k, _ in sent}
            assert dict(sent)["Authorization"] == f"Bearer {NODE}", path_qs
            assert not names_sent & {"te", "x-forwarded-for", "cookie", "proxy-authorization"}, path_qs
            assert "range" not in dict(sent).get("Connection", "").lower(), path_qs
        # `Connection: keep-alive, Range` made Range hop-by-hop on the first request: not forwarded
        assert "Range" not in dict(node.seen[0][2]) and dict(node.seen[1][2])["Range"] == "bytes=2-20"
        assert central.app[METRICS].proxy_forwarded == 6 and central.app[METRICS].proxy_rejected == 0
    finally:
        await central.close()


async def test_the_index_scan_back_is_forwarded_whole(setup: Setup) -> None:
    """`last` and `stream` reach the node (without them its answer would be the records from the log's start)."""
    central = await setup.central()
    try:
        status, body, _ = await setup.get(central, "/index", params={"end": "5", "last": "3", "stream": "stdout"})
        assert status == 200 and json.loads(body)["chunks"][0][0] == 0, body
        assert [qs for _, qs, _ in setup.node.seen] == [
            f"/api/v1/tasks/{TASK}/hosts/{HOST}/index?end=5&last=3&stream=stdout"]
    finally:
        await central.close()


@pytest.mark.parametrize("doc", [
    {"from": 40, "chunks": [[0, 5, 1, "stdout", 0, 1]]},  # the scan says it stopped after the `end` asked
    {"from": 0, "chunks": [[0, 5, 1, "stdout", 0, 1], [5, 9, 1, "stdout", 0, 1]]},  # a record at `end`
    {"to": -1, "chunks": []},
])
async def test_an_index_scan_at_odds_with_its_request_is_not_served(setup: Setup, doc: dict[str, Any]) -> None:
    """A node's scan back from `end` that reaches past it is refused; the central API answers from checkpoints."""
    async def answer(request: web.Request, node: Node) -> web.StreamResponse:
        return web.json_response({"size": len(node.body), "status": "running", "line": 0, "more": False, **doc})

    setup.node.answer = answer
    central = await setup.central()
    try:
        status, body, _ = await setup.get(central, "/index", params={"end": "5", "last": "3", "stream": "stdout"})
        got = json.loads(body)
        assert status == 200 and len(setup.node.seen) == 1, body
        assert got.get("from", 0) <= 5 and all(row[0] < 5 for row in got["chunks"]), got
        assert central.app[METRICS].proxy_rejected == 1
    finally:
        await central.close()


@pytest.mark.parametrize("url", [
    "http://localhost:{port}",  # resolves to the node, but is not a name allowed
    "http://127.1:{port}", "http://2130706433:{port}", "http://0x7f000001:{port}",  # 127.0.0.1 to a resolver
    "http://user:pw@127.0.0.1:{port}", "http://127.0.0.1:{port}/api?x=1", "ftp://127.0.0.1:{port}",
    "http://127.0.0.1:{port}\n", 42, "http://[::ffff:127.0.0.2]:{port}",
])
async def test_a_url_not_allowed_is_never_contacted_and_checkpoints_are_served(setup: Setup, url: Any) -> None:
    node = setup.node
    setup.set_api_url(url.format(port=node.url.rsplit(":", 1)[1]) if isinstance(url, str) else url)
    central = await setup.central()
    try:
        status, body, _ = await setup.get(central)
        assert status == 200 and body == node.held
        # a URL that is not even a string is dropped when the manifest is read (shipper/format/manifest.py): no refusal
        assert node.seen == [] and central.app[METRICS].proxy_refused == isinstance(url, str)
    finally:
        await central.close()


async def test_no_allow_list_means_no_forwarding(setup: Setup) -> None:
    central = await setup.central(LOGSHIP_API_PROXY_ALLOW="")
    try:
        status, body, _ = await setup.get(central)
        assert status == 200 and body == setup.node.held and setup.node.seen == []
        async with setup.session.ws_connect(f"{base(central)}/api/v1/tasks/{TASK}/hosts/{HOST}/tail?from=0",
                                            headers={"Authorization": f"Bearer {USER}"}) as ws:
            first = json.loads((await ws.receive()).data)
        assert first["data"].encode() == setup.node.held and setup.node.seen == []
    finally:
        await central.close()


def lying(status: int = 200, headers: dict[str, str] | None = None, body: bytes | None = None,
          etag: str | None = None) -> Answer:
    async def answer(request: web.Request, node: Node) -> web.StreamResponse:
        h = {"ETag": etag or f'"{node.run_id}-{len(node.body)}"', "Content-Type": "text/plain", **(headers or {})}
        return web.Response(status=status, body=node.body if body is None else body, headers=h)

    return answer


@pytest.mark.parametrize("answer,route,request_headers", [
    (lying(etag='"0123456789abcdef0123456789abcdef-40"'), "/log", {}),  # another run's bytes
    (lying(etag='"{run}-5"', body=b"forge"), "/log", {}),  # fewer bytes than the manifest holds
    (lying(etag='W/"{run}-40"'), "/log", {}),
    (lying(status=500), "/log", {}),
    (lying(status=302, headers={"Location": "http://127.0.0.1:9/"}), "/log", {}),
    (lying(status=206, headers={"Content-Range": "bytes 3-7/*"}, body=b"forge"), "/log", {"Range": "bytes=0-4"}),
    (lying(status=206, headers={"Content-Range": "bytes 0-4/*"}, body=b"forge"), "/log", {}),
    (lying(headers={"Content-Encoding": "gzip"}), "/log", {}),
    (lying(headers={"X-Log-Size": "1"}), "/log", {}),
    (lying(status=200, body=b'{"size": 3, "chunks": []}', headers={"Content-Type": "application/json"}),
     "/index", {}),
    (lying(body=b'{"task": "live", "host": "h1", "run_id": "x", "live_size": 99, "status": "running"}',
           headers={"Content-Type": "application/json"}), "", {}),
])
async def test_an_answer_at_odds_with_the_manifest_is_not_served(setup: Setup, answer: Answer, route: str,
                                                                 request_headers: dict[str, str]) -> None:
    node = setup.node

    async def fill_run(request: web.Request, n: Node) -> web.StreamResponse:
        resp = await answer(request, n)
        if "ETag" in resp.headers:
            resp.headers["ETag"] = resp.headers["ETag"].replace("{run}", n.run_id)
        return resp

    node.answer = fill_run
    central = await setup.central()
    try:
        status, body, headers = await setup.get(central, route, headers=request_headers)
        assert status in (200, 206) and b"forge" not in body and len(node.seen) == 1
        if route == "/log":
            assert node.held.startswith(body) or body == node.held[0:5]  # the checkpoint, not the node's bytes
        assert central.app[METRICS].proxy_rejected == 1
        await setup.get(central, route, headers=request_headers)  # that node is left alone for this log a while
        assert len(node.seen) == 1
        async with setup.session.get(f"{base(central)}/metrics", headers={"Authorization": f"Bearer {USER}"}) as r:
            assert "logship_api_proxy_rejected_total 1" in await r.text()
    finally:
        await central.close()


@pytest.mark.parametrize("coding", ["identity", "zstd", "gzip"])
async def test_a_body_longer_than_its_head_ends_as_a_failed_transfer(setup: Setup, coding: str) -> None:
    """The node's bytes are held to its head before they are encoded: a node that sends more than the size it
    announced (and the manifest allows) is cut, whatever the client's coding, and nothing forged is decoded."""
    async def overlong(request: web.Request, node: Node) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"ETag": f'"{node.run_id}-{len(node.body)}"'})
        await resp.prepare(request)
        await resp.write(node.body)
        await asyncio.sleep(0.2)  # the honest bytes go out (encoded) before the lie comes
        await resp.write(b"forged bytes after the announced size\n" * 1000)
        await resp.write_eof()
        return resp

    setup.node.answer = overlong
    central = await setup.central()
    try:
        raw = b""
        async with setup.session.get(f"{base(central)}/api/v1/tasks/{TASK}/hosts/{HOST}/log",
                                     headers={"Authorization": f"Bearer {USER}", "Accept-Encoding": coding},
                                     auto_decompress=False) as r:
            assert r.status == 200 and r.headers.get("Content-Encoding", "identity") == coding
            with pytest.raises(aiohttp.ClientPayloadError):
                while piece := await r.content.readany():
                    raw += piece
        got = DECODERS[coding](raw)
        assert setup.node.body.startswith(got) and b"forged" not in got
        assert central.app[METRICS].proxy_rejected == 1
        status, body, _ = await setup.get(central)  # then: the checkpoints
        assert status == 200 and body == setup.node.held
    finally:
        await central.close()


async def test_a_node_html_answer_is_served_as_text(setup: Setup) -> None:
    html = b"<script>alert(localStorage['logship.token'])</script>\n"
    setup.node.newer = html
    setup.node.answer = lying(headers={"Content-Type": "text/html"})
    central = await setup.central()
    try:
        status, body, headers = await setup.get(central)
        assert status == 200 and body.endswith(html)
        assert headers["Content-Type"] == "text/plain; charset=utf-8" and headers["X-Content-Type-Options"] == "nosniff"
    finally:
        await central.close()


@pytest.mark.parametrize("msgs", [
    [{"offset": 5, "ts": 1, "stream": "stdout", "data": "ckpointed\n"}],  # not where it was asked (from=3)
    [{"offset": 3, "ts": 1, "stream": "stdout", "data": "ck"}, {"offset": 4, "ts": 1, "stream": "stdout",
                                                                  "data": "forged\n"}],  # overlaps
    [{"offset": 3, "ts": 1, "stream": "stdout", "data": "ck"}, {"offset": 9, "ts": 1, "stream": "stdout",
                                                                  "data": "forged\n"}],  # a gap
    [{"offset": 3, "ts": 1, "stream": "stdout", "data": "ck"}, {"event": "end", "size": 5, "status": "finished"}],
    [{"offset": 3, "ts": 1, "stream": "stdout", "data": "ck"}, {"event": "forged"}],
])
async def test_tail_messages_out_of_place_end_the_websocket(setup: Setup, msgs: list[dict[str, Any]]) -> None:
    async def tail(request: web.Request, node: Node) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for m in msgs:
            await ws.send_str(json.dumps(m))
        await ws.receive()
        return ws

    setup.node.answer = tail
    central = await setup.central()
    try:
        url = f"{base(central)}/api/v1/tasks/{TASK}/hosts/{HOST}/tail?from=3&token={USER}"
        async with setup.session.ws_connect(url) as ws:
            got = [json.loads(m.data) async for m in ws]
        assert ws.close_code == aiohttp.WSCloseCode.BAD_GATEWAY
        assert all(m != msgs[-1] for m in got) and got == msgs[:len(got)]
        assert central.app[METRICS].proxy_rejected == 1
        async with setup.session.ws_connect(url) as ws:  # reconnected: from the checkpoints
            first = json.loads((await ws.receive()).data)
        assert first == {**first, "offset": 3, "data": "ckpointed\n"} and len(setup.node.seen) == 1
    finally:
        await central.close()


async def test_sse_with_a_gap_is_cut(setup: Setup) -> None:
    async def sse(request: web.Request, node: Node) -> web.StreamResponse:
        good = {"offset": 3, "ts": 1, "stream": "stdout", "data": "ck"}
        bad = {"offset": 9, "ts": 1, "stream": "stdout", "data": "forged\n"}
        return web.Response(text=f"retry: 1000\n\nid: 5\ndata: {json.dumps(good)}\n\n"
                                 f"id: 16\ndata: {json.dumps(bad)}\n\n",
                            content_type="text/event-stream")

    setup.node.answer = sse
    central = await setup.central()
    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            await setup.get(central, "/tail", params={"from": "3"}, headers={"Accept": "text/event-stream"})
        assert central.app[METRICS].proxy_rejected == 1
    finally:
        await central.close()


# --- a real node API: the proxied log in each coding --------------------------------------------------------

GATED = ("import os, sys, time\n"
         "def lines(a, b):\n"
         "    for i in range(a, b): sys.stdout.write('line %06d %s\\n' % (i, 'xyz' * (i % 9)))\n"
         "    sys.stdout.flush()\n"
         "lines(0, 3000)\n"
         "while not os.path.exists({gate1!r}): time.sleep(0.01)\n"
         "lines(3000, 6000)\n"
         "while not os.path.exists({gate2!r}): time.sleep(0.01)\n"
         "print('bye')\n")


def line(i: int) -> bytes:
    return b"line %06d %s\n" % (i, b"xyz" * (i % 9))


def unzstd(body: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).readall()


async def until(done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_real_nodes_log_is_encoded_by_the_central_api(tmp_path: Path) -> None:
    """A central API forwarding a running log to the real node API beside its spool answers zstd and gzip of
    the node's newest bytes, each decoding to exactly its identity answer, with a weak ETag per coding; a
    followed log as frames a reader decodes as they come; a Range in identity."""
    spool = tmp_path / "spool"
    env = {"LOGSHIP_SPOOL_DIR": str(spool), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive"}
    node = TestServer(create_app(load_config(env={**env, "LOGSHIP_API_TOKENS": NODE})), host="127.0.0.1")
    await node.start_server()
    central = TestServer(create_app(load_config(env={**env, "LOGSHIP_API_TOKENS": USER, "LOGSHIP_API_PROXY_TOKEN": NODE,
                                                     "LOGSHIP_API_PROXY_ALLOW": "127.0.0.1"}), serve_spool=False),
                         host="127.0.0.1")
    await central.start_server()
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    agent = start_agent(spool, TASK, [sys.executable, "-c", GATED.format(gate1=str(gate1), gate2=str(gate2))],
                        host=HOST, env=env_for(spool, env), stdout=subprocess.DEVNULL)
    url = f"{base(central)}/api/v1/tasks/{TASK}/hosts/{HOST}/log"
    now: Callable[[], bytes] = lambda: spooled(spool, TASK, HOST)  # noqa: E731
    try:
        await until(lambda: (spool / TASK / HOST).is_dir() and now().endswith(line(2999)))
        await watch(load_config(env={**env, "LOGSHIP_WATCH_API_URL": base(node)}), once=True)  # names the node
        gate1.touch()  # then bytes only the node's spool has
        await until(lambda: now().endswith(line(5999)))
        plain = now()
        async with aiohttp.ClientSession() as http:
            async def get(**headers: str) -> tuple[int, bytes, Any]:
                async with http.get(url, headers={"Authorization": f"Bearer {USER}", **headers},
                                    auto_decompress=False) as r:
                    return r.status, await r.read(), r.headers

            status, body, h = await get(**{"Accept-Encoding": "identity"})
            assert status == 200 and body == plain and "Content-Encoding" not in h  # the node's newest bytes
            tag = h["ETag"]
            for coding, decode in (("zstd", unzstd), ("gzip", lambda b: zlib.decompress(b, 31))):
                status, body, h = await get(**{"Accept-Encoding": coding})
                assert status == 200 and h["Content-Encoding"] == coding and h["Vary"] == "Accept-Encoding"
                assert decode(body) == plain and len(body) < len(plain) / 2
                assert h["ETag"] == f'W/{tag[:-1]}-{coding}"' and "Content-Length" not in h
                status, body, _ = await get(**{"Accept-Encoding": coding, "If-None-Match": h["ETag"]})
                assert status == 304 and body == b""
            status, body, h = await get(**{"Accept-Encoding": "zstd, gzip", "Range": "bytes=1000-1999"})
            assert status == 206 and body == plain[1000:2000] and "Content-Encoding" not in h  # Range: identity

            gz = zlib.decompressobj(31)
            async with http.get(url + "?follow=true", auto_decompress=False,
                                headers={"Authorization": f"Bearer {USER}", "Accept-Encoding": "gzip"}) as r:
                got = b""
                while not got.endswith(line(5999)):
                    got += gz.decompress(await r.content.readany())
                assert got == plain
            zs, raw, got = zstandard.ZstdDecompressor().decompressobj(), b"", b""
            async with http.get(url + "?follow=true", auto_decompress=False,
                                headers={"Authorization": f"Bearer {USER}", "Accept-Encoding": "zstd"}) as r:
                assert r.status == 200 and r.headers["Content-Encoding"] == "zstd"
                while not got.endswith(line(5999)):
                    piece = await r.content.readany()
                    assert piece, "the followed answer ended while the task runs"
                    raw, got = raw + piece, got + zs.decompress(piece)
                assert got == plain  # decoded as it came, while the task still runs
                gate2.touch()
                rest = await asyncio.wait_for(r.read(), 30)  # the task ends: so does the node's answer, and ours
            assert agent.wait(30) == 0
            assert got + zs.decompress(rest) == now() and zs.eof and now().endswith(b"bye\n")  # a whole frame
            assert unzstd(raw + rest) == now()
        assert central.app[METRICS].proxy_forwarded >= 8 and central.app[METRICS].proxy_rejected == 0
    finally:
        gate1.touch()
        gate2.touch()
        stop_agent(agent, spool, TASK, HOST)
        await central.close()
        await node.close()


# --- ?token= only where no header can go ------------------------------------------------------------


async def test_a_token_in_the_url_is_taken_only_by_the_tail_and_downloads(setup: Setup) -> None:
    central = await setup.central(LOGSHIP_API_PROXY_ALLOW="")
    b = base(central)
    try:
        for path in (f"/api/v1/tasks/{TASK}/hosts/{HOST}/log", f"/api/v1/tasks/{TASK}/log"):
            async with setup.session.get(f"{b}{path}?token={USER}") as r:
                assert r.status == 200, path
            async with setup.session.head(f"{b}{path}?token={USER}") as r:
                assert r.status == 200, path
        async with setup.session.ws_connect(f"{b}/api/v1/tasks/{TASK}/hosts/{HOST}/tail?token={USER}") as ws:
            assert "data" in json.loads((await ws.receive()).data)
        for path in ("/api/v1/tasks", f"/api/v1/tasks/{TASK}/hosts/{HOST}", f"/api/v1/tasks/{TASK}/hosts/{HOST}/index",
                     "/metrics", "/api/v1/search?q=x"):
            sep = "&" if "?" in path else "?"
            async with setup.session.get(f"{b}{path}{sep}token={USER}") as r:
                doc = await r.json()
                assert r.status == 401 and "Authorization" in doc["detail"] and "?token=" in doc["hint"], path
            if "search" not in path:
                async with setup.session.get(f"{b}{path}", headers={"Authorization": f"Bearer {USER}"}) as r:
                    assert r.status == 200, path
        async with setup.session.post(f"{b}/api/v1/query?token={USER}", json={"sql": "SELECT 1"}) as r:
            assert r.status == 401
    finally:
        await central.close()
