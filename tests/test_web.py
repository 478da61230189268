"""The web page in a real browser (Debian's chromium driven by Playwright) against a real stack: SeaweedFS,
agents, a watcher and `logship serve`. Also the chunk index route the page reads line numbers from."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.format import index

from .browser import MAX_ROWS, Browser, Page, Stack, conn_state, edge_n, rows, texts, wait_for
from .support import NASTY, ROOT, free_port, run_agent, spooled, watch_once

pytestmark = pytest.mark.timeout(300)

FINISHED = "#log-status[data-status=finished]"  # the badge once the log's last rows are shown
# The README's picture: rewritten by a run with LOGSHIP_UPDATE_SCREENSHOT=1, so that an ordinary test
# run leaves the work tree clean (it still takes the screenshot, into its temporary directory).
SCREENSHOT = ROOT / "docs" / "web.png"
RED = "\x1b[31m"
RESET = "\x1b[0m"

# --- live --------------------------------------------------------------------------------------


def ticker(n: int, gap: float, stderr_every: int = 0, start: int = 1, gate: tuple[int, Path] | None = None) -> str:
    """A task writing n numbered lines, one every `gap` s; every `stderr_every`-th to stderr; line 3 in red;
    with `gate` (i, path), line i waits until the file `path` exists."""
    at, path = gate or (-1, Path())
    return (f"import os, sys, time\nfor i in range({start}, {start + n}):\n"
            f"    while i == {at} and not os.path.exists({str(path)!r}): time.sleep(0.01)\n"
            f"    f = sys.stderr if {stderr_every} and i % {stderr_every or 1} == 0 else sys.stdout\n"
            f"    text = 'tick %04d' % i\n"
            "    if i == 3: text = 'tick 0003 \\x1b[31mred alert\\x1b[0m after'\n"
            f"    f.write(text + '\\n'); f.flush(); time.sleep({gap})\n")


def ticks(n: int, start: int = 1) -> list[str]:
    return ["tick 0003 red alert after" if i == 3 else f"tick {i:04d}" for i in range(start, start + n)]


def test_live_lines_appear_in_order_with_colours_and_streams(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    st.watcher()
    st.serve()
    n = 60
    go = st.tmp / "go"  # the second half only once the page shows the first lines, however slowly it opens
    proc = st.start("live", ticker(n, 0.2, stderr_every=5, gate=(n // 2 + 1, go)))
    page.goto(f"{st.base}/#/t/live/h1")
    page.wait_for_selector("#rows .r")
    seen: list[int] = []
    while proc.poll() is None:  # while it runs, the rows grow, always the first k lines in order
        got = texts(page)
        assert got == ticks(n)[:len(got)], got
        seen.append(len(got))
        go.touch()
        time.sleep(0.25)
    assert len(set(seen)) >= 5 and seen[0] <= n // 2, seen  # 30 lines every 0.2 s: seen growing, live
    page.wait_for_selector(FINISHED)
    assert proc.returncode == 0
    shown = rows(page)
    assert [r["text"] for r in shown] == ticks(n)
    assert [r["n"] for r in shown] == list(range(1, n + 1))
    assert [r["stream"] for r in shown] == ["stderr" if i % 5 == 0 else "stdout" for i in range(1, n + 1)]
    assert all(r["err"] == (r["stream"] == "stderr") for r in shown)  # stderr rows are marked
    # one badge says how it ended; a finished log has no Pause, Follow or connection state
    assert page.inner_text("#log-status") == "finished · exit 0"
    assert all(page.locator(sel).is_hidden() for sel in ("#conn", "#pause", "#follow")), page.inner_text("#log-tools")
    red = page.locator("#rows .r[data-n='3'] .x span")
    assert red.inner_text() == "red alert"
    r, g, b = map(int, red.evaluate("e => getComputedStyle(e).color").strip("rgb()").split(","))
    assert r > 180 and g < 100 and b < 100, (r, g, b)

    # stdout and stderr filters; timestamps and line numbers toggles
    page.uncheck("#show-err")
    assert not page.locator("#rows .r[data-n='5']").is_visible() and page.locator("#rows .r[data-n='4']").is_visible()
    page.check("#show-err")
    page.uncheck("#show-out")
    assert page.locator("#rows .r[data-n='5']").is_visible() and not page.locator("#rows .r[data-n='4']").is_visible()
    page.check("#show-out")
    assert not page.locator("#rows .r[data-n='1'] .t").is_visible()
    page.check("#show-ts")
    assert page.locator("#rows .r[data-n='1'] .t").inner_text().count(":") == 2
    page.uncheck("#show-n")
    assert not page.locator("#rows .r[data-n='1'] .n").is_visible()
    page.check("#show-n")
    page.click("#log")  # keys go to the log, not to the checkbox
    page.keyboard.press("Home")
    assert page.eval_on_selector("#log", "e => e.scrollTop") == 0
    page.keyboard.press("End")
    assert page.eval_on_selector("#log", "e => e.scrollHeight - e.scrollTop - e.clientHeight") < 4
    screenshot(page, st)


def test_awkward_output_is_shown_line_by_line(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    # The 5 MiB stdout line reaches the spool in parts (unterminated ones at the size cap, marked partial), so
    # the stderr line written just after it may arrive between them when the agent finds both pipes full:
    # then it is line 7, and the window the page opens at the end may begin after it. Here the task writes it
    # only once the spool holds every byte before it, as the agent reads it when it keeps up.
    head, cut, rest = NASTY.partition('w(err, b"\\x1b[1;32mbold green')
    assert cut, "NASTY changed: find its stderr line after the long one"
    before = subprocess.run([sys.executable, "-c", head], capture_output=True, check=True)
    log_dir = st.spool / "nasty" / "h1"
    wait = (f"import glob\nwhile sum(os.path.getsize(p) for p in glob.glob({str(log_dir)!r} + '/????????.log*'))"
            f" < {len(before.stdout) + len(before.stderr)}: time.sleep(0.01)\n")
    assert st.run("nasty", head + wait + cut + rest).returncode == 0
    assert b"L\n\x1b[1;32mbold green" in spooled(st.spool, "nasty")  # the long line, then the stderr one
    st.serve()
    page.goto(f"{st.base}/#/t/nasty/h1")
    page.wait_for_selector(FINISHED)
    got = {r["text"]: r for r in rows(page)}
    assert "bold green" in got, [t[:40] for t in got]
    assert got["bold green"]["stream"] == "stderr" and got["bold green"]["n"] == 8
    long = [r for r in rows(page) if r["text"].startswith("LLLL")]
    assert len(long) == 1 and long[0]["n"] == 7 and "more characters" in long[0]["text"]  # cut on screen
    partial = page.locator("#partial .r")
    assert partial.count() == 1 and partial.locator(".x").text_content() == "no final newline"
    page.keyboard.press("Home")
    page.wait_for_selector("#rows .r[data-n='1']")
    got = {r["text"]: r for r in rows(page)}
    # the first lines, each once (the view may hold all 8: filling itself at the end, it can reach the start)
    numbers = sorted(r["n"] for r in got.values())
    assert numbers[:6] == list(range(1, 7)) and numbers == list(range(1, len(numbers) + 1)), numbers
    assert got["red error"]["stream"] == "stderr" and got["plain line"]["stream"] == "stdout"
    assert got["invalid utf8 \ufffd\ufffd\ufffd( and NUL \u2400\u2400 inside"]["stream"] == "stdout"
    assert got["progress 100%"]["stream"] == "stdout"  # what a terminal shows after the carriage returns
    assert got["stdout between"]["n"] < got["half a line on stderr and its end"]["n"]  # one stderr line
    assert got["half a line on stderr and its end"]["stream"] == "stderr"


def screenshot(page: Page, st: Stack) -> None:
    """docs/web.png: a log with colours and both streams, as the README shows it."""
    demo = ("import sys, time\n"
            "E = '\\x1b['\n"
            "out, err = sys.stdout, sys.stderr\n"
            "lines = [(out, 'building 12 targets'), (out, E + '32m✔' + E + '0m compile  src/agent.c'),\n"
            "  (out, E + '32m✔' + E + '0m compile  src/spool.c'), (out, E + '33mwarning:' + E + '0m unused var q'),\n"
            "  (err, E + '31merror:' + E + '0m disk quota 91% on /var (retrying)'),\n"
            "  (out, E + '1;34m==>' + E + '0m upload 3 segments ' + E + '2m(zstd -1)' + E + '0m'),\n"
            "  (err, 'Traceback: TimeoutError at upload.py:88'), (out, E + '36mretry 1/5' + E + '0m in 0.5 s'),\n"
            "  (out, E + '32m✔' + E + '0m upload done: 48.2 MiB at 121 MB/s')]\n"
            "for i in range(4):\n"
            "    for f, text in lines:\n"
            "        f.write(text + '\\n'); f.flush(); time.sleep(0.01)\n")
    assert st.run("nightly-build", demo).returncode == 0
    page.set_viewport_size({"width": 1280, "height": 600})
    page.goto(f"{st.base}/#/t/nightly-build/h1")
    page.wait_for_selector("#rows .r[data-n='36']")
    page.wait_for_selector(FINISHED)
    page.fill("#q", "disk quota")
    shot = SCREENSHOT if os.environ.get("LOGSHIP_UPDATE_SCREENSHOT") == "1" else st.tmp / "web.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


def test_the_page_reconnects_after_an_api_restart(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    st.watcher()
    api = st.serve()
    n = 80
    proc = st.start("restart", ticker(n, 0.1, stderr_every=7))
    page.goto(f"{st.base}/#/t/restart/h1")
    wait_for(lambda: len(texts(page)) >= 10, 20, "no lines")
    assert conn_state(page) == "connected"

    assert page.inner_text("#log-status") == "running"  # while it runs: Pause, Follow and the connection
    assert all(page.locator(sel).is_visible() for sel in ("#conn", "#pause", "#follow"))
    page.click("#follow")  # the follow toggle: off, then on again jumps to the end
    assert page.get_attribute("#follow", "aria-pressed") == "false"
    page.keyboard.press("Home")
    assert page.eval_on_selector("#log", "e => e.scrollTop") == 0
    page.click("#follow")
    assert page.get_attribute("#follow", "aria-pressed") == "true"
    assert page.eval_on_selector("#log", "e => e.scrollHeight - e.scrollTop - e.clientHeight") < 4

    page.click("#pause")  # pause: no new lines; resume: they all come, from where it stopped
    assert conn_state(page) == "paused"
    held = len(texts(page))
    time.sleep(0.6)
    assert len(texts(page)) == held
    page.click("#pause")
    wait_for(lambda: len(texts(page)) > held + 5, 20, "no lines after resume")

    api.send_signal(signal.SIGKILL)
    api.wait()
    page.wait_for_selector("#conn[data-state=reconnecting]")
    before = len(texts(page))
    time.sleep(1.5)  # the task writes on meanwhile
    st.serve()
    page.wait_for_selector(f"#conn[data-state=connected], {FINISHED}")
    assert proc.wait(30) == 0
    page.wait_for_selector(FINISHED)
    assert before < n
    assert texts(page) == ticks(n)  # every line once, in order
    assert [r["n"] for r in rows(page)] == list(range(1, n + 1))


def test_scrolling_back_while_live_then_down_again_joins_the_tail(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    st.serve()
    burst, n = 15_000, 15_150  # a burst more than the page keeps, then (once scrolled away) a line every 20 ms
    go = st.tmp / "go"
    proc = st.start("scroll", f"""
import os, sys, time
sys.stdout.write("".join("live %06d\\n" % i for i in range(1, {burst} + 1))); sys.stdout.flush()
while not os.path.exists({str(go)!r}): time.sleep(0.01)
for i in range({burst} + 1, {n} + 1):
    time.sleep(0.02); print("live %06d" % i, flush=True)
""")
    page.goto(f"{st.base}/#/t/scroll/h1")
    wait_for(lambda: edge_n(page) >= burst, 20, "the burst did not show")
    for _ in range(2):
        first = edge_n(page, "first")
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; }")
        wait_for(lambda: edge_n(page, "first") < first, 10, "scrolling up loaded nothing")  # noqa: B023  (polled now)
    assert page.locator("#bottom-edge").is_visible()  # the window left the end: new lines are counted
    go.touch()
    page.wait_for_selector("#new-lines:has-text('new line')")
    while not page.locator("#bottom-edge").is_hidden():  # scroll down until the window holds the end again
        page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight; }")
        time.sleep(0.1)
        assert page.locator("#rows .r").count() <= MAX_ROWS
    assert proc.wait(120) == 0
    page.wait_for_selector(FINISHED)
    got = rows(page)
    assert got[-1]["n"] == n and len(got) <= MAX_ROWS
    assert [r["n"] for r in got] == list(range(got[0]["n"], n + 1))  # no gap, no duplicate
    assert all(r["text"] == f"live {r['n']:06d}" for r in got)


def test_the_page_on_a_central_api_shows_lines_newer_than_any_checkpoint(stack: Callable[..., Stack], page: Page,
                                                                       tmp_path: Path) -> None:
    st = stack(LOGSHIP_WATCH_CHECKPOINT_SECONDS="5")
    st.serve()  # beside the spool
    central = free_port()
    st.serve(central, LOGSHIP_SPOOL_DIR=str(tmp_path / "no-spool"),  # the store only; live requests go beside
             LOGSHIP_API_PROXY_ALLOW="127.0.0.1")
    st.watcher(LOGSHIP_WATCH_API_URL=st.base)
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    proc = st.start("spread", f"""
import os, time
print("before the first checkpoint", flush=True)
while not os.path.exists({str(gate1)!r}): time.sleep(0.01)
for i in range(300): print("newer %03d" % i, flush=True)
while not os.path.exists({str(gate2)!r}): time.sleep(0.01)
print("the end")
""")
    meta = f"http://127.0.0.1:{central}/api/v1/tasks/spread/hosts/h1"
    wait_for(lambda: get_json(meta)[0] == 200, 30, "the central API never saw the log")  # its first checkpoint
    gate1.touch()
    wait_for(lambda: b"newer 299" in spooled(st.spool, "spread"), 10, "the task did not write")
    page.goto(f"http://127.0.0.1:{central}/#/t/spread/h1")  # well within the 5 s checkpoint interval
    page.wait_for_selector("#rows .r:has-text('newer 299')")
    assert texts(page) == ["before the first checkpoint", *(f"newer {i:03d}" for i in range(300))]
    assert [r["n"] for r in rows(page)] == list(range(1, 302))
    gate2.touch()
    page.wait_for_selector(FINISHED)
    assert proc.wait(10) == 0
    assert texts(page)[-1] == "the end"


# --- a large log ---------------------------------------------------------------------------------

BIG_LINES = 2_000_000  # 100 bytes each: 200 MB
BIG = f"""
import sys
w = sys.stdout.buffer.write
pad = b"." * 84  # 100 bytes a line
for k in range(1, {BIG_LINES} + 1, 20000):
    w(b"".join(b"line %09d %s\\n" % (i, pad) for i in range(k, k + 20000)))
"""


def test_a_200_mb_log_opens_at_the_end_and_scrolls_back_to_line_1(stack: Callable[..., Stack], page: Page,
                                                                   tmp_path: Path) -> None:
    st = stack(LOGSHIP_SPOOL_SEGMENT_BYTES="32MiB", LOGSHIP_QUERY_COPY="false")
    assert st.run("big", BIG).returncode == 0
    res = watch_once(st.env)
    assert res.returncode == 0, res.stderr
    st.serve(LOGSHIP_SPOOL_DIR=str(tmp_path / "empty-spool"))  # the archive only: an API on another host
    size = BIG_LINES * 100

    # It opens at the end by reading little, whatever the log's size: the bytes of the log the page asks for
    # (by Range; a request without one is the whole log), not a time, which a loaded machine stretches.
    asked: list[int] = []

    def on_request(req: Any) -> None:
        if req.url.split("?")[0].endswith("/tasks/big/hosts/h1/log"):
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", req.headers.get("range", ""))
            asked.append(int(m[2]) - int(m[1]) + 1 if m else size)

    page.on("request", on_request)
    page.goto(f"{st.base}/#/t/big/h1")
    page.wait_for_selector(f"#rows .r[data-n='{BIG_LINES}']")
    page.remove_listener("request", on_request)
    assert asked and sum(asked) <= 4 << 20, asked  # the last 256 KiB chunks, not 200 MB
    assert page.locator(f"#rows .r[data-n='{BIG_LINES}']").is_visible()  # the end is in view
    last = rows(page)
    assert last[-1]["text"].startswith(f"line {BIG_LINES:09d} ") and len(last) <= MAX_ROWS
    assert page.inner_text("#log-size") == "191 MiB" and size == 200_000_000

    # scrolling up loads earlier parts by Range; the page keeps a bounded number of rows
    first = last[0]["n"]
    for _ in range(4):
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
        wait_for(lambda: edge_n(page, "first") < first, 10, "scrolling up loaded nothing")  # noqa: B023  (polled now)
        got = rows(page)
        assert len(got) <= MAX_ROWS
        assert [r["n"] for r in got] == list(range(got[0]["n"], got[0]["n"] + len(got)))  # contiguous
        assert all(r["text"].startswith(f"line {r['n']:09d} ") for r in got)
        first = got[0]["n"]
    assert page.locator("#top-edge").is_visible() and page.locator("#bottom-edge").is_visible()

    page.click("#log")
    page.keyboard.press("Home")  # jump to the first line
    page.wait_for_selector("#rows .r[data-n='1']")
    got = rows(page)
    assert got[0]["text"] == f"line {1:09d} {'.' * 84}" and len(got) <= MAX_ROWS
    assert page.locator("#rows .r[data-n='1']").is_visible()
    for _ in range(3):  # scrolling down from there loads the next parts
        end = edge_n(page)
        page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight; }")
        wait_for(lambda: edge_n(page) > end, 10, "scrolling down loaded nothing")  # noqa: B023  (polled now)
        got = rows(page)
        assert len(got) <= MAX_ROWS and [r["n"] for r in got] == list(range(got[0]["n"], got[0]["n"] + len(got)))
        assert all(r["text"].startswith(f"line {r['n']:09d} ") for r in got)
    page.keyboard.press("End")
    page.wait_for_selector(f"#rows .r[data-n='{BIG_LINES}']")
    assert len(rows(page)) <= MAX_ROWS


# --- the task list, search, downloads, tokens, all hosts ------------------------------------------------


def test_tasks_search_downloads_with_a_token(stack: Callable[..., Stack], page: Page, browser: Browser) -> None:
    token = secrets.token_urlsafe(24)
    st = stack(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    lines = [f"{RED}step {i}{RESET} ok" if i != 777 else "Disk Full on /dev/sda" for i in range(1, 1001)]
    script = ("import sys, json\nfor i, l in enumerate(json.loads(sys.argv[1]), 1):\n"
              "    (sys.stderr if i % 10 == 0 else sys.stdout).write(l + '\\n')\nsys.exit(3)\n")
    for host in ("h1", "h2"):
        res = run_agent(st.spool, "alpha", [sys.executable, "-c", script, json.dumps(lines)], host=host, env=st.env)
        assert res.returncode == 3
    assert st.run("beta", "print('beta done')").returncode == 0
    res = watch_once(st.env)
    assert res.returncode == 0, res.stderr
    st.start("gamma", ticker(600, 0.1))
    st.serve(LOGSHIP_API_TOKENS=token)

    # the page and its files need no token (they hold no data); the API does
    with urllib.request.urlopen(f"{st.base}/") as r:
        assert r.status == 200 and "default-src 'self'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(f"{st.base}/web/app.js") as r:
        etag = r.headers["ETag"]
        assert r.headers["Content-Type"].startswith("text/javascript") and b"import" in r.read()
    try:
        urllib.request.urlopen(urllib.request.Request(f"{st.base}/web/app.js", headers={"If-None-Match": etag}))
        raise AssertionError("no 304")
    except urllib.error.HTTPError as exc:
        assert exc.code == 304
    assert get_json(f"{st.base}/web/nope.js?token={token}")[0] == 401  # ?token= only on the tail and downloads
    assert get_json(f"{st.base}/api/v1/tasks")[0] == 401
    page.goto(f"{st.base}/?token={token}#/")
    page.wait_for_selector("#tasks tbody tr[data-task=gamma]")
    assert "token" not in page.url and page.evaluate("localStorage.getItem('logship.token')") == token

    def table() -> dict[str, list[str]]:
        got: list[list[str]] = page.eval_on_selector_all(
            "#tasks tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.innerText.trim()))")
        return {f"{r[1].split()[0]}/{r[2]}": r for r in got}

    t = table()
    assert set(t) == {"alpha/h1", "alpha/h2", "beta/h1", "gamma/h1"}
    assert t["alpha/h1"][0] == "finished" and t["alpha/h1"][6] == "3" and t["beta/h1"][6] == "0"
    assert t["gamma/h1"][0] == "running" and t["gamma/h1"][6] == "—" and "all 2 hosts" in t["alpha/h2"][1]
    assert t["alpha/h1"][5].endswith("KiB") and t["gamma/h1"][5] != "—"
    page.select_option("#f-status", "running")
    wait_for(lambda: set(table()) == {"gamma/h1"}, 10, "the status filter")
    page.select_option("#f-status", "")
    page.fill("#f-task", "alp")
    wait_for(lambda: set(table()) == {"alpha/h1", "alpha/h2"}, 10, "the task filter")
    page.fill("#f-task", "")
    assert st.run("delta", "print('late')").returncode == 0  # the list refreshes itself
    wait_for(lambda: "delta/h1" in table(), 10, "a new log did not show up")

    # search: any case by default; a hit opens its log at its line
    page.fill("#q", "disk full")
    page.press("#q", "Enter")
    page.wait_for_selector("#hits li")
    hits = page.eval_on_selector_all("#hits li a", "as => as.map(a => a.textContent)")
    # the line's number in the log: the streams interleave as they arrived, not in the program's order
    numbers = {h: spooled(st.spool, "alpha", h).split(b"Disk Full")[0].count(b"\n") + 1 for h in ("h1", "h2")}
    assert sorted(hits) == [f"alpha/{h}:{n}" for h, n in sorted(numbers.items())]
    page.click(f"#hits li a >> text=alpha/h2:{numbers['h2']}")
    page.wait_for_selector("#rows .r.hit")
    hit = page.locator("#rows .r.hit")
    assert hit.get_attribute("data-n") == str(numbers["h2"])
    assert hit.locator(".x").inner_text() == "Disk Full on /dev/sda"
    assert hit.is_visible()
    near = {r["text"]: r for r in rows(page)}
    assert near["step 770 ok"]["stream"] == "stderr" and near["step 771 ok"]["stream"] == "stdout"

    # downloads: the whole log and one stream, byte-exact (the links carry the token)
    def download(sel: str) -> bytes:
        with page.expect_download() as d:
            page.click(sel)
        return Path(d.value.path()).read_bytes()

    whole = spooled(st.spool, "alpha", "h2")
    assert download("#dl-all") == whole
    assert download("#dl-err").decode() == "".join(f"{lines[i - 1]}\n" for i in range(10, 1001, 10))

    # all hosts of a task: both hosts' lines, each marked with its host
    page.goto(f"{st.base}/#/t/alpha")
    wait_for(lambda: page.locator("#rows .r[data-host=h2]").count() == 200 and
             page.locator("#rows .r[data-host=h1]").count() == 200, 20, "all hosts' tails")
    assert page.locator("#rows .r[data-host=h1] .h").first.text_content() == "h1"

    # a live log with a token: the WebSocket passes it as ?token=
    page.goto(f"{st.base}/#/t/gamma/h1")
    page.wait_for_selector("#conn[data-state=connected]")
    wait_for(lambda: len(texts(page)) >= 3, 10, "no live lines")

    # without a token the page asks for one
    other = browser.new_context()
    try:
        p2 = other.new_page()
        p2.goto(f"{st.base}/#/")
        p2.wait_for_selector("#token-dialog[open]")
        p2.fill("#token", token)
        p2.click("#token-dialog button")
        p2.wait_for_selector("#tasks tbody tr[data-task=alpha]")
    finally:
        other.close()


def test_times_show_the_date_in_local_time_or_utc(stack: Callable[..., Stack], browser: Browser) -> None:
    st = stack()
    assert st.run("when", "print('first'); print('second')").returncode == 0
    st.serve()
    ts = get_json(f"{st.base}/api/v1/tasks/when/hosts/h1/index")[1]["chunks"][0][5]
    started = get_json(f"{st.base}/api/v1/tasks")[1]["logs"][0]["started_ns"]
    kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))  # no summer time: the offset is fixed

    def shown(ns: int, tz: dt.tzinfo, ms: bool = True) -> str:
        t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz).strftime("%Y-%m-%d %H:%M:%S")
        return f"{t}.{ns // 1_000_000 % 1000:03d}" if ms else t

    ctx = browser.new_context(timezone_id="Asia/Kolkata")
    try:
        page = ctx.new_page()
        page.goto(f"{st.base}/#/")
        page.wait_for_selector("#tasks tbody tr[data-task=when]")
        assert page.locator("#tz").input_value() == "local"  # the browser's zone, said
        assert page.inner_text("#tz option[value=local]") == "local time (UTC+05:30)"
        assert page.inner_text("#tasks thead th:nth-child(4)") == "Started UTC+05:30"
        assert page.inner_text("#tasks tbody tr td:nth-child(4)") == shown(started, kolkata, ms=False)
        page.click("#tasks tbody tr[data-task=when] a")
        page.wait_for_selector(FINISHED)
        page.check("#show-ts")
        row_t = page.locator("#rows .r[data-n='1'] .t")
        assert row_t.inner_text() == shown(ts, kolkata)
        page.select_option("#tz", "utc")  # every time shown changes at once, and the choice is kept
        assert row_t.inner_text() == shown(ts, dt.UTC)
        page.reload()
        page.wait_for_selector(FINISHED)
        assert page.locator("#tz").input_value() == "utc"
        assert page.locator("#rows .r[data-n='1'] .t").inner_text() == shown(ts, dt.UTC)
        page.click("#crumbs a:text-is('tasks')")
        page.wait_for_selector("#tasks tbody tr[data-task=when]")
        assert page.inner_text("#tasks thead th:nth-child(4)") == "Started UTC"
        assert page.inner_text("#tasks tbody tr td:nth-child(4)") == shown(started, dt.UTC, ms=False)
    finally:
        ctx.close()


# --- the chunk index route ----------------------------------------------------------------------------


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_index_route_numbers_lines_anywhere_in_the_log(stack: Callable[..., Stack], tmp_path: Path) -> None:
    st = stack(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB")
    script = ("import sys, time\nfor i in range(6000):\n"
              "    f = sys.stderr if i % 3 == 0 else sys.stdout\n"
              "    f.write('%d %s\\n' % (i, 'y' * (i % 40))); f.flush()\n"
              "    if i % 100 == 0: time.sleep(0.003)  # so the agent's reads, hence chunks, end here\n"
              "    if i % 1000 == 0: sys.stdout.write('partial '); sys.stdout.flush(); time.sleep(0.08)\n")
    assert st.run("idx", script).returncode == 0
    data = spooled(st.spool, "idx")
    d = st.spool / "idx" / "h1"
    chunks = [c for p in sorted(d.glob("*.idx")) for c in index.read(str(p))]
    assert len(chunks) > 30 and len(list(d.glob("*.idx"))) >= 3 and any(c.flags & index.PARTIAL for c in chunks)
    res = watch_once(st.env)
    assert res.returncode == 0, res.stderr
    for spool in (str(st.spool), str(tmp_path / "empty-spool")):  # beside the spool; from the store's segments
        api = st.serve(LOGSHIP_SPOOL_DIR=spool)
        url = f"{st.base}/api/v1/tasks/idx/hosts/h1/index"
        for start, end in ((0, 100), (70_000, 140_000), (len(data) - 5000, len(data)), (123_457, 123_458)):
            status, body = get_json(f"{url}?start={start}&end={end}")
            assert status == 200 and body["size"] == len(data) and not body["more"]
            want = [c for c in chunks if c.end > start and c.offset < end]
            assert body["chunks"] == [[c.offset, c.length, c.lines, c.stream_name, c.flags, c.ts_ns] for c in want]
            assert body["line"] == data.count(b"\n", 0, want[0].offset)
        for end in (chunks[-1].offset, chunks[len(chunks) // 2].offset, 123_457, chunks[3].offset):
            for stream in (None, "stdout", "stderr"):  # the last records before `end`, scanned back (`last`)
                for last in (1, 7, 20_000):
                    q = f"{url}?end={end}&last={last}" + (f"&stream={stream}" if stream else "")
                    status, body = get_json(q)
                    want = [c for c in chunks if c.offset < end and stream in (None, c.stream_name)][-last:]
                    assert status == 200 and body["chunks"] == [
                        [c.offset, c.length, c.lines, c.stream_name, c.flags, c.ts_ns] for c in want], q
                    stopped = len(want) == last and want[0].offset > 0  # more may lie before what it found
                    assert (body["more"], body["from"]) == ((True, want[0].offset) if stopped else (False, 0)), q
                    assert body["line"] == (data.count(b"\n", 0, want[0].offset) if want else None), q
        for start in (0, chunks[len(chunks) // 2].offset, 123_457):
            for stream in ("stdout", "stderr"):  # one stream's records from `start`, scanned forward
                q = f"{url}?start={start}&stream={stream}"
                status, body = get_json(q)
                want = [c for c in chunks if c.end > start and c.stream_name == stream]
                assert status == 200 and body["chunks"] == [
                    [c.offset, c.length, c.lines, c.stream_name, c.flags, c.ts_ns] for c in want], q
                line = data.count(b"\n", 0, want[0].offset)
                assert (body["more"], body["to"], body["line"]) == (False, len(data), line), q
        status, body = get_json(f"{url}?start={len(data)}")
        assert status == 200 and body["chunks"] == [] and body["line"] == data.count(b"\n")
        status, body = get_json(f"{url}?start={len(data) + 1}")
        assert status == 416 and body["error"] == "bad_range"
        assert get_json(f"{url}?start=x")[0] == 400
        api.terminate()
        api.wait(20)
