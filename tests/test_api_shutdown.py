"""How answers end, against a real `logship serve`: a follow cut by the API's shutdown is a failed transfer
(the task's end is a clean one), and a client that stops reading early costs a counter, not an ERROR."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from shipper.format import names

from .support import Api, spooled, start_agent, stop_agent

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

TICKS = "import time\nfor i in range({n}):\n    print('tick %06d' % i, flush=True); time.sleep({gap})\n"


def metric(api: Api, name: str) -> int:
    with urllib.request.urlopen(f"{api.url}/metrics", timeout=10) as r:
        m = re.search(rf"^{name} (\d+)$", r.read().decode(), re.M)
    assert m, name
    return int(m.group(1))


def wait_for(cond: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


async def test_a_follow_cut_by_shutdown_is_a_failed_transfer(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.start()
    agent = start_agent(api.spool, "long", [sys.executable, "-c", TICKS.format(n=3000, gap=0.02)], env=api.env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    short = start_agent(api.spool, "short", [sys.executable, "-c", TICKS.format(n=40, gap=0.02)], env=api.env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: all((api.spool / t / "h1" / names.RUN_FILE).exists() for t in ("long", "short")), "logs")
        base = f"{api.url}/api/v1/tasks"
        out = {k: tmp_path / f"{k}.out" for k in ("log", "sse", "done")}
        curls = {"log": ["curl", "-sS", "-N", "-o", str(out["log"]), f"{base}/long/hosts/h1/log?follow=true"],
                 "sse": ["curl", "-sS", "-N", "-H", "Accept: text/event-stream", "-o", str(out["sse"]),
                         f"{base}/long/hosts/h1/tail?from=0"],
                 "done": ["curl", "-sS", "-N", "-o", str(out["done"]), f"{base}/short/hosts/h1/log?follow=true"]}
        procs = {k: subprocess.Popen(c, stderr=subprocess.PIPE) for k, c in curls.items()}
        # the task's end ends its follow cleanly, with every byte
        assert procs["done"].wait(30) == 0, procs["done"].stderr
        assert short.wait(10) == 0
        assert out["done"].read_bytes() == spooled(api.spool, "short")
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{base}/long/hosts/h1/tail?from=0".replace("http", "ws", 1))
            assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT
            wait_for(lambda: all(out[k].exists() and out[k].stat().st_size > 100 for k in ("log", "sse")),
                     "both follows got bytes")
            assert api.proc is not None
            api.proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=15)
            while msg.type == aiohttp.WSMsgType.TEXT:
                msg = await ws.receive(timeout=15)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
            await ws.close()
        for k in ("log", "sse"):
            rc = procs[k].wait(15)
            assert rc != 0, (k, "a follow cut by the API's shutdown must not look complete")
            stderr = procs[k].stderr
            assert stderr is not None
            err = stderr.read().decode()
            assert rc == 18 and "transfer closed" in err, (k, rc, err)  # the last chunk never came
        log = spooled(api.spool, "long")
        got = out["log"].read_bytes()
        assert got and log.startswith(got)  # what came is good: resume from its length
        api.proc.wait(15)
    finally:
        api.stop()
        stop_agent(agent, api.spool, "long")
        stop_agent(short, api.spool, "short")


async def test_a_client_that_stops_reading_all_hosts_early_is_counted_not_logged(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.start()
    try:
        # the client may go while the API writes the body, or after it wrote all of it into the socket's
        # buffers and before its last chunk: logs of sizes around those buffers' (~100 KB to a few MB)
        sizes = (3_000, 30_000, 100_000)  # lines of 33 bytes, per host
        script = "import sys\nfor i in range({n}):\n    sys.stdout.write('line %07d of a log long enough\\n' % i)\n"
        for n in sizes:
            for host in ("h1", "h2"):
                api.run(f"big{n}", script.format(n=n), host=host)
        for n in sizes:
            for _ in range(5):
                head = subprocess.run(["bash", "-c", f"curl -sS {api.url}/api/v1/tasks/big{n}/log | head -c 600"],
                                      capture_output=True, timeout=60)
                assert len(head.stdout) == 600 and head.stdout.startswith(f"==> big{n}/h1 (finished, ".encode())
        assert metric(api, "logship_api_downloads_cut_by_client_total") >= 5  # the larger ones, at least
        log = (tmp_path / "serve.log").read_text()
        assert "ERROR" not in log and "Traceback" not in log, log[-3000:]
    finally:
        api.stop()
