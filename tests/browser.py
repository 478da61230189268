"""Helpers for the browser tests (tests/test_web*.py): a real stack (SeaweedFS, agents,
a watcher, `logship serve`), Debian's chromium driven by Playwright, and ways to read the page's rows."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.commands import s3local
from shipper.format import names

from .support import (
    LOGSHIP,
    agent_env,
    config,
    free_port,
    run_agent,
    start_agent,
    start_watcher,
    stop_agent,
    wait_serving,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_ROWS = 5000  # app.js keeps at most this many line elements
SHOWN = 20_000  # lines.js MAX_LINE_CHARS: what a row shows of a longer line

Browser = Any  # playwright.sync_api.Browser (imported only when the browser tests run)
Page = Any


# --- the stack --------------------------------------------------------------------------------


class Stack:
    """A spool, a store under a fresh prefix of the session's SeaweedFS, and the processes around them."""

    def __init__(self, tmp_path: Path, s3: s3local.LocalS3, **env: str) -> None:
        self.tmp = tmp_path
        self.cfg = config(tmp_path, **{"LOGSHIP_STORE_URL": f"s3://{s3.bucket}/t-{secrets.token_hex(4)}/",
                                       "LOGSHIP_STORE_ENDPOINT": s3.endpoint, "LOGSHIP_STORE_ACCESS_KEY": s3.access_key,
                                       "LOGSHIP_STORE_SECRET_KEY": s3.secret_key,
                                       "LOGSHIP_WATCH_CHECKPOINT_SECONDS": "0.5", **env})
        self.env = agent_env(self.cfg)
        self.spool = self.cfg.spool_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agents: list[tuple[subprocess.Popen[bytes], str, str]] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def run(self, task: str, script: str, host: str = "h1") -> subprocess.CompletedProcess[bytes]:
        return run_agent(self.spool, task, [sys.executable, "-c", script], host=host, env=self.env)

    def start(self, task: str, script: str, host: str = "h1") -> subprocess.Popen[bytes]:
        p = start_agent(self.spool, task, [sys.executable, "-c", script], host=host, env=self.env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.agents.append((p, task, host))
        wait_for(lambda: (self.spool / task / host / names.RUN_FILE).exists(), 20, "the agent did not start")
        return p

    def watcher(self, **env: str) -> None:
        self.procs.append(start_watcher({**self.env, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def serve(self, port: int | None = None, **env: str) -> subprocess.Popen[bytes]:
        """`logship serve` on this stack's port (or `port`), once it answers."""
        port = port or self.port
        p = subprocess.Popen([*LOGSHIP, "serve"], env={**self.env, "LOGSHIP_API_LISTEN": f"127.0.0.1:{port}", **env},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        assert wait_serving(p, f"http://127.0.0.1:{port}"), p.stderr.read().decode() if p.stderr else p.returncode
        return p

    def close(self) -> None:
        for p, task, host in self.agents:
            stop_agent(p, self.spool, task, host)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def stack(tmp_path: Path, local_s3: s3local.LocalS3) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**env: str) -> Stack:
        made.append(Stack(tmp_path, local_s3, **env))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.close()


# The least any wait_for waits: its `timeout` is what the condition takes on an idle machine; on a loaded CI
# machine (a browser, SeaweedFS, agents and the API sharing two cores) it can take several times that. Waiting
# longer costs nothing when the condition comes, and a condition that never comes still fails.
MIN_WAIT_S = 60.0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` until it holds; AssertionError(`what`) after max(`timeout`, MIN_WAIT_S) seconds."""
    deadline = time.monotonic() + max(timeout, MIN_WAIT_S)
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: `infra/dev test` installs the Debian package (apt-get)")
        pytest.skip("no chromium on PATH: install the Debian package `chromium` (infra/dev test does, with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def new_page(browser: Browser, **context: Any) -> Iterator[Page]:
    """A page in a context of its own (`context`: Playwright's options, e.g. has_touch=True)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 720}, **context)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(60_000)  # a condition's deadline on a loaded machine, not a speed: it fails only if never
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, errors  # no uncaught exception in the page's script


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as pg:
        yield pg


def swipe(page: Page, selector: str, dy: float) -> None:
    """A finger drawn `dy` pixels down (up if negative) over `selector`, as the touchscreen sends it (a page of a
    context with has_touch=True): the browser's own touch events, and its scrolling of what they move."""
    box: dict[str, Any] = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 - dy / 2
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for k in range(1, 11):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y + dy * k / 10}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def rows(page: Page) -> list[dict[str, Any]]:
    """The log view's line rows as the page has them: number, stream, text (partial rows left out)."""
    result: list[dict[str, Any]] = page.eval_on_selector_all("#rows .r", """els => els.map(e => ({
        n: e.dataset.n ? Number(e.dataset.n) : null, stream: e.dataset.stream,
        err: e.classList.contains('e'), text: e.querySelector('.x').textContent}))""")
    return result


def edge_n(page: Page, which: str = "last") -> int:
    """The line number of the first or last row, read cheaply (no walk over 5,000 rows); 0 without rows."""
    n: int = page.evaluate(f"(document.querySelector('#rows').{which}ElementChild?.dataset.n ?? 0) * 1")
    return n


def texts(page: Page) -> list[str]:
    return [r["text"] for r in rows(page)]


def conn_state(page: Page) -> str:
    state: str = page.get_attribute("#conn", "data-state")
    return state


def all_rows(page: Page) -> list[dict[str, Any]]:
    """Every row of the log view (numbered and partial): number, text without its "… more" note, the note, and its
    classes (`cont`: begun before the bytes read; `maybe`: may have, its start not found)."""
    got: list[dict[str, Any]] = page.eval_on_selector_all("#rows .r, #partial .r", """els => els.map(e => {
        const x = e.querySelector('.x'), cut = [...x.querySelectorAll('.cut')].map((c) => c.textContent);
        let text = '';
        for (const n of x.childNodes) if (!(n.classList && n.classList.contains('cut'))) text += n.textContent;
        return {n: e.dataset.n ? Number(e.dataset.n) : null, text, cut: cut.join(''),
                partial: e.classList.contains('partial'), cont: e.classList.contains('cont'),
                maybe: e.classList.contains('maybe')};
    })""")
    return got


def expected_rows(lines: list[str]) -> list[dict[str, Any]]:
    """The rows of `lines`: a long one shows its first SHOWN characters and counts the others, exactly."""
    return [{"n": i + 1, "text": s[:SHOWN], "partial": False, "cont": False, "maybe": False,
             "cut": f" … {len(s) - SHOWN} more characters (in the download)" if len(s) > SHOWN else ""}
            for i, s in enumerate(lines)]


def spool_put(log_dir: Path) -> str:
    """A task's `put(f, s)`: s written to f, and waited for until the spool holds it (a line's part without its
    end goes there after 50 ms), so the log's chunks are known: a long line is several (partial) ones, not one
    the agent read whole, and each stream's parts lie in the order written."""
    return f"""
import glob, os, sys, time
written = 0
def put(f, s):
    global written
    f.write(s); f.flush(); written += len(s.encode())
    while sum(os.path.getsize(p) for p in glob.glob({str(log_dir)!r} + '/????????.log*')) < written:
        time.sleep(0.01)
"""
