"""Moving between the page's views: every path starts its view from a clean state, whatever the view
before it did. Each test checks the rows the page shows (line numbers, text, position) against `/log`."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .browser import MAX_ROWS, Page, Stack, edge_n, wait_for
from .support import spooled, watch_once

pytestmark = pytest.mark.timeout(120)

LINES = 60_000  # lines per big log: ~4.5 MB, far more than the page keeps


def big(name: str, n: int = LINES, stderr_every: int = 0) -> str:
    """A task writing n numbered lines naming the log (so rows of another log show up as such)."""
    return f"""
import sys
pad = "." * 48
for k in range(1, {n} + 1, 5000):
    for i in range(k, min(k + 5000, {n} + 1)):
        f = sys.stderr if {stderr_every} and i % {stderr_every or 1} == 0 else sys.stdout
        f.write("{name} %07d %s\\n" % (i, pad))
    sys.stdout.flush(); sys.stderr.flush()
"""


def running(name: str, burst: int, gate: Path) -> str:
    """A burst of lines, then a line every 50 ms until `gate` exists."""
    return f"""
import os, sys, time
sys.stdout.write("".join("{name} %07d\\n" % i for i in range(1, {burst} + 1))); sys.stdout.flush()
i = {burst}
while not os.path.exists({str(gate)!r}):
    i += 1; print("{name} %07d" % i, flush=True); time.sleep(0.05)
"""


def log_lines(st: Stack, task: str, host: str = "h1") -> list[str]:
    """The log's lines as `/log` serves them (the truth the page is checked against)."""
    with urllib.request.urlopen(f"{st.base}/api/v1/tasks/{task}/hosts/{host}/log", timeout=30) as r:
        data: bytes = r.read()
    assert data.endswith(b"\n")
    return data.decode().split("\n")[:-1]


def open_hash(page: Page, where: str) -> None:
    """Go to `#where` as a link in the page would (no reload)."""
    page.evaluate("h => { location.hash = h; }", where)


def window(page: Page) -> dict[str, Any]:
    got: dict[str, Any] = page.evaluate("""() => {
        const log = document.querySelector('#log'), rows = document.querySelector('#rows');
        const n = (e) => e ? Number(e.dataset.n) : null;
        return {first: n(rows.firstElementChild), last: n(rows.lastElementChild), count: rows.children.length,
                below: log.scrollHeight - log.scrollTop - log.clientHeight, top: log.scrollTop,
                bottomEdge: !document.querySelector('#bottom-edge').hidden,
                follow: document.querySelector('#follow').getAttribute('aria-pressed')};
    }""")
    return got


def check_rows(page: Page, want: list[str], host: str | None = None) -> list[dict[str, Any]]:
    """Every row shown is the line of `want` its number says, the rows are contiguous, none is foreign."""
    sel = f"#rows .r[data-host={host}]" if host else "#rows .r"
    got: list[dict[str, Any]] = page.eval_on_selector_all(sel, """els => els.map(e => ({
        n: e.dataset.n ? Number(e.dataset.n) : null, text: e.querySelector('.x').textContent}))""")
    assert got, "no rows"
    ns = [r["n"] for r in got]
    assert ns == list(range(ns[0], ns[0] + len(ns))), (ns[:3], ns[-3:])  # contiguous, numbered
    bad = [r for r in got if not 1 <= r["n"] <= len(want) or r["text"] != want[r["n"] - 1]]
    assert not bad, bad[:3]
    assert len(got) <= MAX_ROWS
    return got


def assert_at_end(page: Page, want: list[str], settle: float = 0.6) -> None:
    """The view shows the log's last line, scrolled to it, and stays there (nothing loads on meanwhile)."""
    wait_for(lambda: edge_n(page) == len(want), 15, f"the last row is not line {len(want)}: {window(page)}")
    got = check_rows(page, want)
    assert got[-1]["text"] == want[-1]
    w = window(page)
    assert w["below"] < 4 and not w["bottomEdge"], w
    time.sleep(settle)
    assert window(page) == w  # it stays: no part of the log loads after it


def assert_at_line(page: Page, want: list[str], line: int) -> None:
    """The view opened at `line`: marked, in view, and its rows are the log's."""
    page.wait_for_selector(f"#rows .r.hit[data-n='{line}']")
    check_rows(page, want)
    hit = page.locator("#rows .r.hit")
    assert hit.count() == 1 and hit.locator(".x").inner_text() == want[line - 1]
    box, view = hit.bounding_box(), page.locator("#log").bounding_box()
    assert box and view and view["y"] <= box["y"] and box["y"] + box["height"] <= view["y"] + view["height"]


def click_crumb(page: Page, text: str) -> None:
    page.click(f"#crumbs a:text-is('{text}')")


# --- the paths ----------------------------------------------------------------------------------


def test_list_running_log_list_finished_log(stack: Callable[..., Stack], page: Page, tmp_path: Path) -> None:
    st = stack()
    assert st.run("done", big("done")).returncode == 0
    st.start("live", running("live", 20_000, tmp_path / "gate"))
    st.serve()
    done = log_lines(st, "done")
    page.goto(f"{st.base}/#/")
    page.click("#tasks tbody tr[data-task=live] a")
    wait_for(lambda: edge_n(page) > 20_000, 15, "the running log did not show")
    page.wait_for_selector("#conn[data-state=connected]")
    time.sleep(0.5)  # rows arrive from the tail meanwhile
    first = edge_n(page, "first")
    page.eval_on_selector("#log", "e => { e.scrollTop = 0; }")  # and earlier ones as it is scrolled up
    wait_for(lambda: edge_n(page, "first") < first, 10, "scrolling up loaded nothing")
    click_crumb(page, "tasks")
    page.click("#tasks tbody tr[data-task=done] a")
    assert_at_end(page, done)
    assert page.inner_text("#log-status").startswith("finished")


def test_all_hosts_then_one_host(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    for host, n in (("h1", LINES), ("h2", LINES // 2)):
        assert st.run("multi", big(f"multi-{host}", n), host=host).returncode == 0
    st.serve()
    want = {h: log_lines(st, "multi", h) for h in ("h1", "h2")}
    page.goto(f"{st.base}/#/")
    page.click("#tasks tbody tr[data-host=h1] a.all")
    page.wait_for_selector("#rows .r[data-host=h2]")
    wait_for(lambda: page.locator("#rows .r[data-host=h1]").count() >= 200, 15, "h1's lines")
    for h in ("h1", "h2"):  # each host's rows are its last lines, numbered as in its log
        got = check_rows(page, want[h], h)
        assert got[-1]["n"] == len(want[h])
    assert page.locator("#rows .r .n").first.is_visible()  # "line #" is ticked: the numbers show
    boxes = [page.locator(f"#host-filter .host:has-text('{h}')").bounding_box() for h in ("h1", "h2")]
    assert boxes[0] and boxes[1] and boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"]  # in a row
    assert page.inner_text("#log-status") == "2 hosts · finished · exit 0" and page.locator("#pause").is_hidden()
    page.click("#host-filter a:text-is('h2')")
    assert_at_end(page, want["h2"])
    page.keyboard.press("Home")  # the start of the same log: numbered from 1
    page.wait_for_selector("#rows .r[data-n='1']")
    check_rows(page, want["h2"])


def test_search_hit_then_the_log_plainly(stack: Callable[..., Stack], page: Page) -> None:
    st = stack(LOGSHIP_SPOOL_SEGMENT_BYTES="1MiB")
    assert st.run("found", big("found")).returncode == 0
    res = watch_once(st.env)
    assert res.returncode == 0, res.stderr
    st.serve()
    want = log_lines(st, "found")
    line = 12_345
    page.goto(f"{st.base}/#/")
    page.fill("#q", f"found {line:07d}")
    page.press("#q", "Enter")
    page.click(f"#hits li a:text-is('found/h1:{line}')")
    assert_at_line(page, want, line)
    click_crumb(page, "h1")  # the same log, plainly: at its end
    assert_at_end(page, want)
    page.go_back()  # and the hit again
    assert_at_line(page, want, line)


def test_a_log_then_a_missing_log(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    assert st.run("there", big("there")).returncode == 0
    st.serve()
    want = log_lines(st, "there")
    page.goto(f"{st.base}/#/t/there/h1")
    assert_at_end(page, want, settle=0)
    for _ in range(3):  # scroll up: earlier parts load, one after another
        first = edge_n(page, "first")
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; }")
        wait_for(lambda: edge_n(page, "first") < first, 10, "scrolling up loaded nothing")  # noqa: B023  (polled now)
    page.eval_on_selector("#log", "e => { e.scrollTop = 0; }")  # and on, as the page is left
    for where in ("#/t/nothere/h1", "#/t/nothere"):
        open_hash(page, where)
        page.wait_for_selector("#error:not([hidden])")
        assert "nothere" in page.inner_text("#error")
        time.sleep(1)
        assert page.locator("#rows .r").count() == 0, window(page)
        assert page.inner_text("#log-status") == "" and page.inner_text("#log-size") == ""
    open_hash(page, "#/t/there/h1")  # and back to a log that exists
    assert_at_end(page, want)
    assert page.locator("#error").is_hidden()


def test_back_and_forward(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    for name, n in (("one", LINES), ("two", LINES // 3)):
        assert st.run(name, big(name, n, stderr_every=5)).returncode == 0
    st.serve()
    want = {t: log_lines(st, t) for t in ("one", "two")}
    page.goto(f"{st.base}/#/")
    page.click("#tasks tbody tr[data-task=one] a")
    assert_at_end(page, want["one"], settle=0)
    page.keyboard.press("Home")
    page.wait_for_selector("#rows .r[data-n='1']")
    open_hash(page, "#/t/two/h1")
    assert_at_end(page, want["two"])
    page.go_back()
    assert_at_end(page, want["one"])
    page.go_back()
    page.wait_for_selector("#tasks tbody tr[data-task=two]")
    assert page.locator("#log-view").is_hidden()
    page.go_forward()
    assert_at_end(page, want["one"])
    page.go_forward()
    assert_at_end(page, want["two"])
    assert spooled(st.spool, "two").decode().split("\n")[:-1] == want["two"]
