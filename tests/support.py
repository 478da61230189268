"""Helpers for tests that run the real `logship` processes."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shipper.config import Config, load_config
from shipper.format import names
from shipper.query.engine import Database
from shipper.spool import SegmentWriter, make_log_dir, pid_start_ticks, write_json_atomic
from shipper.store import ObjectInfo, Store
from shipper.watcher import Watcher

LOGSHIP = [sys.executable, "-m", "shipper.commands.cli"]
ENVS: dict[int, dict[str, str]] = {}  # the environment each config() was built from, for agent_env()
MakeConfig = Callable[..., Config]
Client = TestClient[web.Request, web.Application]  # an API in this process (aiohttp's test client)
ROOT = Path(__file__).resolve().parent.parent


def env_for(spool: Path, store_env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSHIP_")}
    env["LOGSHIP_SPOOL_DIR"] = str(spool)
    env["PYTHONPATH"] = str(ROOT)
    env.update(store_env or {})
    env.update(extra)
    return env


def config(tmp_path: Path, **env: str) -> Config:
    """A config for a spool in tmp_path and a file store beside it, overridden by `env`."""
    env = {"LOGSHIP_SPOOL_DIR": str(tmp_path / "spool"), "LOGSHIP_STORE_URL": f"file://{tmp_path}/archive", **env}
    cfg = load_config(env=env)
    ENVS[id(cfg)] = env
    return cfg


def agent_env(cfg: Config) -> dict[str, str]:
    """The environment that gives a `logship` process the same config as `cfg`."""
    return env_for(cfg.spool_dir, ENVS[id(cfg)])


def run_agent(spool: Path, task: str, cmd: list[str], *, host: str = "h1", env: dict[str, str] | None = None,
              timeout: float = 120, args: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*LOGSHIP, "run", "--task", task, "--host", host, *(args or []), "--", *cmd],
                          env=env or env_for(spool), capture_output=True, timeout=timeout)


def start_agent(spool: Path, task: str, cmd: list[str], *, host: str = "h1", env: dict[str, str] | None = None,
                **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*LOGSHIP, "run", "--task", task, "--host", host, "--", *cmd],
                            env=env or env_for(spool), **kw)


# Delta checkpoints every 0.1 s, no query copies (tests/test_checkpoint.py, tests/test_deltaread.py).
DELTAS = {"LOGSHIP_WATCH_CHECKPOINT_DELTAS": "true", "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "0.1",
          "LOGSHIP_QUERY_COPY": "false"}
# A steady task: `n` numbered lines, one write each, `gap` seconds apart, then (optionally) silence.
STEADY = ("import sys, time\nfor i in range(int(sys.argv[1])):\n"
          "    sys.stdout.write('line %06d of a steady task\\n' % i); sys.stdout.flush()\n"
          "    time.sleep(float(sys.argv[2]))\n"
          "time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)\n")


def steady(cfg: Config, task: str, *args: str) -> subprocess.Popen[bytes]:
    """`logship run` of STEADY with args `n gap [silence]`."""
    return start_agent(cfg.spool_dir, task, [sys.executable, "-c", STEADY, *args], env=agent_env(cfg),
                       stdout=subprocess.DEVNULL)


def watch_once(env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*LOGSHIP, "watch", "--once"], env=env, capture_output=True, timeout=timeout)


def start_watcher(env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*LOGSHIP, "watch"], env=env, **kw)


def start_log(spool: Path, task: str) -> SegmentWriter:
    """A running log whose agent is this process (alive while the test runs)."""
    fd = make_log_dir(spool, task, "h1")
    me = os.getpid()
    write_json_atomic(spool / task / "h1" / names.RUN_FILE, {
        "task": task, "host": "h1", "run_id": os.urandom(16).hex(), "command": ["t"], "labels": {},
        "started_ns": time.time_ns(), "agent_pid": me, "agent_start_ticks": pid_start_ticks(me),
        "child_pid": None, "segment_bytes": 1 << 24}, dir_fd=fd)
    return SegmentWriter(spool / task / "h1", 1 << 24, 600, fd)


def spooled(spool: Path, task: str, host: str = "h1") -> bytes:
    """The log's bytes as the spool holds them (all segments, in order). A running agent renames its open
    segment when it seals it, maybe between the listing and the read: then it is listed again."""
    d = spool / task / host
    while True:
        segs = sorted(p for p in d.iterdir() if p.name[8:12] == ".log")
        try:
            return b"".join(p.read_bytes() for p in segs)
        except FileNotFoundError:
            continue


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (another process may take it meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# How long a `logship serve` may take to answer /healthz: on a loaded CI machine, starting Python and importing
# aiohttp, DuckDB and pyarrow alone can take tens of seconds. A process that exits fails at once, not at this.
SERVE_DEADLINE_S = 60.0


def wait_serving(proc: subprocess.Popen[bytes], url: str, timeout: float = SERVE_DEADLINE_S) -> bool:
    """Wait until `logship serve` (`proc`, at `url`) answers /healthz: True; False as soon as it has exited
    (a port taken meanwhile, a bad config: the caller says why). Still silent after `timeout`: AssertionError."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        assert time.monotonic() < deadline, f"logship serve did not answer {url}/healthz within {timeout:.0f} s"
        time.sleep(0.05)
    return False


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A task that writes every awkward kind of output, on both streams, interleaved.
NASTY = r'''
import os, sys, time
out, err = sys.stdout.buffer, sys.stderr.buffer
w = lambda f, b: (f.write(b), f.flush())
w(out, b"plain line\n")
w(err, b"\x1b[31mred error\x1b[0m\n")
w(out, b"invalid utf8 \xff\xfe\xc3\x28 and NUL \x00\x00 inside\n")
for i in range(5):
    w(out, b"\rprogress %d%%" % (i * 25)); time.sleep(0.01)
w(out, b"\n")
w(err, b"half a line on stderr ")
w(out, b"stdout between\n")
time.sleep(0.12)
w(err, b"and its end\n")
w(out, b"L" * (5 << 20) + b"\n")
w(err, b"\x1b[1;32mbold green\x1b[0m\r\n")
w(out, b"no final newline")
'''


def kill_task(spool: Path, task: str, host: str = "h1") -> None:
    """Kill a task's whole process group: it runs in its own, so killing its agent leaves it running."""
    try:
        run = json.loads((spool / task / host / "run.json").read_bytes())
        os.killpg(run["child_pid"], signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, PermissionError, KeyError, TypeError, ValueError):
        pass


def stop_agent(p: subprocess.Popen[bytes], spool: Path, task: str, host: str = "h1") -> None:
    """Tear down an agent a test started, and its task, whatever state the test left them in."""
    kill_task(spool, task, host)
    p.kill()
    p.wait()


_SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                   b'<Message>Please reduce your request rate.</Message></Error>')
SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(_SLOW_DOWN_BODY), _SLOW_DOWN_BODY))


def s3_error(status: int, reason: str, code: str) -> bytes:
    """A whole S3 error answer that closes its connection."""
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>refused by the test'
            b"</Message></Error>" % code.encode())
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason.encode(), len(body), body))


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server (the API, the S3 store) that slows its answers
    down, cuts each connection after `cut_after` bytes of answer, cuts every open connection at once
    (cut_all), resets the connection of each of the next `drop` requests, answers each of the
    next `slow_down` requests with S3's 503 SlowDown, or every request with the header `refuse_header`
    with `refusal` (a server that does not take it): a real network's and a real store's faults."""

    def __init__(self, upstream: int, *, cut_after: int | None = None, rate: float | None = None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.rate = rate
        self.cuts = 0
        self.connections = 0  # accepted so far
        self.server: asyncio.Server | None = None
        self.drop = 0  # requests still to be answered with a reset
        self.slow_down = 0  # requests still to be answered with 503 SlowDown
        self.headers_only = 0  # requests whose headers reach the server, then the connection ends
        self.refuse_header = b""  # lower-case name of a request header answered with `refusal`
        self.refusal = s3_error(400, "Bad Request", "InvalidArgument")
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def cut_all(self) -> None:
        for w in list(self._open):
            w.transport.abort()  # a reset, not a polite close

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._open.add(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answer: bool) -> None:
            sent = 0
            try:
                while data := await src.read(65536):
                    if not answer and self.drop > 0:
                        self.drop -= 1
                        writer.transport.abort()
                        return
                    if not answer and self.headers_only > 0 and b"\r\n\r\n" in data:
                        self.headers_only -= 1
                        dst.write(data[:data.index(b"\r\n\r\n") + 4])  # as a writer killed right after them
                        await dst.drain()
                        return
                    if (not answer and self.refuse_header
                            and b"\r\n" + self.refuse_header + b":" in data.split(b"\r\n\r\n", 1)[0].lower()):
                        writer.write(self.refusal)
                        await writer.drain()
                        return
                    if not answer and self.slow_down > 0:
                        self.slow_down -= 1
                        writer.write(SLOW_DOWN)
                        await writer.drain()
                        return
                    if answer and self.cut_after is not None and sent + len(data) >= self.cut_after:
                        dst.write(data[: self.cut_after - sent])
                        await dst.drain()
                        self.cuts += 1
                        return
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
                    if answer and self.rate:
                        await asyncio.sleep(len(data) / self.rate)
            except ConnectionError:
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        finally:
            self._open.discard(writer)


class Api:
    """A `logship serve` subprocess over a file store and a spool in `tmp_path`, and the CLI against it."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp_path = tmp_path
        self.spool = tmp_path / "spool"
        self.port = free_port()
        self.env = env_for(self.spool, {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}",
                                        "LOGSHIP_API_LISTEN": f"127.0.0.1:{self.port}",
                                        "LOGSHIP_SPOOL_SEGMENT_BYTES": "8MiB", **env})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for _ in range(5):
            with open(self.tmp_path / "serve.log", "ab") as log:
                self.proc = subprocess.Popen([*LOGSHIP, "serve"], env=self.env, stdout=log, stderr=log)
            try:
                if wait_serving(self.proc, self.url):
                    return
            except AssertionError as exc:
                self.stop()
                raise AssertionError(f"{exc}\n{(self.tmp_path / 'serve.log').read_text()[-5000:]}") from None
            self.stop()
            self.port = free_port()  # taken meanwhile by someone else: try another
            self.env["LOGSHIP_API_LISTEN"] = f"127.0.0.1:{self.port}"
        raise RuntimeError((self.tmp_path / "serve.log").read_text())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def run(self, task: str, script: str, host: str = "h1") -> bytes:
        """Run a task to its end under a real agent; the log's bytes as the spool holds them."""
        res = run_agent(self.spool, task, [sys.executable, "-c", script], env=self.env, host=host)
        assert res.returncode == 0, res.stderr[-2000:]
        return spooled(self.spool, task, host)

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*LOGSHIP, *args], env={**self.env, **env}, capture_output=True, timeout=timeout,
                              cwd=self.tmp_path)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*LOGSHIP, *args], env={**self.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=self.tmp_path)

    def etag(self, task: str, host: str = "h1") -> str:
        req = urllib.request.Request(f"{self.url}/api/v1/tasks/{task}/hosts/{host}/log", method="HEAD")
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.headers["ETag"])


# --- the API in this process, and DuckDB -----------------------------------------------------------


async def client_for(cfg: Config) -> Client:
    """An in-process API (no spool) for `cfg`, started; the caller closes it."""
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    return client


def rows(db: Database, sql: str) -> list[dict[str, Any]]:
    """The rows of `sql` as JSON objects."""
    result = db.execute(sql)
    return [json.loads(o) for batch in result.fetch_json() for o in batch]


# --- a process killed half-way ---------------------------------------------------------------------


class KillAfterDeletes:
    """A Store that kills its own process (SIGKILL, as `kill -9`) when asked to delete key number n+1: what
    a gc or a compaction killed half-way leaves behind. It deletes one key at a time, so that point is exact."""

    def __init__(self, inner: Store, n: int) -> None:
        self.inner, self.n, self.deleted = inner, n, 0
        self.url, self.stats = inner.url, inner.stats

    async def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self.deleted >= self.n:
                os.kill(os.getpid(), signal.SIGKILL)
            await self.inner.delete([key])
            self.deleted += 1

    async def put(self, key: str, data: bytes | memoryview, *, checked: bool = False,
                  sha256: bytes | None = None) -> None:
        await self.inner.put(key, data, checked=checked, sha256=sha256)

    async def put_file(self, key: str, path: Path) -> None:
        await self.inner.put_file(key, path)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return await self.inner.get(key, start, end)

    def open(self, key: str, start: int = 0, end: int | None = None,
             chunk: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        return self.inner.open(key, start, end, chunk)

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self.inner.list(prefix)

    async def list_page(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> builtins.list[ObjectInfo]:
        return await self.inner.list_page(prefix, start_after, max_keys)

    async def list_dirs(self, prefix: str) -> builtins.list[str]:
        return await self.inner.list_dirs(prefix)

    async def abort_uploads(self, prefix: str) -> int:
        return await self.inner.abort_uploads(prefix)

    async def close(self) -> None:
        await self.inner.close()


def logship_killed_after_deletes(n: int) -> list[str]:
    """The `logship` command line, run so that its store kills it when asked for the (n+1)th deletion."""
    return [sys.executable, "-m", "tests.support", "kill-after-deletes", str(n)]


def _kill_after_deletes(argv: list[str]) -> int:
    """`python -m tests.support kill-after-deletes N ARGS...`: `logship ARGS...` whose store is wrapped in
    KillAfterDeletes. The commands open their store through shipper.store.open_store when they run."""
    import shipper.store
    from shipper.commands import cli

    n, real = int(argv[0]), shipper.store.open_store
    shipper.store.open_store = lambda cfg: KillAfterDeletes(real(cfg), n)
    return cli.main(argv[1:])


if __name__ == "__main__":
    assert sys.argv[1] == "kill-after-deletes", sys.argv
    sys.exit(_kill_after_deletes(sys.argv[2:]))


def counted(store: Store, method: str) -> Counter[str]:
    """The keys `store.<method>` is called with, counted; the real store still does the work. "get" counts the
    file store's `get_tagged` too (how it reads a manifest: shipper/store/base.py TaggedGet)."""
    seen: Counter[str] = Counter()
    for name in [method, *(["get_tagged"] if method == "get" and hasattr(store, "get_tagged") else [])]:
        real = getattr(store, name)

        async def spy(key: str, *args: Any, _real: Any = real, **kw: Any) -> Any:
            seen[key] += 1
            return await _real(key, *args, **kw)

        setattr(store, name, spy)
    return seen


@contextlib.asynccontextmanager
async def watching(cfg: Config, store: Store) -> AsyncIterator[Watcher]:
    """A watcher making a pass every 50 ms in this process (uploads, checkpoints, seals, prunes)."""
    w = Watcher(cfg, store)

    async def loop() -> None:
        while True:
            await w.run_once()
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(loop())
    try:
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def body(session: aiohttp.ClientSession, url: str) -> bytes:
    """A 200's whole body."""
    async with session.get(url) as r:
        assert r.status == 200
        return await r.read()


async def served(session: aiohttp.ClientSession, url: str) -> None:
    """Until the API serves some of the log."""
    deadline = time.monotonic() + 30
    while True:
        async with session.get(url) as r:
            if r.status == 200 and await r.read():
                return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def sse_tail(session: aiohttp.ClientSession, url: str, start: int = 0, stop: int | None = None) -> bytes:
    """An SSE tail's data from `start` (Last-Event-ID) to its end event, or until it holds `stop` bytes; each
    message where the one before ended (no gap, no duplicate)."""
    out, buf = b"", b""
    async with session.get(url, headers={"Accept": "text/event-stream", "Last-Event-ID": str(start)}) as r:
        assert r.status == 200
        while True:
            piece = await r.content.readany()
            assert piece, "the tail ended without its end event"
            buf += piece
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(x.split(": ", 1) for x in block.decode().split("\n") if ": " in x)
                if "data" not in fields:
                    continue
                msg = json.loads(fields["data"])
                if msg.get("event") == "end":
                    assert msg["size"] == start + len(out)
                    return out
                assert "data" in msg and msg["offset"] == start + len(out), msg
                data: bytes = msg["data"].encode()
                out += data
                assert int(fields["id"]) == start + len(out)
                if stop is not None and len(out) >= stop:
                    return out
