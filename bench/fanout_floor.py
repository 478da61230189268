"""The floor of the fan-out's latency on this machine: bench/fanout.py's followers (the same client process)
fed by a trivial server instead of the API: one process that, at each line, writes one pre-made WebSocket
frame to every socket with a plain `socket.send` in a loop: no spool, no poller, no event loop, no parsing.

    python -m bench.fanout_floor [--count 1000 --rate 20 --seconds 10 --runs 2 --via send|transport|both]
    python -m bench.fanout_floor writes   # CPU a write: socket.send vs a transport's write() vs os.write

What the API adds is the fan-out's numbers minus these. Not in the table: a control, run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from ._util import ROOT, clean_env

LINE = b"%d %d fan-out probe, a line of a typical length for a log\n"  # as bench/fanout.py's task writes


def server(count: int, lines: int, rate: float, ready: int, via: str) -> None:
    """Accept `count` WebSockets on the listening fd `ready`, then write `lines` lines to all at `rate`, with
    socket.send (`via` "send") or through asyncio transports ("transport": their write() as the API's fan-out
    calls it; the loop is not running, a write that would wait fails)."""
    lsock = socket.socket(fileno=ready)
    socks: list[socket.socket] = []
    while len(socks) < count:
        s, _ = lsock.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: x\r\n\r\n")  # the client checks only the status line
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    writes: list[Callable[[bytes], object]] = [s.send for s in socks]
    if via == "transport":
        loop = asyncio.new_event_loop()
        transports = [loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, s))[0] for s in socks]
        writes = [t.write for t in transports]
    time.sleep(0.5)
    period, offset = 1.0 / rate, 0
    walls: list[float] = []  # ms of each line's loop of sends: wall, and this thread's CPU (the kernel's included)
    cpus: list[float] = []
    t0 = time.monotonic()
    for i in range(lines):
        d = t0 + i * period - time.monotonic()
        if d > 0:
            time.sleep(d)
        text = (LINE % (time.time_ns(), i)).decode()
        payload = json.dumps({"offset": offset, "ts": 0, "stream": "stdout", "data": text}).encode()
        offset += len(text)
        frame = bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload if len(payload) >= 126 else \
            bytes([0x81, len(payload)]) + payload
        w0, c0 = time.perf_counter(), time.thread_time()
        for write in writes:
            write(frame)
        if i >= rate:  # as the followers count: not the first second
            walls.append((time.perf_counter() - w0) * 1e3)
            cpus.append((time.thread_time() - c0) * 1e3)
    time.sleep(0.5)
    for s in socks:
        s.close()
    if via == "transport":
        for t in transports:
            assert not t.get_write_buffer_size(), "a write had to wait: the control is void"
    walls.sort()
    cpus.sort()
    print(json.dumps({"loop_p50": walls[len(walls) // 2], "loop_p99": walls[int(len(walls) * 0.99)],
                      "loop_cpu_p50": cpus[len(cpus) // 2]}), flush=True)


def once(count: int, rate: float, seconds: float, via: str) -> dict[str, float]:
    lines = int((1.0 + seconds) * rate)
    lsock = socket.create_server(("127.0.0.1", 0), backlog=count)
    port = lsock.getsockname()[1]
    srv = subprocess.Popen([sys.executable, "-m", "bench.fanout_floor", "server", str(count), str(lines), str(rate),
                            str(lsock.fileno()), via], cwd=ROOT, env=clean_env(), pass_fds=(lsock.fileno(),),
                           stdout=subprocess.PIPE, text=True)
    lsock.close()
    try:
        out = subprocess.run([sys.executable, "-m", "bench.fanout", "client", f"ws://127.0.0.1:{port}/floor",
                              "--count", str(count), "--lines", str(lines), "--warmup", str(int(rate))],
                             cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True).stdout
    finally:
        sent, _ = srv.communicate(timeout=30)
    res: dict[str, float] = json.loads(out.splitlines()[-1])
    res.update(json.loads(sent))
    return res


def writes(count: int = 500, reps: int = 20) -> dict[str, float]:
    """µs of CPU a write of a 148-byte frame to each of `count` loopback TCP sockets (nobody waiting to read),
    three ways in turn: socket.send, an asyncio transport's write(), os.write on its fd (api/sinks.py _write)."""
    async def measure() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0), backlog=count)
        pairs = []
        for _ in range(count):
            c = socket.create_connection(lsock.getsockname())
            s, _ = lsock.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c.setblocking(False)
            pairs.append((c, s))
        transports = [(await loop.connect_accepted_socket(asyncio.Protocol, s))[0] for _, s in pairs]
        fds = [s.fileno() for _, s in pairs]
        ways: dict[str, list[Callable[[bytes], object]]] = {
            "send": [s.send for _, s in pairs], "transport": [t.write for t in transports],
            "os.write": [functools.partial(os.write, fd) for fd in fds]}
        frame = bytes([0x81, 126, 0, 144]) + b"x" * 144
        got: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(reps):
            for way, calls in ways.items():
                for c, _ in pairs:  # empty the receive buffers, so no write has to wait
                    with contextlib.suppress(BlockingIOError):
                        while c.recv(1 << 20):
                            pass
                c0 = time.thread_time()
                for call in calls:
                    call(frame)
                got[way].append((time.thread_time() - c0) / count * 1e6)
        for t in transports:
            t.abort()
        return {w: sorted(v)[len(v) // 2] for w, v in got.items()}
    return asyncio.run(measure())


def main(argv: list[str]) -> int:
    if argv[:1] == ["writes"]:
        print(", ".join(f"{w} {us:.2f} µs" for w, us in writes().items()) + " of CPU a write (median)")
        return 0
    if argv[:1] == ["server"]:
        server(int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]), argv[5])
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.fanout_floor", description=__doc__)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--via", choices=("send", "transport", "both"), default="both",
                    help="socket.send, asyncio transports' write, or both in turn (default)")
    a = ap.parse_args(argv)
    ways = ("send", "transport") if a.via == "both" else (a.via,)
    for via in [w for _ in range(a.runs) for w in ways]:  # in turn, so a change in the machine's load hits both
        r = once(a.count, a.rate, a.seconds, via)
        print(f"floor via {via}, {a.count} followers at {a.rate:g} lines/s: p50 {r['p50']:.1f} ms, "
              f"p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms; {r['missing']} missing, {r['duplicates']} duplicated; "
              f"a line's sends took {r['loop_p50']:.1f} ms (p99 {r['loop_p99']:.1f}), {r['loop_cpu_p50']:.1f} ms "
              f"of CPU; the followers used {r['client_cpu']:.2f} CPU s receiving", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
