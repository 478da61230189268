"""The live tail (WebSocket and SSE) against real agents and watchers: every byte once, resume, many followers."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api import sinks
from api.app import create_app
from api.keys import HUB, METRICS, SOURCE
from shipper.commands import s3local
from shipper.config import Config, load_config
from shipper.format import names
from shipper.watcher import Watcher

from .support import env_for, run_agent, spooled, start_agent, start_watcher, stop_agent

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]  # a hang guard, not a speed

Msg = dict[str, Any]
SSE = {"Accept": "text/event-stream"}


def lines_script(n: int, gap: float, width: int = 0, exit_code: int = 0, stderr_every: int = 0,
                 gate: tuple[int, Path] | None = None) -> str:
    """A task printing n numbered lines (every `stderr_every`-th to stderr), one each `gap` seconds; with
    `gate` (i, path), line i waits until the file `path` exists."""
    at, path = gate or (-1, Path())
    return (f"import os, sys, time\nfor i in range({n}):\n"
            f"    while i == {at} and not os.path.exists({str(path)!r}): time.sleep(0.01)\n"
            f"    f = sys.stderr if {stderr_every} and i % {stderr_every or 1} == 0 else sys.stdout\n"
            f"    f.write('line %05d %s\\n' % (i, 'x' * ({width} + i % 50))); f.flush(); time.sleep({gap})\n"
            f"sys.exit({exit_code})\n")


def expected(n: int, width: int = 0) -> bytes:
    return b"".join(b"line %05d %s\n" % (i, b"x" * (width + i % 50)) for i in range(n))


class Env:
    def __init__(self, tmp_path: Path, **extra: str) -> None:
        self.spool = tmp_path / "spool"
        self.env = {"LOGSHIP_SPOOL_DIR": str(self.spool), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive",
                    "LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB", **extra}

    def cfg(self, **extra: str) -> Config:
        return load_config(env={**self.env, **extra})

    def agent_env(self) -> dict[str, str]:
        return env_for(self.spool, self.env)

    def start(self, task: str, script: str) -> subprocess.Popen[bytes]:
        proc = start_agent(self.spool, task, [sys.executable, "-c", script], env=self.agent_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (self.spool / task / "h1" / names.RUN_FILE).exists():  # the log exists once run.json does
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        return proc


async def serve(cfg: Config, serve_spool: bool = True) -> TestServer:
    server = TestServer(create_app(cfg, serve_spool=serve_spool), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


def url(server: TestServer, task: str, query: str = "") -> str:
    return str(server.make_url(f"/api/v1/tasks/{task}/hosts/h1/tail")) + (f"?{query}" if query else "")


async def ws_follow(session: aiohttp.ClientSession, u: str, until: Callable[[list[Msg]], bool] | None = None,
                    headers: dict[str, str] | None = None, msgs: list[Msg] | None = None) -> list[Msg]:
    """The messages of a WebSocket tail (into `msgs`), until it closes or `until` says stop (then we close it)."""
    msgs = [] if msgs is None else msgs
    async with session.ws_connect(u, headers=headers) as ws:
        async for m in ws:
            assert m.type == aiohttp.WSMsgType.TEXT
            msgs.append(json.loads(m.data))
            if until is not None and until(msgs):
                break
    return msgs


async def sse_follow(session: aiohttp.ClientSession, u: str, until: Callable[[list[Msg]], bool] | None = None,
                     headers: dict[str, str] | None = None, slow: asyncio.Event | None = None,
                     msgs: list[Msg] | None = None, stall_after: int | None = None) -> list[Msg]:
    """The messages of an SSE tail (into `msgs`), each with its `id` as `_id`; while `slow` is set, 1 KiB
    every 20 ms, and after `stall_after` bytes nothing at all (until `slow` is cleared)."""
    msgs = [] if msgs is None else msgs
    async with session.get(u, headers={**SSE, **(headers or {})}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        got = 0
        while True:
            while slow is not None and slow.is_set() and stall_after is not None and got >= stall_after:
                await asyncio.sleep(0.02)
            pace = slow is not None and slow.is_set()
            piece = await (r.content.read(1024) if pace else r.content.readany())
            if not piece:
                return msgs
            got += len(piece)
            if pace:
                await asyncio.sleep(0.02)
            buf += piece
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line)
                if "data" in fields:
                    msg = json.loads(fields["data"])
                    msg["_id"] = int(fields["id"]) if "id" in fields else None
                    msgs.append(msg)
                    if until is not None and until(msgs):
                        return msgs


def received(msgs: list[Msg]) -> int:
    return sum(len(m["data"]) for m in msgs if "data" in m)


def stitch(msgs: list[Msg], start: int) -> tuple[bytes, int]:
    """The data of the messages, checked to be contiguous from `start` (skips advance); (bytes, next offset)."""
    pos, out = start, []
    for m in msgs:
        if "data" in m:
            assert m["offset"] == pos, (m["offset"], pos)
            assert m["stream"] in ("stdout", "stderr", "unknown") and m["ts"] > 1e18
            out.append(m["data"].encode())
            pos += len(out[-1])
        elif m.get("event") == "skipped":
            assert m["from"] == pos and m["to"] > pos and m["bytes"] == m["to"] - m["from"]
            pos = m["to"]
        if m.get("_id") is not None:
            assert m["_id"] == pos  # SSE ids are the offset after the event
    return b"".join(out), pos


def ended(msgs: list[Msg]) -> bool:
    return bool(msgs) and msgs[-1].get("event") == "end"


# --- live ---------------------------------------------------------------------------------------


async def test_live_ws_and_sse_get_every_byte_then_the_end(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path)
    n = 120
    proc = env.start("live", lines_script(n, 0.02, exit_code=3, stderr_every=7))
    server = await serve(env.cfg())
    try:
        first_seen: list[float] = []

        def note(msgs: list[Msg]) -> bool:
            if len(msgs) == 1:
                first_seen.append(time.monotonic())
            return False

        ws, sse, beyond = await asyncio.gather(ws_follow(session, url(server, "live", "from=0"), note),
                                               sse_follow(session, url(server, "live", "from=0"), note),
                                               ws_follow(session, url(server, "live", "from=99999")))
        assert proc.wait(10) == 3
        data = spooled(env.spool, "live")
        assert sorted(data.splitlines(keepends=True)) == sorted(expected(n).splitlines(keepends=True))
        for msgs in (ws, sse):
            got, end = stitch(msgs, 0)
            assert got == data and end == len(data)
            assert msgs[-1] == {**msgs[-1], "event": "end", "status": "finished", "exit_code": 3, "size": len(data)}
            assert {m["stream"] for m in msgs if "data" in m} == {"stdout", "stderr"}
            assert all(int(m["data"][5:10]) % 7 == 0 for m in msgs if m.get("stream") == "stderr")
        assert sse[-1]["_id"] == len(data)
        # past the end of a running log is allowed (the bytes may come); the log ended shorter: an error
        assert [m.get("event") for m in beyond] == ["error"] and beyond[0]["error"] == "bad_range"
        assert len(first_seen) == 2  # both saw output while the task ran (it runs ~2.4 s; we connect at once)
        metrics = server.app[METRICS]
        assert metrics.followers == 0 and metrics.tail_messages == 2 * sum(1 for m in ws if "data" in m)
        assert not server.app[HUB]._feeds  # the last follower gone, the poller stopped
    finally:
        await server.close()
        stop_agent(proc, env.spool, "live")


async def test_lines_from_and_bad_params(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path)
    for task, script in (("nl", lines_script(300, 0)), ("nonl", "print('a\\nb\\n\\nc\\nd', end='')")):
        assert run_agent(env.spool, task, [sys.executable, "-c", script], env=env.agent_env()).returncode == 0
    data = spooled(env.spool, "nl")
    server = await serve(env.cfg())
    try:
        for n, want in ((5, b"".join(data.splitlines(True)[-5:])), (0, b""), (1000, data)):
            msgs = await ws_follow(session, url(server, "nl", f"lines={n}"))
            assert stitch(msgs, len(data) - len(want))[0] == want and ended(msgs)
        last100 = b"".join(data.splitlines(True)[-100:])
        msgs = await sse_follow(session, url(server, "nl"))  # the default: the last 100 lines
        assert stitch(msgs, len(data) - len(last100))[0] == last100
        for n, want in ((1, b"d"), (2, b"c\nd"), (3, b"\nc\nd"), (9, b"a\nb\n\nc\nd")):
            msgs = await sse_follow(session, url(server, "nonl", f"lines={n}"))
            assert stitch(msgs, 8 - len(want))[0] == want, n
        msgs = await ws_follow(session, url(server, "nl", "from=1234"))  # mid-chunk: the first piece starts there
        assert msgs[0]["offset"] == 1234 and stitch(msgs, 1234)[0] == data[1234:]
        msgs = await sse_follow(session, url(server, "nl", "from=0"), headers={"Last-Event-ID": str(len(data) - 7)})
        assert stitch(msgs, len(data) - 7)[0] == data[-7:]
        msgs = await ws_follow(session, url(server, "nl", f"from={len(data)}"))
        assert len(msgs) == 1 and ended(msgs)

        async def error(u: str, status: int, code: str, headers: dict[str, str] = SSE) -> None:
            r = await session.get(u, headers=headers)
            body = await r.json()
            assert r.status == status and body["error"] == code and body["detail"] and "hint" in body, (u, body)

        await error(url(server, "nl", f"from={len(data) + 1}"), 416, "bad_range")
        for q in ("from=-1", "from=x", "lines=100001", "lines=1.5", "from=1&lines=2"):
            await error(url(server, "nl", q), 400, "bad_request")
        await error(url(server, "nl"), 400, "bad_request", {**SSE, "Last-Event-ID": "abc"})
        await error(url(server, "nope"), 404, "not_found")
        await error(str(server.make_url("/api/v1/tasks/bad%20id/hosts/h1/tail")), 400, "bad_id")
        r = await session.get(url(server, "nl"))
        body = await r.json()
        assert r.status == 406 and body["error"] == "not_acceptable" and "text/event-stream" in body["hint"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(url(server, "nl", f"from={len(data) + 1}"))
        assert exc.value.status == 416
    finally:
        await server.close()


async def test_tokens_are_required(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path)
    run_agent(env.spool, "sec", [sys.executable, "-c", "print('secret')"], env=env.agent_env())
    token = secrets.token_urlsafe(24)
    server = await serve(env.cfg(LOGSHIP_API_TOKENS=token))
    try:
        r = await session.get(url(server, "sec"), headers=SSE)
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(url(server, "sec"))
        assert exc.value.status == 401
        msgs = await sse_follow(session, url(server, "sec"), headers={"Authorization": f"Bearer {token}"})
        assert stitch(msgs, 0)[0] == b"secret\n"
        msgs = await ws_follow(session, url(server, "sec", f"token={token}"))  # browsers cannot set headers
        assert stitch(msgs, 0)[0] == b"secret\n" and ended(msgs)
    finally:
        await server.close()


# --- resume: the spool moves to the store under the reader --------------------------------------


async def resume(session: aiohttp.ClientSession, server: TestServer, kind: str, stops: list[int],
                 before_reconnect: Callable[[int], Any]) -> bytes:
    """Follow from 0, disconnecting after each of `stops` bytes and reconnecting with the last offset."""
    pos, parts = 0, []
    for stop in [*stops, None]:
        def until(msgs: list[Msg], stop: int | None = stop, pos: int = pos) -> bool:
            return stop is not None and pos + received(msgs) >= stop

        if kind == "ws":
            msgs = await ws_follow(session, url(server, "resume", f"from={pos}"), until)
        else:  # Last-Event-ID overrides from
            msgs = await sse_follow(session, url(server, "resume", "from=0"), until,
                                    headers={"Last-Event-ID": str(pos)} if pos else None)
        got, pos = stitch(msgs, pos)
        parts.append(got)
        if stop is None:
            assert ended(msgs)
        else:
            await before_reconnect(pos)
    return b"".join(parts)


async def test_resume_while_segments_seal_and_move_to_the_store(tmp_path: Path, local_s3: s3local.LocalS3,
                                                                session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0", LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.2",
              LOGSHIP_STORE_URL=f"s3://{local_s3.bucket}/t-{secrets.token_hex(4)}/",
              LOGSHIP_STORE_ENDPOINT=local_s3.endpoint, LOGSHIP_STORE_ACCESS_KEY=local_s3.access_key,
              LOGSHIP_STORE_SECRET_KEY=local_s3.secret_key)
    n = 2500  # ~250 KB, four 64 KiB segments, in ~5 s
    watcher = start_watcher(env.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = env.start("resume", lines_script(n, 0.002, width=50))
    server = await serve(env.cfg())

    async def in_store(pos: int) -> None:
        """Reconnect only once the segment holding `pos` has been sealed, uploaded and pruned from the spool."""
        deadline = time.monotonic() + 30
        while True:
            view = await server.app[SOURCE].view("resume", "h1")
            # none yet when the follower has read all there is: the byte at `pos` is still to be written
            part = next((p for p in view.parts if p.end > pos), None)
            if part is not None and part.kind in ("store", "frames"):  # sealed: whole, or as its deltas
                return
            assert time.monotonic() < deadline, f"the segment holding {pos} did not move to the store"
            await asyncio.sleep(0.05)

    async def at_once(pos: int) -> None:
        await asyncio.sleep(0.01)

    try:
        # the WebSocket resumes each time from the store, SSE at once from the spool's open segment
        ws, sse = await asyncio.gather(resume(session, server, "ws", [20_000, 90_000, 150_000], in_store),
                                       resume(session, server, "sse", [30_000, 70_000, 200_000], at_once))
        assert proc.wait(20) == 0
        assert ws == expected(n, 50) and sse == expected(n, 50)
    finally:
        await server.close()
        stop_agent(proc, env.spool, "resume")
        watcher.terminate()
        watcher.wait(30)


# --- many followers, one slow -------------------------------------------------------------------


def small_window(addr: tuple[Any, ...]) -> socket.socket:
    """A client socket with a tiny receive buffer, set before connect, so the server feels its slowness."""
    family, kind, proto, _, _ = addr
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_many_followers_and_a_slow_one(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path)
    n, gap, width = 150, 0.02, 4000  # ~600 KB in ~3 s
    proc = env.start("many", lines_script(n, gap, width=width))
    server = await serve(env.cfg())
    want = expected(n, width)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=small_window)) as slow_s:
            pace = asyncio.Event()
            pace.set()
            slow_msgs: list[Msg] = []
            # slow (1 KiB every 20 ms), then, after 64 KiB, stalled until the others are done: however long
            # they take on a busy machine, they cannot have waited for it
            slow = asyncio.create_task(sse_follow(slow_s, url(server, "many", "from=0"), slow=pace, msgs=slow_msgs,
                                                  stall_after=64 << 10))
            results = await asyncio.gather(*(ws_follow(session, url(server, "many", "from=0")) for _ in range(100)))
            assert proc.wait(60) == 0
            for msgs in results:
                assert ended(msgs), msgs[-3:]
                assert stitch(msgs, 0)[0] == want
            assert not slow.done() and received(slow_msgs) < len(want) / 2  # it is well behind ...
            pace.clear()
            msgs = await asyncio.wait_for(slow, 120)  # ... and catches up: nothing was dropped
        assert stitch(msgs, 0)[0] == want and ended(msgs)
    finally:
        await server.close()
        stop_agent(proc, env.spool, "many")


async def test_a_fan_out_write_the_socket_cannot_take_goes_to_the_transport_in_order() -> None:
    """The fan-out writes to a follower's socket itself while its transport has nothing buffered (api/sinks.py
    _write); what the socket does not take goes to the transport, after which every write does, in order; a
    gone peer is met by the transport, which closes as it would have."""
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    fd = sinks._socket_fd(transport)
    assert fd == ours.fileno()
    chunks = [bytes([65 + i % 26]) * 3000 for i in range(40)]  # 120 KB: far more than both buffers hold
    for c in chunks:
        sinks._write(transport, fd, c)
    assert transport.get_write_buffer_size() > 0  # the socket filled: the rest waits in the transport
    peer.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < 120_000:
        assert time.monotonic() < deadline, len(got)
        try:
            got += peer.recv(1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0.001)  # the loop flushes the transport
    assert bytes(got) == b"".join(chunks)
    peer.close()
    for _ in range(2):  # the first may still be taken by the kernel; the next meets the closed peer
        sinks._write(transport, fd, b"x" * 100)
    assert transport.is_closing()
    transport.abort()


async def test_caught_up_followers_share_one_reading(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Followers that have everything are served by the fan-out (api/fanout.py): one reading and one
    encoding per change for all of them, their own cursors closed; WebSocket and SSE get every byte once,
    through segment seals, and the end."""
    env = Env(tmp_path)
    n = 400  # ~100 KB in ~4 s: two 64 KiB segments
    proc = env.start("fan", lines_script(n, 0.01, width=200))
    server = await serve(env.cfg())
    want = expected(n, 200)
    live_seen = 0
    try:
        followers = [asyncio.create_task(ws_follow(session, url(server, "fan", "from=0"))) for _ in range(30)]
        followers += [asyncio.create_task(sse_follow(session, url(server, "fan", "from=0"))) for _ in range(10)]
        hub = server.app[HUB]
        while not all(f.done() for f in followers):
            feed = next(iter(hub._feeds.values()), None)
            if feed is not None and feed.fanout is not None:
                live_seen = max(live_seen, len(feed.fanout.live))
            await asyncio.sleep(0.02)
        for f in followers:
            msgs = f.result()
            assert stitch(msgs, 0)[0] == want and ended(msgs)
        # Many served by the fan-out at once. How many depends on the machine: a follower that falls behind (a
        # seal, a busy core) reads on its own until it catches up. Quiet, 35-40 of 40 in 20 ms samples; a loaded
        # CI 30; two busy loops beside it 22-34.
        assert live_seen >= 10, live_seen
        sent = sum(1 for f in followers for m in f.result() if "data" in m)
        assert server.app[METRICS].tail_messages == sent  # the fan-out counts what it sends too
        m = server.app[METRICS]  # and its writes (a batch of messages each) and their CPU
        assert m.fanout_writes > 0 and m.fanout_cpu > 0  # a write without log bytes (an end, a status) is no message
        assert proc.wait(10) == 0
    finally:
        await server.close()
        stop_agent(proc, env.spool, "fan")


async def test_a_live_websocket_follower_that_resets_leaves_at_once(tmp_path: Path,
                                                                   session: aiohttp.ClientSession) -> None:
    """A live WebSocket follower has no timer of its own (api/sinks.py WebSocket.idle_every): one whose client
    resets its connection leaves the fan-out as soon as its read loop sees it, not at a ping; the rest read on."""
    env = Env(tmp_path)
    n = 400  # ~8 s
    proc = env.start("rude", lines_script(n, 0.02))
    server = await serve(env.cfg())
    rude: list[asyncio.StreamWriter] = []
    try:
        stay = asyncio.create_task(ws_follow(session, url(server, "rude", "from=0")))
        path = url(server, "rude", "lines=0").split("/", 3)[3]
        for _ in range(20):  # raw clients that never read: what a vanished browser tab looks like
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            rude.append(writer)
        hub = server.app[HUB]

        def live() -> int:
            feed = next(iter(hub._feeds.values()), None)
            return 0 if feed is None or feed.fanout is None else len(feed.fanout.live)

        deadline = time.monotonic() + 10
        while live() < 21:
            assert time.monotonic() < deadline, live()
            await asyncio.sleep(0.01)
        for writer in rude:  # reset, the rudest way to go
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        deadline = time.monotonic() + 2  # a ping (PING_S) is far later
        while live() > 1:
            assert time.monotonic() < deadline and not stay.done(), live()
            await asyncio.sleep(0.01)
        msgs = await asyncio.wait_for(stay, 60)
        assert stitch(msgs, 0)[0] == expected(n) and ended(msgs)
    finally:
        await server.close()
        stop_agent(proc, env.spool, "rude")


# --- gaps, the store only, shutdown ---------------------------------------------------------------


async def test_a_range_dropped_at_the_quota_is_announced(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, LOGSHIP_SPOOL_QUOTA_BYTES="1MiB")
    n = 20000  # ~1.6 MB: at a 1 MiB quota and no store, the watcher drops the oldest segments but the first
    assert run_agent(env.spool, "gap", [sys.executable, "-c", lines_script(n, 0, width=30)],
                     env=env.agent_env()).returncode == 0
    Watcher(env.cfg(), None).local_pass()  # type: ignore[arg-type]  # the quota needs no store
    dropped = json.loads((env.spool / "gap" / "h1" / "dropped.json").read_bytes())
    assert dropped
    want = expected(n, 30)
    server = await serve(env.cfg())
    try:
        for follow in (ws_follow, sse_follow):
            msgs = await follow(session, url(server, "gap", "from=0"))
            skips = [(m["from"], m["to"]) for m in msgs if m.get("event") == "skipped"]
            assert skips and ended(msgs)
            gone = sorted((d["offset"], d["offset"] + d["raw_size"]) for d in dropped)
            merged = [list(gone[0])]
            for a, b in gone[1:]:
                if a == merged[-1][1]:
                    merged[-1][1] = b
                else:
                    merged.append([a, b])
            assert skips == [tuple(g) for g in merged]
            for m in msgs:
                if "data" in m:
                    assert m["data"].encode() == want[m["offset"]:m["offset"] + len(m["data"].encode())]
        assert server.app[METRICS].tail_skipped_bytes == 2 * sum(b - a for a, b in skips)
    finally:
        await server.close()


async def test_store_only_follow_is_at_most_a_checkpoint_behind(tmp_path: Path,
                                                                session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.3")
    n = 200
    watcher = start_watcher(env.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = env.start("remote", lines_script(n, 0.01, width=400, exit_code=1))
    server = await serve(env.cfg(), serve_spool=False)  # an API on another host: the store only
    try:
        deadline = time.monotonic() + 20
        while (await session.get(url(server, "remote"), headers=SSE)).status == 404:  # until the first manifest
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        msgs = await asyncio.wait_for(ws_follow(session, url(server, "remote", "from=0")), 60)
        assert proc.wait(10) == 1
        assert stitch(msgs, 0)[0] == expected(n, 400)
        assert msgs[-1]["event"] == "end" and msgs[-1]["exit_code"] == 1
        msgs = await sse_follow(session, url(server, "remote", "lines=3"))  # from the zstd segments
        assert stitch(msgs, msgs[0]["offset"])[0] == b"".join(expected(n, 400).splitlines(True)[-3:])
    finally:
        await server.close()
        stop_agent(proc, env.spool, "remote")
        watcher.terminate()
        watcher.wait(30)


async def test_followers_wait_out_a_store_outage(tmp_path: Path, local_s3: s3local.LocalS3,
                                                 session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.2",
              LOGSHIP_STORE_URL=f"s3://{local_s3.bucket}/t-{secrets.token_hex(4)}/",
              LOGSHIP_STORE_ENDPOINT=local_s3.endpoint, LOGSHIP_STORE_ACCESS_KEY=local_s3.access_key,
              LOGSHIP_STORE_SECRET_KEY=local_s3.secret_key)
    n = 200
    want = expected(n, 100)
    watcher = start_watcher(env.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    down = False
    go = tmp_path / "go"  # the second half of the lines, and the end, only once the store is down
    proc = env.start("outage", lines_script(n, 0.01, width=100, gate=(n // 2, go)))
    local, remote = await serve(env.cfg()), await serve(env.cfg(), serve_spool=False)
    try:
        deadline = time.monotonic() + 90  # conditions, not speed: a watcher's first pass on a loaded machine
        while (await session.get(url(remote, "outage"), headers=SSE)).status == 404:  # the first manifest
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        beside: list[Msg] = []
        away: list[Msg] = []
        followers = [asyncio.create_task(sse_follow(session, url(local, "outage", "from=0"), msgs=beside)),
                     asyncio.create_task(ws_follow(session, url(remote, "outage", "from=0"), msgs=away))]
        deadline = time.monotonic() + 90
        while not beside or not away:  # both connected and following
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.to_thread(s3local.kill, local_s3)
        down = True
        go.touch()
        assert await asyncio.to_thread(proc.wait, 90) == 0  # the task ends while the store is down
        deadline = time.monotonic() + 90
        while received(beside) < len(want):  # beside the spool every byte still arrives ...
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        # ... and beside the spool the end is known from it; away from it the follower waits, not fails
        assert not followers[1].done()
        await asyncio.to_thread(s3local.restart, local_s3)
        down = False
        for msgs in await asyncio.wait_for(asyncio.gather(*followers), 90):
            assert stitch(msgs, 0)[0] == want and ended(msgs)
    finally:
        if down:  # the session's server serves the other tests: never leave it down
            await asyncio.to_thread(s3local.restart, local_s3)
        await local.close()
        await remote.close()
        stop_agent(proc, env.spool, "outage")
        watcher.terminate()
        watcher.wait(30)


async def test_shutdown_closes_followers(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = Env(tmp_path)
    proc = env.start("down", lines_script(1000, 0.01))
    server = await serve(env.cfg())
    try:
        async with session.ws_connect(url(server, "down", "from=0")) as ws:
            r = await session.get(url(server, "down", "from=0"), headers=SSE)
            await ws.receive()
            await r.content.readany()
            hub = server.app[HUB]
            assert len(hub._feeds) == 1
            await server.close()  # on_shutdown, then cleanup
            msg = await ws.receive()
            while msg.type == aiohttp.WSMsgType.TEXT:
                msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
            assert "shutting down" in str(msg.extra)
            with pytest.raises(aiohttp.ClientPayloadError):  # the SSE stream ends as a failed transfer: resume
                while await r.content.readany():
                    pass
            assert not hub._feeds
            r.release()
    finally:
        await server.close()
        stop_agent(proc, env.spool, "down")


async def test_a_failed_poller_ends_its_followers_with_an_error(tmp_path: Path, session: aiohttp.ClientSession,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path)
    proc = env.start("boom", lines_script(500, 0.01))
    server = await serve(env.cfg())

    def boom(self: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("api.hub._SpoolProbe.look", boom)
    try:
        msgs = await asyncio.wait_for(ws_follow(session, url(server, "boom", "from=0")), 10)
        assert msgs[-1]["event"] == "error" and msgs[-1]["error"] == "internal"
    finally:
        await server.close()
        stop_agent(proc, env.spool, "boom")
