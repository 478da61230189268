"""Bad input never gets a 5xx: each finding of issue 11 as a regression test, then the class — every route and
every parameter of the OpenAPI document, fed hostile values over real HTTP, answers below 500 (a JSON
`{"error", "detail", "hint"}` wherever the API answers itself)."""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api import params
from api.app import create_app
from api.openapi import DOCUMENT
from shipper.config import load_config
from shipper.watcher import watch

from .support import Client, env_for, run_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Each line waits for the one before to be in the spool's order: two pipes give no order of their own.
SCRIPT = ("import sys, time\nprint('hello', flush=True)\ntime.sleep(0.3)\nsys.stderr.write('oops\\n')\n"
          "sys.stderr.flush()\ntime.sleep(0.3)\nprint('world', flush=True)\n")
LOG = b"hello\noops\nworld\n"
IDS = {"task": "done", "host": "h1", "id": "7", "name": "app.js"}  # path parameters naming real things
METHODS = ("get", "head", "post")
SSE = {"Accept": "text/event-stream"}


class Api:
    def __init__(self, client: Client, tmp: Path) -> None:
        self.client = client
        self.tmp = tmp

    async def get(self, path: str, **kw: Any) -> tuple[int, dict[str, Any] | None, aiohttp.ClientResponse, bytes]:
        """Status, the JSON error body if there is one, the response and its body."""
        async with self.client.get(path, **kw) as r:
            body = await r.read()
            doc = json.loads(body) if r.content_type == "application/json" and r.status >= 400 else None
            return r.status, doc, r, body


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """An API over a file store holding a finished log (`done`), an ibex log and a log whose index will be
    damaged (`broken`, uncompressed so its index can be edited in place); the spool is pruned."""
    tmp = tmp_path_factory.mktemp("bad-input")
    env = {"LOGSHIP_SPOOL_DIR": str(tmp / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp}/archive",
           "LOGSHIP_STORE_COMPRESSION": "none", "LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS": "0"}
    for task in ("done", "ibex-7", "broken"):
        res = run_agent(tmp / "spool", task, [sys.executable, "-c", SCRIPT], env=env_for(tmp / "spool", env))
        assert res.returncode == 0, res.stderr
    await watch(load_config(env=env), once=True)
    client = TestClient(TestServer(create_app(load_config(env=env))))
    await client.start_server()
    try:
        yield Api(client, tmp)
    finally:
        await client.close()


def _is_error(status: int, doc: dict[str, Any] | None, want: int) -> bool:
    return status == want and doc is not None and bool(doc["detail"]) and bool(doc["hint"])


# --- the findings -----------------------------------------------------------------------------------


async def test_json_body_of_100000_brackets_is_a_400(api: Api) -> None:
    async with api.client.post("/api/v1/query", data="[" * 100_000,
                               headers={"Content-Type": "application/json"}) as r:
        doc = await r.json()
        assert r.status == 400 and doc["error"] == "bad_request" and doc["hint"], doc


async def test_read_json_body_bounds_size_and_depth() -> None:
    """The helper api/query.py is to call: size cap (413, also for chunked bodies), depth (400), not JSON (400)."""
    async def echo(request: web.Request) -> web.Response:
        cap = int(request.query.get("cap", "1000"))
        return web.json_response({"got": await params.read_json_body(request, max_bytes=cap)})

    from api.errors import error_middleware

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/", echo)
    client = TestClient(TestServer(app))
    await client.start_server()

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100):
            yield data[i:i + 100]

    try:
        for body, status, code in [(b'{"sql": "SELECT 1"}', 200, None), (b"[" * 100_000, 413, "too_large"),
                                   (b"[" * 999, 400, "bad_request"), (b"\xff\xfe", 400, "bad_request"),
                                   (b"", 400, "bad_request"), (b"[" * 2000, 413, "too_large")]:
            async with client.post("/", data=body) as r:
                doc = await r.json()
                assert r.status == status and doc.get("error") == code, (body[:20], doc)
        async with client.post("/", data=chunked(b'"' + b"x" * 5000 + b'"')) as r:  # no Content-Length
            assert r.status == 413 and (await r.json())["error"] == "too_large"
        async with client.post("/?cap=1000000", data=b"[" * 100_000 + b"]" * 100_000) as r:  # under the cap
            doc = await r.json()
            assert r.status == 400 and "nested too deeply" in doc["detail"] and doc["hint"], doc
    finally:
        await client.close()


@pytest.mark.parametrize("since", ["9" * 5000, "9" * 400 + "d", "1e999", "99999999999999999999", "2026-02-30",
                                   "nan", "-1d", "٣d", ""])
async def test_since_that_overflows_is_a_400(api: Api, since: str) -> None:
    for route in ("/api/v1/tasks", "/api/v1/search?q=x"):
        status, doc, _, _ = await api.get(route, params={"since": since})
        assert _is_error(status, doc, 400), (route, since, status, doc)
        assert doc is not None and len(doc["detail"]) < 300  # a 5,000-digit value is not echoed whole


async def test_since_forms_still_work(api: Api) -> None:
    for since in ("7d", "1.5h", "90", "2w", "2026-01-01", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00+02:00",
                  "1500-01-01", "1700000000000000000", "9999999999999999999"):
        status, _, _, body = await api.get("/api/v1/tasks", params={"since": since})
        assert status == 200, since
        want = {"9999999999999999999"}  # the end of time: nothing started since
        assert (len(json.loads(body)["logs"]) == 0) == (since in want), since


async def test_a_cursor_holding_1e999_is_a_400(api: Api) -> None:
    evil = base64.urlsafe_b64encode(b'[1e999, "a", "b"]').decode()
    for cursor in (evil, "%%%", "1~done", "1e999~done~h1", "9" * 5000 + "~a~b", "1~../x~h1"):
        status, doc, _, _ = await api.get("/api/v1/tasks", params={"cursor": cursor})
        assert _is_error(status, doc, 400), (cursor, doc)
    # a well-formed position is a cursor: the page after it
    status, _, _, body = await api.get("/api/v1/tasks", params={"cursor": "0~a~a"})
    assert status == 200 and json.loads(body)["logs"] == []


@pytest.mark.parametrize("header,status,body", [
    ("bytes=" + "9" * 5000 + "-", 416, None),
    ("bytes=0-" + "9" * 5000, 206, LOG),
    ("bytes=-" + "9" * 5000, 206, LOG),
    ("bytes=9223372036854775808-", 416, None),
    ("bytes=1-18446744073709551616", 206, LOG[1:]),
    ("bytes=" + "9" * 30 + "-" + "9" * 29, 416, None),
])
async def test_range_values_beyond_2_63(api: Api, header: str, status: int, body: bytes | None) -> None:
    got, doc, r, data = await api.get("/api/v1/tasks/done/hosts/h1/log", headers={"Range": header})
    assert got == status, (header, doc)
    if body is not None:
        assert data == body
    else:
        assert doc is not None and doc["error"] == "bad_range" and r.headers["Content-Range"] == f"bytes */{len(LOG)}"


@pytest.mark.parametrize("route,name", [("/api/v1/tasks/done/hosts/h1/log", "start"),
                                        ("/api/v1/tasks/done/hosts/h1/index", "start"),
                                        ("/api/v1/tasks/done/hosts/h1/index", "end"),
                                        ("/api/v1/tasks/done/hosts/h1/index", "last"),
                                        ("/api/v1/tasks/done/hosts/h1/tail", "from"),
                                        ("/api/v1/tasks/done/hosts/h1/tail", "lines"),
                                        ("/api/v1/tasks", "limit"), ("/api/v1/search?q=x", "limit")])
async def test_numbers_have_bounds(api: Api, route: str, name: str) -> None:
    for value in ("9223372036854775808", "9" * 5000, "-1", "1e999", "NaN", "1.5", "٣", "²", " 1", "0x10"):
        status, doc, _, _ = await api.get(route, params={name: value}, headers=SSE)
        assert _is_error(status, doc, 400), (route, name, value, status, doc)


@pytest.mark.parametrize("query", ["last=0", "last=20001", "stream=unknown&last=1", "stream=unknown",
                                   "stream=&last=1"])
async def test_the_index_scans_refuse_what_they_cannot_do(api: Api, query: str) -> None:
    """`last` is 1 to 20,000 records; `stream` is stdout or stderr."""
    status, doc, _, _ = await api.get(f"/api/v1/tasks/done/hosts/h1/index?{query}")
    assert _is_error(status, doc, 400), (query, status, doc)


@pytest.mark.parametrize("last_id", ["²", "٣", "-1", "1e9", "9" * 20, "9" * 5000])
async def test_last_event_id_that_is_not_an_offset_is_a_400(api: Api, last_id: str) -> None:
    # '²'.isdigit() is True but int('²') fails: that was a 500
    status, doc, _, _ = await api.get("/api/v1/tasks/done/hosts/h1/tail", headers={**SSE, "Last-Event-ID": last_id})
    assert _is_error(status, doc, 400), (last_id, status, doc)
    status, doc, _, _ = await api.get("/api/v1/tasks/done/hosts/h1/tail",
                                   headers={**SSE, "Last-Event-ID": "9999999999999999999"})
    assert status == 416 and doc is not None and doc["error"] == "bad_range"  # a well-formed offset past the end


async def test_websocket_from_into_a_damaged_index_ends_with_an_error_event(api: Api) -> None:
    """An index record whose length points past its segment: the follower is told (an `error` event) and the
    socket closes normally — not 1011 (internal error) — and no byte outside the log is sent as data."""
    idx = api.tmp / "archive" / "logs" / "broken" / "h1" / "00000001.idx"
    raw = bytearray(idx.read_bytes())
    struct.pack_into("<I", raw, 24, 0xFFFFFFFF)  # record 0's length (docs/format.md: seq, ts, offset, length…)
    idx.write_bytes(bytes(raw))
    # `lines=2` reads the index before the upgrade: the damage is a 502 JSON answer naming the object.
    r = await api.client.get("/api/v1/tasks/broken/hosts/h1/tail?lines=2", headers={"Accept": "text/event-stream"})
    assert r.status == 502 and "00000001.idx" in (await r.json())["detail"]
    for start in ("from=0", "from=3"):
        async with api.client.ws_connect(f"/api/v1/tasks/broken/hosts/h1/tail?{start}") as ws:
            msgs = [m async for m in ws]
            assert ws.close_code != aiohttp.WSCloseCode.INTERNAL_ERROR, (start, ws.close_code)
            texts = [m.json() for m in msgs if m.type == aiohttp.WSMsgType.TEXT]
            if start.startswith("from"):
                assert texts and texts[-1]["event"] == "error" and texts[-1]["detail"], (start, texts)
            data = "".join(t.get("data", "") for t in texts)
            assert data.encode() in LOG, (start, data)


# --- the class: every parameter of every route, hostile values ----------------------------------------

HOSTILE = ["9" * 5000, "9" * 400 + "d", "1e999", "-1", "NaN", "inf", "18446744073709551616", "9223372036854775808",
           "٣", "²", "\u2603" * 10, "\x00", "a\x00b", "", "x" * 6000, "[" * 2000, "0x10", " 1", "1.5", "%",
           "../../etc/passwd", "true\r\nX-Evil: 1", "{\"$ne\": 1}", "' OR 1=1 --"]


PREFIXES = {"Range": ["", "bytes=", "bytes=0-", "bytes=-"]}  # so a hostile number reaches the Range parser
BENIGN = {"q": "x"}  # required parameters other than the one under test get a good value


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in DOCUMENT["paths"].items() for method, op in item.items()
            if method in METHODS]


def _url(path: str, override: tuple[str, str] | None = None) -> str:
    for name, value in IDS.items():
        if override is not None and override[0] == name:
            value = override[1]
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


async def _call(api: Api, method: str, url: str, query: dict[str, str], headers: dict[str, str],
                body: Any = None) -> int:
    kw: dict[str, Any] = {"params": query, "headers": headers, "allow_redirects": False}
    if body is not None:
        kw["data"] = body
    async with api.client.request(method.upper(), url, **kw) as r:
        if r.status >= 400 and r.content_type == "application/json" and method != "head":
            doc = await r.json()
            assert set(doc) >= {"error", "detail", "hint"}, (method, url, query, headers, doc)
        else:
            await r.content.read(1 << 16)  # enough: a stream is not followed to its end here
        return r.status


async def test_no_parameter_of_any_route_gives_a_5xx(api: Api) -> None:
    seen: list[tuple[str, str, str]] = []
    failures: list[str] = []
    body = '{"sql": "SELECT 1"}'
    for path, method, op in _operations():
        base_headers = dict(SSE) if path.endswith("/tail") else {}
        required = {p["name"]: BENIGN[p["name"]] for p in op.get("parameters", [])
                    if p.get("required") and p["in"] == "query"}
        for p in op.get("parameters", []):
            for value in (pre + v for pre in PREFIXES.get(p["name"], [""]) for v in HOSTILE):
                query = {k: v for k, v in required.items() if k != p["name"]}
                headers = dict(base_headers)
                url = _url(path)
                if p["in"] == "query":
                    query[p["name"]] = value
                elif p["in"] == "header":
                    if any(c in value for c in "\x00\r\n") or len(value) > 8000:
                        continue  # not sendable as a header (the client refuses it; servers' limits are ~8 KiB)
                    headers[p["name"]] = value
                else:
                    url = _url(path, (p["name"], value))
                status = await _call(api, method, url, query, headers, body if method == "post" else None)
                seen.append((method, path, p["name"]))
                if status >= 500:
                    failures.append(f"{method.upper()} {path} {p['in']} {p['name']}={value[:40]!r}: {status}")
    assert not failures, "\n".join(failures)
    names = {(m, path, n) for path, m, op in _operations() for n in (p["name"] for p in op.get("parameters", []))}
    assert {s for s in seen} == names  # every documented parameter was tried


@pytest.mark.parametrize("body", [
    "[" * 100_000, "{" * 50_000, '{"sql": ' * 10_000, '{"sql": "' + "9" * 5000 + '"}', '{"sql": 1e999}',
    '{"sql": NaN}', '{"sql": null}', '{"sql": ""}', '{"sql": "   "}', '{"sql": "\\u0000"}',
    '{"sql": "SELECT 1", "x": 1}',
    '{"sql": "' + "x" * 900_000 + '"}', "x" * (2 << 20), "\udcff", '"just a string"', "[]", "",
])
async def test_hostile_query_bodies_are_4xx(api: Api, body: str) -> None:
    data = body.encode("utf-8", "surrogateescape")
    async with api.client.post("/api/v1/query", data=data, headers={"Content-Type": "application/json"}) as r:
        doc = await r.json()
        assert 400 <= r.status < 500 and doc["error"] and doc["detail"], (body[:40], r.status, doc)
