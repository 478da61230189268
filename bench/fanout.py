"""Many followers of one running log (issue 16, item 9): 100 WebSocket followers at 100 lines/s and 1,000 at
20 lines/s, write → receipt latency of every line at every follower, and the API's RSS before, under the load
and after the followers have gone (they leave by resetting their connections, the rudest way).

The followers run in their own process (`python -m bench.fanout client …`): raw sockets under one epoll
loop, a receipt time taken at each recv() before anything is parsed, so the client's own cost adds as little
as it can to what is measured. `python -m bench.fanout` runs this part alone against a file store.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._util import ROOT, OthersWindow, Series, clean_env, rmtree, say, settle, tool
from .api import HOST, Api, HasEnv, _RssSampler, _stop, serve

# (followers, lines/s): as issue 16 measured them; the bars are p99 ≤ 5 ms and ≤ 50 ms (aim 10)
LOADS = ((100, 100), (1000, 20))
WARMUP_S = 1.0  # lines of the first second are not counted (connections settle, caches warm)
GONE_WAIT_S = 3.0  # after the followers reset their connections, RSS is read this long after
FANOUT_TASK = """\
import os, sys, time
n, period = int(sys.argv[1]), 1.0 / float(sys.argv[2])
while not os.path.exists("go"):
    time.sleep(0.005)
t0 = time.monotonic()
for i in range(n):
    d = t0 + i * period - time.monotonic()
    if d > 0:
        time.sleep(d)
    os.write(1, b"%d %d fan-out probe, a line of a typical length for a log\\n" % (time.time_ns(), i))
while not os.path.exists("stop"):
    time.sleep(0.02)
"""


def run(d: Path, server: HasEnv, runs: int, seconds: float) -> dict[str, Any]:
    """`runs` rounds, each on a fresh API: warm it with one follower, then each load of LOADS in turn."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "fanout_task.py").write_text(FANOUT_TASK)
    stats: dict[str, dict[str, Series]] = {}
    for n, _rate in LOADS:
        key = str(n)
        stats[key] = {q: Series(f"fan-out {n} followers {q}", "ms") for q in ("p50", "p99", "max")}
        stats[key].update({m: Series(f"fan-out {n} followers: API RSS {m}", "MB") for m in ("peak", "after")})
        stats[key]["missing"] = Series(f"fan-out {n}: lines missing or duplicated", "lines")
    idle = Series("fan-out: API RSS before (warmed by one follower)", "MB")
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    for r in range(runs):
        settle()
        with serve(d, server, "fanout-spool", f"fanout-{r}") as api:
            _round(d, api, f"fo-{r}-warm", 1, 50, 1.5)
            time.sleep(GONE_WAIT_S)
            idle.samples.append(_rss_mb(api))
            for n, rate in LOADS:
                window = OthersWindow()
                res = _round(d, api, f"fo-{r}-{n}", n, rate, seconds)
                noise.samples.append(window.share() * 100)
                s = stats[str(n)]
                for q in ("p50", "p99", "max"):
                    s[q].samples.append(res[q])
                s["peak"].samples.append(res["rss_peak"])
                s["after"].samples.append(res["rss_after"])
                s["missing"].samples.append(res["missing"] + res["duplicates"])
                say(f"  fan-out round {r + 1}/{runs}, {n} followers at {rate} lines/s: p50 {res['p50']:.1f} ms, "
                    f"p99 {res['p99']:.1f} ms, max {res['max']:.1f} ms; API RSS {idle.samples[-1]:.1f} → "
                    f"{res['rss_peak']:.1f} → {res['rss_after']:.1f} MB; {res['missing']} missing, "
                    f"{res['duplicates']} duplicated; the API used {res['api_cpu']:.1f} CPU s "
                    f"({res['write_us']:.1f} µs a fan-out write), the followers {res['client_cpu']:.1f} (receiving)")
    rmtree(d / "fanout-spool")
    return {"fanout": stats, "fanout_idle": idle, "fanout_seconds": seconds, "noise_fanout": noise}


def _rss_mb(api: Api) -> float:
    return api.status().get("VmRSS", 0) * 1024 / 1e6


def _round(d: Path, api: Api, task: str, n: int, rate: int, seconds: float) -> dict[str, Any]:
    """One log at `rate` lines/s followed by `n` WebSockets for `seconds` (+ the warm-up); they then reset."""
    for f in ("go", "stop"):
        (d / f).unlink(missing_ok=True)
    lines = int((WARMUP_S + seconds) * rate)
    agent = subprocess.Popen([tool("logship"), "run", "--task", task, "--host", HOST, "--", sys.executable,
                              "fanout_task.py", str(lines), str(rate)], cwd=d,
                             env=clean_env(PYTHONPATH=str(ROOT), LOGSHIP_SPOOL_DIR="fanout-spool"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    client: subprocess.Popen[str] | None = None
    try:
        _wait_spool(d / "fanout-spool" / task / HOST)
        client = subprocess.Popen([sys.executable, "-m", "bench.fanout", "client", api.tail_url(task, True),
                                   "--count", str(n), "--lines", str(lines), "--warmup", str(int(WARMUP_S * rate))],
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise SystemExit(f"bench: the {n} fan-out followers did not connect; the API logged {api.first_error()}")
        sampler = _RssSampler(api)
        cpu0, cast0 = api.cpu(), _fanout_cost(api)
        (d / "go").touch()
        out, _ = client.communicate(timeout=seconds + 120)
        if client.returncode != 0:
            raise SystemExit(f"bench: the fan-out client failed ({client.returncode})")
        res: dict[str, Any] = json.loads(out)
        res["api_cpu"] = api.cpu() - cpu0
        writes, cpu = (b - a for a, b in zip(cast0, _fanout_cost(api), strict=True))
        res["write_us"] = cpu / writes * 1e6 if writes else float("nan")  # the fan-out's CPU a write, send included
        res["rss_peak"] = sampler.stop()["VmRSS"] * 1024 / 1e6
        time.sleep(GONE_WAIT_S)
        res["rss_after"] = _rss_mb(api)
        return res
    finally:
        (d / "stop").touch()
        for p in (client, agent):
            if p is not None:
                _stop(p, 10.0)


def _fanout_cost(api: Api) -> tuple[float, float]:
    """(writes, CPU seconds) of the API's fan-out so far, from its /metrics."""
    with urllib.request.urlopen(api.base.removesuffix("/api/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    got = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("logship_api_tail_fanout_"))
    return float(got["logship_api_tail_fanout_writes_total"]), float(got["logship_api_tail_fanout_cpu_seconds_total"])


def _wait_spool(log_dir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (log_dir / "run.json").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the agent did not start its log in {timeout:.0f} s")
        time.sleep(0.01)


# --- the table ----------------------------------------------------------------------------------


def rows_for(a: dict[str, Any]) -> list[Any]:
    """Rows for bench/__main__.py's table: latency against the issue's bars; memory back within 10 MB of idle."""
    from .__main__ import Row

    rows: list[Any] = []
    idle = a["fanout_idle"]
    bars = {"100": (5, 2), "1000": (50, 10)}
    for n, rate in LOADS:
        s = a["fanout"][str(n)]
        must, aim = bars[str(n)]
        what = f"fan-out, {n:,} WebSocket followers of one log at {rate} lines/s"
        rows.append(Row(f"{what}, p50 (ms)", "-", s["p50"].spread(2), None, None, None, higher=False,
                        value=s["p50"].median))
        rows.append(Row(f"{what}, p99 (ms); judged on the max", "-", s["p99"].spread(2), None, must, aim,
                        higher=False, value=max(s["p99"].samples)))
        rows.append(Row(f"{what}: API RSS under load (MB)", f"{idle.spread(1)} idle", s["peak"].spread(1), None,
                        None, None, higher=False, value=s["peak"].median))
        grown = Series("after - idle", "MB", [x - i for x, i in zip(s["after"].samples, idle.samples, strict=True)])
        rows.append(Row(f"{what}: API RSS once they left, minus idle (MB); judged on the max", "-", grown.spread(1),
                        None, 10, 2, higher=False, value=max(grown.samples)))
        rows.append(Row(f"{what}: lines missing or duplicated", "-", s["missing"].spread(0), None, 0, 0,
                        higher=False, value=max(s["missing"].samples)))
    return rows


# --- the followers (own process) ------------------------------------------------------------------


class _Follower:
    """One WebSocket, read raw: server frames are unmasked; a ping is answered, text frames are kept."""

    def __init__(self, url: str, k: int) -> None:
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade"
                          f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(4096)
            if not data:
                raise SystemExit(f"follower {k}: closed during the handshake: {buf[:200]!r}")
            buf += data
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"follower {k}: {head[:200]!r}")
        self.sock.setblocking(False)
        self.received: list[tuple[int, bytes]] = []  # (receipt ns, bytes) as they came
        self.tail = b""  # the last bytes received, to notice the last line across two recv()s
        self.closed = False

    def frames(self, data: bytes) -> list[bytes]:
        """Whole text frames' payloads from the buffer plus `data`; answers pings, notes a close."""
        buf = self.buf + data
        out = []
        while len(buf) >= 2:
            op, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + n:
                break
            payload, buf = buf[at:at + n], buf[at + n:]
            if op == 1:
                out.append(payload)
            elif op == 9:  # pong, masked with a zero key (a client must mask)
                self.sock.send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif op == 8:
                self.closed = True
        self.buf = buf
        return out

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def client(url: str, count: int, lines: int, warmup: int, timeout: float) -> dict[str, Any]:
    """`count` followers until each has line `lines - 1` (or `timeout`); latency of lines from `warmup` on."""
    followers = [_Follower(url, k) for k in range(count)]
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    for f in followers:
        sel.register(f.sock, selectors.EVENT_READ, f)
    waiting = count
    cpu0 = time.process_time()
    deadline = time.monotonic() + timeout
    last_line = b" %d fan-out probe" % (lines - 1)  # a follower is done when it has the last line
    done: set[int] = set()
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            f = key.data
            try:
                data = f.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            now = time.time_ns()
            if not data:
                sel.unregister(f.sock)
                f.closed = True
                waiting -= id(f) not in done
                done.add(id(f))
                continue
            f.received.append((now, data))
            f.tail = (f.tail + data[-256:])[-256:]
            if last_line in f.tail and id(f) not in done:
                done.add(id(f))
                waiting -= 1
    receiving = time.process_time() - cpu0  # the receiving loop's CPU, parsing after it not counted
    lat: list[float] = []
    missing = dups = closed = 0
    for f in followers:
        seen: list[int] = []
        for now, data in f.received:
            for payload in f.frames(data):
                doc = json.loads(payload)
                if "data" not in doc:
                    continue
                for line in doc["data"].splitlines():
                    ns, i = (int(x) for x in line.split(" ", 2)[:2])
                    seen.append(i)
                    if i >= warmup:
                        lat.append((now - ns) / 1e6)
        closed += f.closed
        missing += lines - len(set(seen))
        dups += len(seen) - len(set(seen))
    for f in followers:
        if not f.closed:
            f.reset()
    lat.sort()
    return {"n": len(lat), "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "max": lat[-1] if lat else float("nan"),
            "missing": missing, "duplicates": dups, "closed_early": closed, "client_cpu": receiving}


def _pct(s: list[float], q: float) -> float:
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


class _FileStore:
    """The store of a standalone run: a directory beside the spool (HasEnv, as bench.api's S3 Server)."""

    def __init__(self, d: Path) -> None:
        self.url = f"file://{(d / 'archive').resolve()}"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(PYTHONPATH=str(ROOT), LOGSHIP_STORE_URL=self.url, **extra)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("client", help="the followers (run by the bench in their own process)")
    c.add_argument("url")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--lines", type=int, required=True)
    c.add_argument("--warmup", type=int, default=0)
    c.add_argument("--timeout", type=float, default=120.0)
    r = sub.add_parser("run", help="this part alone, against a file store (default)")
    r.add_argument("--runs", type=int, default=2)
    r.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.cmd == "client":
        sys.stdout.write(json.dumps(client(a.url, a.count, a.lines, a.warmup, a.timeout)) + "\n")
        return 0
    from .__main__ import table

    os.chdir(ROOT)
    d = Path(".logship/bench/fanout")
    rmtree(d)
    res = run(d, _FileStore(d), getattr(a, "runs", 2), getattr(a, "seconds", 10.0))
    rows = rows_for(res)
    print(table(rows))
    rmtree(d)
    return 1 if any(row.verdict() == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
