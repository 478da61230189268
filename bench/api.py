"""The API's cost: download of a finished log (vs a plain GET of its objects), first byte, live-tail latency
(WebSocket, SSE) and peak RSS under 10 downloads + 100 tails. Also the clients it runs in their own
processes: `python -m bench.api ttfb|tail|tails …`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ._util import ROOT, OthersWindow, Series, check, clean_env, rmtree, run_timed, say, settle, tool

if TYPE_CHECKING:
    from shipper.format.manifest import Manifest, Segment

BUCKET, PREFIX, HOST = "bench", "api", "bench"
COMPRESSIONS = ("zstd", "none")
SPOOL_TASK = "dl-spool"  # the same log, finished but not shipped: served from the API's spool
# "api": curl of /log as most clients ask (no Accept-Encoding: the API decompresses); "enc": with
# `Accept-Encoding: zstd` (the API sends the stored zstd frames as they are), to /dev/null or into zstd -d
DOWNLOADS = ("zstd api", "zstd enc", "zstd enc+zstd -d", "zstd get", "zstd get+zstd -d", "none api", "none get")
ACCEPT_ZSTD = "Accept-Encoding: zstd"
TTFB_REQUESTS, TTFB_WARM = 20, 3
# between first-byte requests: longer than the API reuses a finished log's view (api/source.py,
# FINISHED_VIEW_TTL), so that each request pays for its own view as a new reader would
TTFB_GAP_S = 0.15
TAIL_RATE = 1000  # lines/s
TAIL_WARMUP_S = 1.0  # lines written in the first second after the client is connected are not counted
TAIL_MODES = ("ws", "sse", "ws+watch", "sse+watch")
LOAD_DOWNLOADS, LOAD_TAILS = 10, 100
API_ARGS = ["-m", "shipper.commands.cli", "serve"]  # after sys.executable: the API as `logship serve` runs it
API_START_ATTEMPTS = 4
API_STOP_GRACE_S = 10.0

# The tail task: a line every 1 ms (on a fixed schedule, so a late wake-up does not lower the rate),
# each carrying the time.time_ns() of its own write and its number; one write() per line.
TAIL_TASK = """\
import os, sys, time
n, period = int(sys.argv[1]), 1.0 / int(sys.argv[2])
t0 = time.monotonic()
for i in range(n):
    d = t0 + i * period - time.monotonic()
    if d > 0:
        time.sleep(d)
    os.write(1, b"%d %d tail latency probe, a line of a typical length for a log\\n" % (time.time_ns(), i))
"""


class HasEnv(Protocol):
    """What an API needs of its store: the environment that points `logship serve` at it."""

    def env(self, **extra: str) -> dict[str, str]: ...


@dataclass
class Server:
    """The local S3 server's endpoint and keys (what the API, the watcher and curl need)."""

    endpoint: str
    access_key: str
    secret_key: str
    pid: int

    def env(self, **extra: str) -> dict[str, str]:
        # PYTHONPATH: the API and the watcher run this checkout's code, not whatever an editable install points at
        return clean_env(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                         LOGSHIP_STORE_URL=f"s3://{BUCKET}/{PREFIX}", LOGSHIP_STORE_ENDPOINT=self.endpoint, **extra)


def run(workdir: Path, text: Path, repeat: int, runs: int, tail_seconds: float, load_seconds: float) -> dict[str, Any]:
    from shipper.commands import s3local

    d = workdir / "api"
    rmtree(d)
    d.mkdir(parents=True)
    s3dir = workdir / "s3-api"  # its own: other parts (upload) stop and remove "s3"
    s3local.stop(s3dir)
    rmtree(s3dir)
    s3 = s3local.start(s3dir, bucket=BUCKET)
    try:
        server = Server(s3.endpoint, s3.access_key, s3.secret_key, s3.pid)
        logs = prepare(d, server, text, repeat)
        out: dict[str, Any] = {"bytes": logs["size"], "segments": logs["segments"]}
        out.update(downloads(d, server, logs, runs))
        out.update(tails(d, server, runs, tail_seconds))
        out.update(load(d, server, logs, runs, load_seconds))
        from . import fanout  # many followers of one log (its own module: bench/fanout.py)

        out.update(fanout.run(d / "fanout", server, runs, tail_seconds))
        out["noise"] = Series("share of the CPU other processes used during the timed runs", "%",
                              out["noise_download"].samples + out["noise_tail"].samples + out["noise_load"].samples
                              + out["noise_fanout"].samples)
        return out
    finally:
        s3local.stop(s3)
        rmtree(s3dir)
        rmtree(d)


# --- the logs ------------------------------------------------------------------------------------


def prepare(d: Path, server: Server, text: Path, repeat: int) -> dict[str, Any]:
    """The same output three times: shipped with zstd and with none (spool pruned: the API reads the store),
    and once left in the spool the download API runs beside. Checks sizes, and the sha256 of each through the API."""
    size = text.stat().st_size * repeat
    producer = ["cat", *[str(text.resolve())] * repeat]
    logship = tool("logship")
    for c in COMPRESSIONS:
        spool = f"spool-{c}"
        check(run_timed([logship, "run", "--task", f"dl-{c}", "--host", HOST, "--", *producer], cwd=d,
                        env=clean_env(LOGSHIP_SPOOL_DIR=spool)), f"logship run (dl-{c})")
        ran = check(run_timed([logship, "watch", "--once"], cwd=d, env=server.env(
            LOGSHIP_SPOOL_DIR=spool, LOGSHIP_STORE_COMPRESSION=c, LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")),
            f"logship watch --once ({c})")
        stats = json.loads((d / spool / ".watcher.json").read_text())["stats"]
        left = [p for p in (d / spool).rglob("*.log*")]
        if stats["raw_bytes_uploaded"] < size or left:
            raise SystemExit(f"bench: the watcher shipped {stats['raw_bytes_uploaded']} of {size} bytes ({c}) and "
                             f"left {len(left)} segments in the spool; its log:\n{ran.stderr[-2000:]}")
        rmtree(d / spool)
        say(f"  dl-{c}: {size / 1e6:.0f} MB shipped as {stats['bytes_uploaded'] / 1e6:.0f} MB in "
            f"{stats['segments_uploaded']} segments (+ query copy), spool pruned, in {ran.wall:.1f} s")
    check(run_timed([logship, "run", "--task", SPOOL_TASK, "--host", HOST, "--", *producer], cwd=d,
                    env=clean_env(LOGSHIP_SPOOL_DIR="spool")), f"logship run ({SPOOL_TASK})")
    manifests = {c: _s3_manifest(server, f"dl-{c}") for c in COMPRESSIONS}
    for c, doc in manifests.items():
        if doc.size != size or doc.status != "finished":
            raise SystemExit(f"bench: manifest of dl-{c} says {doc.size} bytes, {doc.status}")
    want = _sha256_cmd(" ".join(map(shlex.quote, producer)))
    with serve(d, server, "spool", "check") as api:
        for task in (*(f"dl-{c}" for c in COMPRESSIONS), SPOOL_TASK):
            got = _sha256_cmd(f"curl -sf {shlex.quote(api.log_url(task))}")
            if got != want:
                raise SystemExit(f"bench: sha256 of {task} through the API is {got}, not {want}")
        got = _sha256_cmd(f"curl -sf -H '{ACCEPT_ZSTD}' {shlex.quote(api.log_url('dl-zstd'))} | zstd -dc")
        if got != want:
            raise SystemExit(f"bench: sha256 of dl-zstd through the API as Content-Encoding: zstd, decoded, is {got}, "
                             f"not {want}")
    say(f"  sha256 of each log through the API (and of dl-zstd as zstd, decoded) = sha256 of the task's output "
        f"({want[:16]}…)")
    return {"size": size, "manifests": manifests, "segments": len(manifests["zstd"].segments),
            "stored": {c: sum(s.stored_size for s in doc.segments) for c, doc in manifests.items()}}


def _sha256_cmd(producer: str) -> str:
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {producer} | sha256sum"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[0]


def _s3_url(server: Server, key: str) -> str:
    return f"{server.endpoint}/{BUCKET}/{PREFIX}/{key}"


def _curl_auth(server: Server) -> list[str]:
    """curl config lines that sign requests with SigV4 (the server's keys; not on the command line)."""
    return [f'user = "{server.access_key}:{server.secret_key}"', 'aws-sigv4 = "aws:amz:us-east-1:s3"']


def _s3_manifest(server: Server, task: str) -> Manifest:
    from shipper.format import names
    from shipper.format.manifest import Manifest

    key = names.manifest_key(task, HOST)
    conf = "\n".join([*_curl_auth(server), f'url = "{_s3_url(server, key)}"']) + "\n"
    out = subprocess.run(["curl", "-sf", "-K", "-"], input=conf.encode(), capture_output=True, check=True).stdout
    return Manifest.load(out, task, HOST)


# --- the API process -----------------------------------------------------------------------------


class Api:
    """`python -m shipper.commands.cli serve` on a free port of 127.0.0.1, beside `spool` (relative to its cwd)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def log_url(self, task: str) -> str:
        return f"{self.base}/tasks/{task}/hosts/{HOST}/log"

    def tail_url(self, task: str, ws: bool, query: str = "lines=0") -> str:
        base = f"{self.base}/tasks/{task}/hosts/{HOST}/tail?{query}"
        return base.replace("http://", "ws://", 1) if ws else base

    def status(self) -> dict[str, int]:
        """Fields of /proc/PID/status in KiB (VmRSS, VmHWM)."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def first_error(self) -> str:
        """The first exception line in the API's log (the cause; later ones are often its consequences)."""
        m = re.search(r"^[A-Za-z_][\w.]*(?:Error|Exception)\b.*$", self.log.read_text(errors="replace"), re.M)
        return m.group(0) if m else "(no exception in the API's log)"

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(d: Path, server: HasEnv, spool: str, name: str) -> Iterator[Api]:
    """An API beside `spool`, on the store's bench prefix; stopped (SIGTERM, then SIGKILL) on the way out."""
    api = _start_api(d, server, spool, name)
    try:
        yield api
    finally:
        _stop(api.proc, API_STOP_GRACE_S)


def _start_api(d: Path, server: HasEnv, spool: str, name: str) -> Api:
    log = d / f"api-{name}.log"
    last = ""
    for _ in range(API_START_ATTEMPTS):  # the port is free when picked, but another process may take it first
        port = _free_port()
        env = server.env(LOGSHIP_SPOOL_DIR=spool, LOGSHIP_API_LISTEN=f"127.0.0.1:{port}")
        with open(log, "ab") as logf:
            proc = subprocess.Popen([sys.executable, *API_ARGS], cwd=d, env=env,
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        api = Api(proc, port, log)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if _healthy(port):
                return api
            time.sleep(0.05)
        _stop(proc, 1.0)
        last = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"bench: `logship serve` did not become healthy; its log:\n{last}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/healthz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def _stop(proc: subprocess.Popen[Any], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_log(api: Api, task: str, timeout: float = 30.0) -> None:
    """Until the API knows the log (the agent has created it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)  # the first asks the store: slow when busy
        c.request("GET", f"/api/v1/tasks/{task}/hosts/{HOST}")
        status = c.getresponse().status
        c.close()
        if status == 200:
            return
        time.sleep(0.01)
    raise SystemExit(f"bench: the API does not know log {task} after {timeout:.0f} s")


# --- 1 and 2: downloads and first bytes ----------------------------------------------------------


def downloads(d: Path, server: Server, logs: dict[str, Any], runs: int) -> dict[str, Any]:
    """Whole-log downloads through the API vs curl GETs of the segment objects (in order, one connection);
    then first-byte times of whole-log and last-segment Range requests, from the store and from the spool."""
    size = logs["size"]
    confs: dict[str, Path] = {}
    for c, doc in logs["manifests"].items():
        objects = [_s3_url(server, f"logs/dl-{c}/{HOST}/{_segment_name(s)}") for s in doc.segments]
        # each object to /dev/null, its size written out; and (zstd) all of them to stdout, for zstd -d
        confs[f"{c} get"] = _write_conf(d / f"get-{c}.conf", _curl_auth(server) + ['write-out = "%{size_download}\\n"']
                                        + [f'url = "{u}"\noutput = "/dev/null"' for u in objects])
        confs[f"{c} cat"] = _write_conf(d / f"cat-{c}.conf", _curl_auth(server) + [f'url = "{u}"' for u in objects])
    speed = {k: Series(f"download ({k})", "GB/s") for k in DOWNLOADS}  # log bytes / wall time
    cpu = {k: Series(f"download ({k})", "CPU s") for k in DOWNLOADS}  # the client's (curl, zstd)
    api_cpu = {k: Series(f"API CPU ({k})", "CPU s") for k in DOWNLOADS if k.split()[1] in ("api", "enc")}
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    ttfb_kinds = [(src, rng) for src in ("zstd", "none", "spool") for rng in ("whole", "range")]
    ttfb = {f"{src} {rng}": Series(f"first byte, {src}, {rng}", "ms") for src, rng in ttfb_kinds}
    # The store's own first byte for the object the API must read first (same client, a presigned GET):
    # the first segment; for the Range, the segment holding size-1000 (zstd: from its start, as the API
    # must decompress from there; none: a Range of that object too).
    store_ttfb = {f"{c} {rng}": Series(f"the store's first byte, {c}, {rng}", "ms") for c in COMPRESSIONS
                  for rng in ("whole", "range")}
    store_req: dict[str, list[str]] = {}
    for c, doc in logs["manifests"].items():
        last = next(e for e in doc.segments if e.offset <= size - 1000 < e.end)
        for rng, entry in (("whole", doc.segments[0]), ("range", last)):
            url = _presign(server, f"logs/dl-{c}/{HOST}/{_segment_name(entry)}")
            extra = ["--range-from", str(size - 1000 - entry.offset)] if rng == "range" and c == "none" else []
            store_req[f"{c} {rng}"] = [url, *extra]
    with serve(d, server, "spool", "download") as api:
        urls = {"zstd": api.log_url("dl-zstd"), "none": api.log_url("dl-none"), "spool": api.log_url(SPOOL_TASK)}
        for r in range(runs):
            settle()
            order = list(DOWNLOADS)
            for side in order[r % len(order):] + order[:r % len(order)]:  # rotated
                c, how = side.split(" ", 1)
                out = d / "curl.out"
                with open(out, "w+b") as f:
                    if how in ("api", "enc"):
                        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{http_code}\n", urls[c],
                                *(["-H", ACCEPT_ZSTD] if how == "enc" else [])]
                    elif how == "get":
                        argv = ["curl", "-s", "-K", str(confs[f"{c} get"].name)]
                    elif how == "enc+zstd -d":  # the stored frames through the API, decoded as they arrive
                        argv = ["bash", "-c", f"set -o pipefail; curl -s -H '{ACCEPT_ZSTD}' {shlex.quote(urls[c])} | "
                                "zstd -d -v -f -o /dev/null"]
                    else:  # the bytes decompressed as they arrive, as the API must
                        argv = ["bash", "-c", f"set -o pipefail; curl -s -K {confs[f'{c} cat'].name} | "
                                "zstd -d -v -f -o /dev/null"]
                    cpu0 = api.cpu()
                    ran = run_timed(argv, cwd=d, env=clean_env(), stdout=f, helpers=(server.pid, api.pid))
                    if ran.rc != 0:
                        raise SystemExit(f"bench: {side} failed with exit status {ran.rc}:\n{ran.stderr[-2000:]}\n"
                                         f"the API's log:\n{api.log_tail()}")
                    if side in api_cpu:
                        api_cpu[side].samples.append(api.cpu() - cpu0)
                    f.seek(0)
                    got = _got_bytes(how, f.read().decode(), ran.stderr)
                want = logs["stored"][c] if how in ("get", "enc") else size
                if got != want:
                    raise SystemExit(f"bench: {side} moved {got} bytes, not {want}:\n{ran.stderr[-2000:]}\n"
                                     f"the API's log:\n{api.log_tail()}")
                speed[side].samples.append(size / ran.wall / 1e9)
                cpu[side].samples.append(ran.cpu)
                noise.samples.append(ran.others * 100)
            for src, rng in ttfb_kinds:
                # Range: the last 1,000 bytes, in the last segment
                extra = ["--range-from", str(size - 1000)] if rng == "range" else []
                res = _client(["ttfb", urls[src], "--count", str(TTFB_REQUESTS), "--warm", str(TTFB_WARM), *extra])
                ttfb[f"{src} {rng}"].samples.append(_median(res["ms"]))
            for key, req in store_req.items():
                res = _client(["ttfb", *req, "--count", str(TTFB_REQUESTS), "--warm", str(TTFB_WARM)])
                store_ttfb[key].samples.append(_median(res["ms"]))
            say(f"  download round {r + 1}/{runs}: " + ", ".join(f"{k} {s.samples[-1]:.2f}" for k, s in speed.items())
                + " GB/s; first byte " + ", ".join(f"{k} {s.samples[-1]:.1f}" for k, s in ttfb.items())
                + " ms (the store's: " + ", ".join(f"{k} {s.samples[-1]:.1f}" for k, s in store_ttfb.items()) + ")")
    return {"speed": speed, "cpu": cpu, "api_cpu": api_cpu, "ttfb": ttfb, "store_ttfb": store_ttfb,
            "ttfb_requests": TTFB_REQUESTS, "ttfb_warm": TTFB_WARM, "stored": logs["stored"],
            "noise_download": noise}


def _segment_name(entry: Segment) -> str:
    return entry.keys("t", HOST)[0].rsplit("/", 1)[1]


def _presign(server: Server, key: str) -> str:
    """A presigned GET URL of an object (path style), good for an hour: any HTTP client can fetch it."""
    import botocore.session  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    url: str = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": f"{PREFIX}/{key}"},
                                         ExpiresIn=3600)
    return url


def _write_conf(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _got_bytes(how: str, stdout: str, stderr: str) -> int:
    if how in ("api", "enc"):
        n, status = stdout.split()
        return int(n) if status == "200" else -int(status)
    if how == "get":
        return sum(int(x) for x in stdout.split())
    m = re.findall(r": (\d+) bytes", stderr)  # zstd -v: "/*stdin*\ : N bytes"
    return int(m[-1]) if m else -1


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] + s[(n - 1) // 2]) / 2


# --- 3: live tail latency ------------------------------------------------------------------------


def tails(d: Path, server: Server, runs: int, seconds: float) -> dict[str, Any]:
    """A task writing 1,000 lines/s under `logship run`; an API beside its spool; a WebSocket or SSE client
    recording receive time - write time of each line. Also with `logship watch` running beside."""
    (d / "tail_task.py").write_text(TAIL_TASK)
    lines = int((TAIL_WARMUP_S + seconds) * TAIL_RATE)
    stats = {m: {q: Series(f"tail {m} {q}", "ms") for q in ("p50", "p99", "p99.9", "max")} for m in TAIL_MODES}
    counted = {m: Series(f"tail {m}: lines counted", "lines") for m in TAIL_MODES}
    client_cpu = {m: Series(f"tail {m}: the client's CPU", "CPU s") for m in TAIL_MODES}
    api_cpu = {m: Series(f"tail {m}: the API's CPU", "CPU s") for m in TAIL_MODES}
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    with serve(d, server, "live", "tail") as api:
        for r in range(runs):
            settle()
            order = list(TAIL_MODES)
            for mode in order[r % len(order):] + order[:r % len(order)]:
                task = f"tail-{r}-{mode.replace('+', '-')}"
                watcher = None
                if mode.endswith("+watch"):  # as on a real host: the watcher checkpoints and ships beside the tail
                    with open(d / "watch.log", "ab") as logf:
                        watcher = subprocess.Popen([tool("logship"), "watch"], cwd=d,
                                                   env=server.env(LOGSHIP_SPOOL_DIR="live"), stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=logf)
                try:
                    window = OthersWindow()
                    cpu0 = api.cpu()
                    res = _run_tail(d, api, task, mode.split("+")[0], lines)
                    api_cpu[mode].samples.append(api.cpu() - cpu0)
                    noise.samples.append(window.share() * 100)
                finally:
                    if watcher is not None:
                        _stop(watcher, 10.0)
                if res["missing"] or res["duplicates"]:
                    say(f"  tail {mode}: {res['missing']} lines missing, {res['duplicates']} duplicated (a bug)")
                for q in ("p50", "p99", "p99.9", "max"):
                    stats[mode][q].samples.append(res[q])
                counted[mode].samples.append(res["n"])
                client_cpu[mode].samples.append(res["cpu"])
            say(f"  tail round {r + 1}/{runs} (p50/p99 ms): " + ", ".join(
                f"{m} {stats[m]['p50'].samples[-1]:.2f}/{stats[m]['p99'].samples[-1]:.2f}" for m in TAIL_MODES))
    rmtree(d / "live")
    return {"tail": stats, "tail_lines": counted, "tail_client_cpu": client_cpu, "tail_api_cpu": api_cpu,
            "tail_seconds": seconds, "noise_tail": noise}


def _run_tail(d: Path, api: Api, task: str, mode: str, lines: int) -> dict[str, Any]:
    """The client starts first (it waits for the log to appear), then the task; the client ends at the end event."""
    client = subprocess.Popen([sys.executable, "-m", "bench.api", "tail", api.tail_url(task, mode == "ws"),
                               "--mode", mode, "--warmup", str(TAIL_WARMUP_S)], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the tail client did not start")
        agent = subprocess.Popen([tool("logship"), "run", "--task", task, "--host", HOST, "--", sys.executable,
                                  "tail_task.py", str(lines), str(TAIL_RATE)], cwd=d,
                                 env=clean_env(LOGSHIP_SPOOL_DIR="live"), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL)
        if agent.wait() != 0:
            raise SystemExit(f"bench: the tail task under logship run failed ({agent.returncode})")
        out, _ = client.communicate(timeout=60)
        if client.returncode != 0:
            raise SystemExit(f"bench: the tail client failed ({client.returncode}); see its stderr above")
        res: dict[str, Any] = json.loads(out)
        return res
    finally:
        for p in (client, agent):
            if p is not None:
                _stop(p, 5.0)


# --- 4: memory under 10 downloads + 100 tails ----------------------------------------------------


def load(d: Path, server: Server, logs: dict[str, Any], runs: int, seconds: float) -> dict[str, Any]:
    """A fresh API beside a running 1,000 lines/s task: 100 WebSocket tails of it (one client process),
    then 10 downloads of the zstd log at all times for `seconds` (curl processes; one that finishes or breaks
    is followed by another). VmHWM of the API; downloads that broke are counted."""
    (d / "tail_task.py").write_text(TAIL_TASK)
    hwm = Series("API VmHWM under load", "MB")
    rss_max = Series("API VmRSS, sampled max", "MB")
    idle = Series("API VmRSS before the load", "MB")
    served = Series("downloaded by the 10 clients", "GB")
    rate = Series("download rate of the 10 together", "GB/s")
    msgs = Series("tail messages received by the 100 clients", "messages")
    broken = Series("downloads that broke under load", "downloads")
    errors: list[str] = []
    noise = Series("share of the CPU other processes used during the timed runs", "%")
    for r in range(runs):
        settle()
        task = f"load-{r}"
        with serve(d, server, "live", f"load-{r}") as api:
            idle.samples.append(api.status().get("VmRSS", 0) * 1024 / 1e6)
            sampler = _RssSampler(api)
            agent = subprocess.Popen([tool("logship"), "run", "--task", task, "--host", HOST, "--", sys.executable,
                                      "tail_task.py", str(int((seconds + 60) * TAIL_RATE)), str(TAIL_RATE)], cwd=d,
                                     env=clean_env(LOGSHIP_SPOOL_DIR="live"), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL)
            tailers: subprocess.Popen[str] | None = None
            downloads = _Downloads(api.log_url("dl-zstd"), logs["size"], seconds)
            try:
                _wait_log(api, task)
                tailers = subprocess.Popen([sys.executable, "-m", "bench.api", "tails",
                                            api.tail_url(task, True, "lines=100"), "--count", str(LOAD_TAILS)],
                                           cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
                assert tailers.stdout is not None
                if tailers.stdout.readline().strip() != "ready":
                    raise SystemExit("bench: the 100 tail clients did not connect")
                window = OthersWindow()
                began = time.perf_counter()
                downloads.run()
                wall = time.perf_counter() - began
                tailers.send_signal(signal.SIGTERM)
                out, _ = tailers.communicate(timeout=30)
                res = json.loads(out)
                noise.samples.append(window.share() * 100)
            finally:
                downloads.stop()
                for p in (tailers, agent):
                    if p is not None:
                        _stop(p, 5.0)
                peak = sampler.stop()
            if downloads.broken and not errors:
                errors.append(f"{downloads.errors[0]}; the API logged {api.first_error()}")
            if res["connected"] != LOAD_TAILS or res["errors"]:
                raise SystemExit(f"bench: {res['connected']} of {LOAD_TAILS} tails stayed connected; "
                                 f"errors: {res['errors'][:3]}")
            hwm.samples.append(peak["VmHWM"] * 1024 / 1e6)
            rss_max.samples.append(peak["VmRSS"] * 1024 / 1e6)
            served.samples.append(downloads.bytes / 1e9)
            rate.samples.append(downloads.bytes / wall / 1e9)
            msgs.samples.append(res["messages"])
            broken.samples.append(downloads.broken)
        say(f"  load round {r + 1}/{runs}: API VmHWM {hwm.samples[-1]:.1f} MB (idle {idle.samples[-1]:.1f}); "
            f"downloads: {served.samples[-1]:.2f} GB in {wall:.1f} s, {downloads.complete} complete, "
            f"{downloads.broken} broke; 100 tails got {res['messages']:,} messages")
    if errors:
        say(f"  a download under load broke: {errors[0]}")
    rmtree(d / "live")
    return {"rss": hwm, "rss_sampled": rss_max, "rss_idle": idle, "load_bytes": served, "load_rate": rate,
            "load_messages": msgs, "load_broken": broken, "load_errors": errors[:1], "load_seconds": seconds,
            "noise_load": noise}


class _Downloads:
    """LOAD_DOWNLOADS slots, each running `curl -o /dev/null URL` again and again until `seconds` have passed
    (the last one cut off by --max-time): 10 downloads in flight at all times, whatever breaks."""

    def __init__(self, url: str, size: int, seconds: float) -> None:
        self.url, self.size, self.seconds = url, size, seconds
        self.bytes = self.complete = self.broken = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()
        self._stopping = False

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        slots = [threading.Thread(target=self._slot, args=(deadline,)) for _ in range(LOAD_DOWNLOADS)]
        for t in slots:
            t.start()
        for t in slots:
            t.join()

    def _slot(self, deadline: float) -> None:
        while not self._stopping and (left := deadline - time.monotonic()) > 0.2:
            with self._lock:
                p = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", f"{left:.3f}", "-w",
                                      "%{size_download} %{http_code}", self.url], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self._procs.add(p)
            out, _ = p.communicate()
            with self._lock:
                self._procs.discard(p)
                n, _, status = (out or "0 0").partition(" ")
                self.bytes += int(n)
                if p.returncode == 0 and status == "200" and int(n) == self.size:
                    self.complete += 1
                elif p.returncode != 28 and not self._stopping:  # 28: cut off at the deadline
                    self.broken += 1
                    self.errors.append(f"curl exit {p.returncode}, HTTP {status}, {n} of {self.size} bytes")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for p in procs:
            _stop(p, 1.0)


class _RssSampler:
    """The API's VmRSS (max seen) and VmHWM (the kernel's peak), from /proc every 10 ms."""

    def __init__(self, api: Api) -> None:
        self.api, self.peak, self._done = api, {"VmRSS": 0, "VmHWM": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.01):
            for k, v in self.api.status().items():
                self.peak[k] = max(self.peak[k], v)

    def stop(self) -> dict[str, int]:
        for k, v in self.api.status().items():  # VmHWM once more, before the API stops
            self.peak[k] = max(self.peak[k], v)
        self._done.set()
        self._thread.join()
        return self.peak


# --- the table -----------------------------------------------------------------------------------


def rows_for(a: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Rows and notes for bench/__main__.py's table."""
    from .__main__ import Row, paired
    from ._util import GiB

    rows: list[Any] = []
    notes: list[str] = []
    sp = a["speed"]
    gb = f"{a['bytes'] / GiB:g} GiB"
    # (ours, baseline, what, must, aim). A client that asks for the log as it is (no Accept-Encoding) makes
    # the API decompress: like with like, that is GET + zstd -d; next to a plain GET of 3.6x fewer bytes it
    # can only be info (one core decompresses ~0.8 GB/s). With Accept-Encoding: zstd the API sends the same
    # objects the plain GET fetches: the bar.
    judged = [("zstd enc", "zstd get", "zstd, Accept-Encoding: zstd, vs plain GET of the objects (the issue's bar)",
               0.8, 0.95),
              ("zstd enc+zstd -d", "zstd get+zstd -d", "zstd, Accept-Encoding: zstd, | zstd -d vs GET | zstd -d",
               0.8, 0.95),
              ("zstd api", "zstd get+zstd -d", "zstd, decompressed by the API, vs GET | zstd -d, like with like",
               0.8, 0.95),
              ("zstd api", "zstd get", "zstd, decompressed by the API, vs plain GET of the objects", None, None),
              ("none api", "none get", "none vs plain GET of the objects", 0.8, 0.95)]
    for ours, base, what, must, aim in judged:
        if ours in sp and base in sp:
            rows.append(Row(f"download {gb} via the API, {what} (log GB/s)", sp[base].spread(), sp[ours].spread(),
                            paired(ours, sp[ours], sp[base]), must, aim))
    names = {"zstd": "from the store, zstd", "none": "from the store, none", "spool": "from the spool"}
    for key, s in a["ttfb"].items():  # baseline: the store's own first byte of the object read first
        src, rng = key.split()
        judge = src != "spool"
        base = a["store_ttfb"][key].spread(1) if judge else "-"
        rows.append(Row(f"first byte (ms), {'whole log' if rng == 'whole' else 'Range in the last segment'}, "
                        f"{names[src]}", base, s.spread(1), None, 50 if judge else None, 10 if judge else None,
                        higher=False, value=s.median))
    for mode, st in a["tail"].items():
        client = "WebSocket" if mode.startswith("ws") else "SSE"
        beside = ", logship watch beside" if mode.endswith("watch") else ""
        for q, must, aim in (("p50", 10, 2), ("p99", 50, 5)):
            info = bool(beside)
            rows.append(Row(f"live tail {a['tail_seconds']:g} s at 1,000 lines/s, {client}{beside}, {q} (ms)", "-",
                            st[q].spread(2), None, None if info else must, None if info else aim, higher=False,
                            value=st[q].median))
    rows.append(Row("API peak RSS (MB), 10 downloads + 100 tails; judged on the max", "-", a["rss"].spread(1),
                    None, 150, 100, higher=False, value=max(a["rss"].samples)))
    rows.append(Row("downloads that broke under that load (per round); judged on the max", "-",
                    a["load_broken"].spread(0), None, 0, 0, higher=False, value=max(a["load_broken"].samples)))
    notes.append(f"download baselines: curl (SigV4) GETs every segment object in order on one connection, to "
                 f"/dev/null; with zstd -d -o /dev/null reading its stdout. Ours: curl -o /dev/null of /log, without "
                 f"and with '{ACCEPT_ZSTD}' (then the body is the stored objects; piped into zstd -d on the second "
                 "row). "
                 f"Speeds are log bytes / wall time; the objects hold {a['stored']['zstd'] / 1e6:.0f} MB (zstd), "
                 f"{a['stored']['none'] / 1e6:.0f} MB (none)")
    notes.append("first byte: a new connection per request, from connect to the first byte of the body, "
                 f"median of {a['ttfb_requests']} after {a['ttfb_warm']} warm-up ones; the baseline is the same "
                 "client's presigned GET of the segment object the API reads first (for a zstd Range: from its start)")
    notes.append("download CPU s: " + ", ".join(f"{k} {v.spread(2)}" for k, v in a["cpu"].items())
                 + "; the API's own: " + ", ".join(f"{k} {v.spread(2)}" for k, v in a["api_cpu"].items()))
    notes.append("live tail, each client: " + "; ".join(
        f"{m} p99.9 {st['p99.9'].spread(1)} ms, max {st['max'].spread(1)} ms, "
        f"{a['tail_lines'][m].median:,.0f} lines" for m, st in a["tail"].items()))
    notes.append("live tail CPU s: the API " + ", ".join(f"{m} {v.spread(2)}" for m, v in a["tail_api_cpu"].items())
                 + "; the client " + ", ".join(f"{m} {v.spread(2)}" for m, v in a["tail_client_cpu"].items()))
    notes.append(f"API memory: VmRSS idle {a['rss_idle'].spread(1)} MB, sampled max under load "
                 f"{a['rss_sampled'].spread(1)} MB; the 10 downloads (curl, cut at {a['load_seconds']:g} s) got "
                 f"{a['load_bytes'].spread(2)} GB at {a['load_rate'].spread(2)} GB/s together, the 100 tails "
                 f"{a['load_messages'].spread(0)} messages; clients in their own processes, sharing the 2 cores")
    notes.append("noise, api by measurement: " + ", ".join(
        f"{k} {a['noise_' + k].spread(0)} %" for k in ("download", "tail", "load", "fanout") if "noise_" + k in a))
    if "fanout" in a:
        from . import fanout

        rows += fanout.rows_for(a)
    if a["load_errors"]:
        notes.append(f"a download that broke under load: {a['load_errors'][0].splitlines()[0]}")
    return rows, notes


# --- the clients (own processes) -----------------------------------------------------------------


def _client(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.api", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench: client {args[0]} failed:\n{out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout)
    return res


def client_ttfb(url: str, count: int, warm: int, range_from: int | None) -> dict[str, Any]:
    """Time from connect to the first body byte, new connection each time (as curl would); the rest is not read."""
    host_port, _, path = url.removeprefix("http://").partition("/")  # path with its query
    host, port = host_port.rsplit(":", 1)
    head = f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    if range_from is not None:
        head += f"Range: bytes={range_from}-\r\n"
    request = (head + "\r\n").encode()
    ms = []
    for i in range(warm + count):
        began = time.perf_counter()
        with socket.create_connection((host, int(port))) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            buf = b""
            while (end := buf.find(b"\r\n\r\n")) < 0 or len(buf) == end + 4:
                data = s.recv(1 << 16)
                if not data:
                    raise SystemExit(f"ttfb: {url}: connection closed after {len(buf)} bytes")
                buf += data
            took = (time.perf_counter() - began) * 1e3
        status = buf.split(b" ", 2)[1]
        if status != (b"206" if range_from is not None else b"200"):  # the store answers a range with 206 too
            raise SystemExit(f"ttfb: {url}: status {status.decode()}: {buf[:300]!r}")
        if i >= warm:
            ms.append(took)
        time.sleep(TTFB_GAP_S)
    return {"ms": ms}


def _percentile(s: list[float], q: float) -> float:
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def client_tail(url: str, mode: str, warmup: float) -> dict[str, Any]:  # noqa: C901  (WebSocket and SSE, one loop)
    """Follow the log until its end event; per line, receive time - the write time it carries."""
    import aiohttp

    print("ready", flush=True)
    lat: list[float] = []
    seen: list[int] = []
    first_ns = 0
    partial = ""
    deadline = time.monotonic() + 60
    cpu0 = time.process_time()

    def take(data: str, now: int) -> None:
        nonlocal first_ns, partial
        text = partial + data
        lines = text.split("\n")
        partial = lines.pop()
        for line in lines:
            ns_s, i_s = line.split(" ", 2)[:2]
            ns, i = int(ns_s), int(i_s)
            seen.append(i)
            first_ns = first_ns or ns
            if ns - first_ns >= warmup * 1e9:
                lat.append((now - ns) / 1e6)

    async with aiohttp.ClientSession(read_bufsize=1 << 20) as session:
        while True:  # the log appears when the task starts
            try:
                if mode == "ws":
                    ws = await session.ws_connect(url, max_msg_size=0)
                else:
                    resp = await session.get(url, headers={"Accept": "text/event-stream"})
                    if resp.status != 200:
                        resp.release()
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                break
            except aiohttp.ClientResponseError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)
        if mode == "ws":
            async for msg in ws:
                now = time.time_ns()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                doc = json.loads(msg.data)
                if "event" in doc:
                    if doc["event"] == "end":
                        break
                    continue
                take(doc["data"], now)
            await ws.close()
        else:
            async for raw in resp.content:
                if not raw.startswith(b"data: "):
                    continue
                now = time.time_ns()
                doc = json.loads(raw[6:])
                if "event" in doc:
                    if doc["event"] == "end":
                        break
                    continue
                take(doc["data"], now)
            resp.release()
    lat.sort()
    dups = len(seen) - len(set(seen))
    missing = (max(seen) - min(seen) + 1 - len(set(seen))) if seen else 0
    return {"n": len(lat), "p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99),
            "p99.9": _percentile(lat, 0.999), "max": lat[-1] if lat else float("nan"), "missing": missing,
            "duplicates": dups, "cpu": time.process_time() - cpu0}


async def client_tails(url: str, count: int) -> dict[str, Any]:
    """`count` WebSocket followers of one log, reading (and counting) until SIGTERM."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    messages = 0
    errors: list[str] = []
    async with aiohttp.ClientSession() as session:
        socks = await asyncio.gather(*(session.ws_connect(url, max_msg_size=0) for _ in range(count)))
        print("ready", flush=True)
        alive = [True] * count

        async def read(k: int) -> None:
            nonlocal messages
            async for msg in socks[k]:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                messages += 1
            if not stop.is_set():
                alive[k] = False
                errors.append(f"tail {k} closed: {socks[k].close_code}")

        readers = [asyncio.create_task(read(k)) for k in range(count)]
        await stop.wait()
        connected = sum(alive)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    return {"connected": connected, "messages": messages, "errors": errors}


def client_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api", description="the API bench's clients")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("ttfb")
    t.add_argument("url")
    t.add_argument("--count", type=int, default=TTFB_REQUESTS)
    t.add_argument("--warm", type=int, default=TTFB_WARM)
    t.add_argument("--range-from", type=int)
    f = sub.add_parser("tail")
    f.add_argument("url")
    f.add_argument("--mode", choices=("ws", "sse"), default="ws")
    f.add_argument("--warmup", type=float, default=TAIL_WARMUP_S)
    m = sub.add_parser("tails")
    m.add_argument("url")
    m.add_argument("--count", type=int, default=LOAD_TAILS)
    a = ap.parse_args(argv)
    out: TextIO = sys.stdout
    if a.cmd == "ttfb":
        res = client_ttfb(a.url, a.count, a.warm, a.range_from)
    elif a.cmd == "tail":
        res = asyncio.run(client_tail(a.url, a.mode, a.warmup))
    else:
        res = asyncio.run(client_tails(a.url, a.count))
    out.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
