"""Daemon logs (issue 16, item 10): real `logship watch` and `logship serve` processes say what they do, one
line per event, as text or JSON lines; quiet about watchfiles and the access log unless asked; no token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from shipper.commands import s3local

from .support import LOGSHIP, Api, Proxy, env_for, run_agent, start_agent, stop_agent

TOKEN = "read-token-" + "r" * 16
QUERY_TOKEN = "query-token-" + "q" * 16
# a task that writes for a while (so checkpoints of its open segment happen), then exits 3
SLOW_TASK = "import sys, time\nfor i in range(12):\n    print('line', i, flush=True); time.sleep(0.1)\nsys.exit(3)"
SLOW_BYTES = len("".join(f"line {i}\n" for i in range(12)))


class Stderr:
    """A process's stderr lines, read as they come (a thread), so a test can wait for one."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, found: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found(line):
                    return line
            time.sleep(0.05)
        raise AssertionError("not logged; the log was:\n" + "\n".join(self.lines))

    def join(self) -> None:
        self._thread.join(10)


def events(lines: list[str]) -> list[dict[str, Any]]:
    """Every line as the JSON object it must be."""
    out = []
    for line in lines:
        doc = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= doc.keys(), line
        out.append(doc)
    return out


def test_the_watcher_says_what_it_does_in_text(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = env_for(spool, {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}",
                          "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "0.2"})
    watcher = subprocess.Popen([*LOGSHIP, "watch", "--log-level", "debug"], env=env, stderr=subprocess.PIPE)
    assert watcher.stderr is not None
    err = Stderr(watcher.stderr)
    try:
        err.wait_for(lambda s: "watcher started" in s)
        res = run_agent(spool, "slow", [sys.executable, "-c", SLOW_TASK], env=env)
        assert res.returncode == 3, res.stderr
        err.wait_for(lambda s: "slow/h1: log finished" in s)
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(30)
        err.join()
    text = "\n".join(err.lines)
    assert f"INFO logship.watcher watcher started: spool {spool}, store file://{tmp_path / 'archive'}, " \
           "checkpoint every 0.2 s" in text, text
    assert "INFO logship.watcher slow/h1: shipping run " in text
    assert "DEBUG logship.watcher slow/h1: checkpoint of open segment 1 at " in text  # debug: it is frequent
    shipped = err.wait_for(lambda s: "slow/h1: segment 1 shipped" in s)
    assert f" shipped, {SLOW_BYTES} bytes (" in shipped and " stored) in " in shipped, shipped
    assert "INFO logship.watcher slow/h1: log finished, exit code 3; all shipped (1 segments)" in text
    assert "watcher stopped: passes=" in err.lines[-1]
    # every line is one event with a UTC time; watchfiles stays quiet even at debug (not asked for by name)
    assert all(line[:4].isdigit() and line[23] == "Z" for line in err.lines), text
    assert "watchfiles" not in text and "changes detected" not in text


def test_the_watcher_logs_json_lines_with_each_events_fields(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = env_for(spool, {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}",
                          "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "0.2"})
    agent = start_agent(spool, "slow", [sys.executable, "-c", SLOW_TASK], env=env, stdout=subprocess.DEVNULL)
    watcher = subprocess.Popen([*LOGSHIP, "--log-format", "json", "watch"], env=env, stderr=subprocess.PIPE)
    assert watcher.stderr is not None
    err = Stderr(watcher.stderr)
    try:
        assert agent.wait(60) == 3
        err.wait_for(lambda s: '"log_finished"' in s)
    finally:
        stop_agent(agent, spool, "slow")
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(30)
        err.join()
    docs = events(err.lines)
    by_event = {d.get("event"): d for d in docs}
    assert by_event["watcher_started"]["spool"] == str(spool) and by_event["watcher_started"]["interval"] == 0.2
    assert by_event["log_started"]["task"] == "slow" and by_event["log_started"]["host"] == "h1"
    shipped = by_event["segment_shipped"]
    assert (shipped["task"], shipped["host"], shipped["seq"], shipped["bytes"]) == ("slow", "h1", 1, SLOW_BYTES)
    assert shipped["stored_bytes"] > 0 and 0 <= shipped["seconds"] < 30 and shipped["level"] == "info"
    assert shipped["msg"].startswith(f"slow/h1: segment 1 shipped, {SLOW_BYTES} bytes")
    finished = by_event["log_finished"]
    assert (finished["exit_code"], finished["status"]) == (3, "finished")
    assert by_event["watcher_stopped"]["segments_uploaded"] == 1
    assert "checkpoint" not in by_event  # a debug event: not at the default level
    assert not [d for d in docs if d["logger"].startswith("watchfiles")]
    assert all(d["ts"].endswith("Z") and d["level"] in ("info", "warning") for d in docs)


async def test_the_watcher_says_when_it_retries_and_when_the_store_is_back(
        tmp_path: Path, local_s3: s3local.LocalS3) -> None:
    spool = tmp_path / "spool"
    proxy = Proxy(local_s3.port)
    async with proxy as endpoint:
        proxy.drop = 6  # the next six requests get a reset: the store is down for a few passes
        env = env_for(spool, {**local_s3.env(), "LOGSHIP_STORE_URL": f"s3://{local_s3.bucket}/logs-{tmp_path.name}/",
                              "LOGSHIP_STORE_ENDPOINT": endpoint})
        assert run_agent(spool, "t", ["echo", "hello"], env=env).returncode == 0
        watcher = subprocess.Popen([*LOGSHIP, "watch", "--log-format", "json"], env=env, stderr=subprocess.PIPE)
        assert watcher.stderr is not None
        err = Stderr(watcher.stderr)
        try:
            deadline = time.monotonic() + 60
            while not any('"log_finished"' in s for s in err.lines) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(30)
            err.join()
    by_event: dict[str, list[dict[str, Any]]] = {}
    for d in events(err.lines):
        by_event.setdefault(d.get("event", ""), []).append(d)
    retry = by_event["retrying"][0]
    assert retry["level"] == "warning" and retry["what"] == "the store" and retry["attempt"] == 1
    assert 0.1 < retry["delay"] <= 0.2 and retry["error"], retry
    assert retry["msg"].startswith("the store failed, retrying in 0.")
    back = by_event["recovered"][0]
    assert back["what"] == "the store" and back["attempts"] >= 1 and back["msg"].startswith("the store works again")
    assert by_event["log_finished"][0]["task"] == "t"


def test_serve_says_where_it_listens_never_a_token_nor_each_request(tmp_path: Path) -> None:
    api = Api(tmp_path, LOGSHIP_API_TOKENS=TOKEN, LOGSHIP_API_QUERY_TOKENS=QUERY_TOKEN, LOGSHIP_LOGGING_FORMAT="json")
    api.start()
    try:
        _get(f"{api.url}/api/v1/tasks?token={TOKEN}", TOKEN)
    finally:
        api.stop()
    log = (tmp_path / "serve.log").read_text()
    docs = events(log.splitlines())
    listening = [d for d in docs if d.get("event") == "api_listening"]
    assert len(listening) == 1 and listening[0]["address"] == f"127.0.0.1:{api.port}", log
    assert (listening[0]["tokens"], listening[0]["query_tokens"]) == (1, 1)
    assert listening[0]["store"] == f"file://{tmp_path / 'archive'}" and listening[0]["spool"] == str(api.spool)
    assert TOKEN not in log and QUERY_TOKEN not in log
    assert not [d for d in docs if d["logger"] == "aiohttp.access"]  # quiet unless asked

    # asked for by name: a line per request, with the URL's token taken out
    (tmp_path / "serve.log").unlink()
    api = Api(tmp_path, LOGSHIP_API_TOKENS=TOKEN, LOGSHIP_LOGGING_LEVEL="info,aiohttp.access=info")
    api.start()
    try:
        _get(f"{api.url}/api/v1/tasks/t/hosts/h/log?token={TOKEN}", None)
    finally:
        api.stop()
    log = (tmp_path / "serve.log").read_text()
    assert f"INFO logship.api API listening on http://127.0.0.1:{api.port}, store file://" in log
    assert ", 1 tokens and 0 of the query scope" in log
    access = [line for line in log.splitlines() if " aiohttp.access " in line]
    assert access and "GET /api/v1/tasks/t/hosts/h/log?token=<redacted> HTTP/1.1\" 404" in access[-1], log
    assert TOKEN not in log


def _get(url: str, token: str | None) -> None:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with contextlib.suppress(urllib.error.HTTPError):  # a 404 is an answer too: it is the log line that counts
        urllib.request.urlopen(req, timeout=10).close()


def test_a_daemon_that_gives_up_says_why_in_its_log_format(tmp_path: Path) -> None:
    env = env_for(tmp_path / "spool", {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}"})
    # a bad setting: the command's error, as one JSON line with its hint
    res = subprocess.run([*LOGSHIP, "serve", "--log-format", "json"], env={**env, "LOGSHIP_API_LISTEN": "0.0.0.0:1"},
                         capture_output=True, timeout=60)
    (doc,) = events(res.stderr.decode().splitlines())
    assert res.returncode == 2 and doc["event"] == "giving_up" and doc["level"] == "error"
    assert "api.tokens is empty" in doc["msg"] and "set api.tokens" in doc["hint"]
    # the port is taken: one JSON line saying so, with the key that sets it, and no traceback
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([*LOGSHIP, "serve", "--log-format", "json"],
                             env={**env, "LOGSHIP_API_LISTEN": f"127.0.0.1:{port}"}, capture_output=True, timeout=60)
    (doc,) = events(res.stderr.decode().splitlines())
    assert res.returncode == 2 and doc["event"] == "giving_up" and doc["level"] == "error"
    assert f"127.0.0.1:{port}" in doc["msg"] and "api.listen" in doc["hint"] and "Traceback" not in doc.get("exc", "")
    # in text, as before: `logship: what (hint: …)`
    res = subprocess.run([*LOGSHIP, "serve"], env={**env, "LOGSHIP_API_LISTEN": "0.0.0.0:1"}, capture_output=True,
                         timeout=60)
    assert res.stderr.decode().startswith("logship: api.listen = '0.0.0.0:1' is not a loopback address")
    res = subprocess.run([*LOGSHIP, "watch", "--log-level", "loud"], env=env, capture_output=True, timeout=60)
    assert res.returncode == 2 and b"--log-level 'loud'" in res.stderr and b"debug, info" in res.stderr
