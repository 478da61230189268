"""Many hosts, one API: two spools, two API processes and one store (a real SeaweedFS)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from shipper.commands import s3local

from .support import LOGSHIP, env_for, free_port, spooled, start_agent, start_watcher, stop_agent, wait_serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


Procs = list[subprocess.Popen[bytes]]


@pytest.fixture
def procs() -> Iterator[Procs]:
    """The processes a test starts (APIs, watchers): each is killed and reaped at the test's end, however far
    it got (an API that failed to start leaves the one started before it stopped too)."""
    started: Procs = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
        for p in started:
            p.wait()


async def start_api(env: dict[str, str], procs: Procs) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen([*LOGSHIP, "serve"], env={**env, "LOGSHIP_API_LISTEN": f"127.0.0.1:{port}"},
                         stderr=subprocess.DEVNULL)
    procs.append(p)
    url = f"http://127.0.0.1:{port}"
    assert await asyncio.to_thread(wait_serving, p, url), f"logship serve exited {p.returncode}"
    return p, url


USER = secrets.token_urlsafe(24)  # the user's token: the central API's api.tokens
NODE = secrets.token_urlsafe(24)  # the central API's own token (api.proxy_token): the node's api.tokens


async def get(url: str, token: str = USER) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def test_central_api_proxies_live_requests_and_falls_back_to_checkpoints(
        local_s3: s3local.LocalS3, tmp_path: Path, procs: Procs) -> None:
    store = {"LOGSHIP_STORE_URL": f"s3://{local_s3.bucket}/t-{secrets.token_hex(4)}/",
             "LOGSHIP_STORE_ENDPOINT": local_s3.endpoint, "AWS_ACCESS_KEY_ID": local_s3.access_key,
             "AWS_SECRET_ACCESS_KEY": local_s3.secret_key, "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "5"}
    spool_a, spool_b = tmp_path / "a", tmp_path / "b"
    env_a = env_for(spool_a, store, LOGSHIP_API_TOKENS=NODE)
    env_b = env_for(spool_b, store, LOGSHIP_API_TOKENS=USER, LOGSHIP_API_PROXY_ALLOW="127.0.0.1",
                    LOGSHIP_API_PROXY_TOKEN=NODE)
    api_a, url_a = await start_api(env_a, procs)
    _, url_b = await start_api(env_b, procs)
    procs.append(start_watcher({**env_a, "LOGSHIP_WATCH_API_URL": url_a}, stderr=subprocess.DEVNULL))
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    script = (f"import os, time\nprint('before the first checkpoint', flush=True)\n"
              f"while not os.path.exists({str(gate1)!r}): time.sleep(0.01)\n"
              "print('newer than any checkpoint', flush=True)\n"
              f"while not os.path.exists({str(gate2)!r}): time.sleep(0.01)\nprint('the end')\n")
    agent = start_agent(spool_a, "spread", [sys.executable, "-c", script], env=env_a)
    log_b = f"{url_b}/api/v1/tasks/spread/hosts/h1/log"
    try:
        deadline = time.monotonic() + 90  # a watcher's start and first pass: tens of seconds on a loaded machine
        while True:  # B knows the log once A's watcher checkpointed it
            async with aiohttp.ClientSession() as http, \
                    http.get(log_b, headers={"Authorization": f"Bearer {USER}"}) as r:
                if r.status == 200 and await r.read():
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        gate1.touch()
        while b"newer" not in spooled(spool_a, "spread"):
            await asyncio.sleep(0.01)
        # at once, well within the 5 s checkpoint interval: only A's spool has it; B asked A with its own
        # token (A does not take the user's)
        assert await get(log_b) == spooled(spool_a, "spread")
        async with aiohttp.ClientSession() as http, http.get(f"{url_a}/api/v1/tasks/spread/hosts/h1/log",
                                                             headers={"Authorization": f"Bearer {USER}"}) as r:
            assert r.status == 401
        api_a.kill()
        api_a.wait()
        body = await get(log_b)  # A is gone: B serves the newest checkpoint
        assert spooled(spool_a, "spread").startswith(body) and body.startswith(b"before the first checkpoint\n")
        gate2.touch()
        assert agent.wait(60) == 0
        async with aiohttp.ClientSession() as http, \
                http.get(log_b + "?follow=true", headers={"Authorization": f"Bearer {USER}"}) as r:
            assert await asyncio.wait_for(r.read(), 30) == spooled(spool_a, "spread")
    finally:
        stop_agent(agent, spool_a, "spread")
