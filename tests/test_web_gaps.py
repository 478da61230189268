"""The page over a log with holes (issue 11): bytes the archive does not hold (dropped at the spool quota,
lost) are never asked for by Range (that is a 416), and each hole shows as one marker row where it lies;
the lines around it keep their numbers, however the view reaches it (opening at the end, scrolling up,
opening at the start then scrolling down across a hole longer than one read)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shipper.format import names
from shipper.format.manifest import Dropped, Manifest
from shipper.store import open_store

from .browser import Page, Stack, edge_n, wait_for
from .support import watch_once

pytestmark = pytest.mark.timeout(180)

LINES, WIDTH = 4_500, 200  # 900 KB in 64 KiB segments: 14 of them, and fewer lines than the page keeps
TASK = f"""
import sys
for i in range(1, {LINES} + 1):
    sys.stdout.write("g %07d %s\\n" % (i, "." * {WIDTH - 11}))
"""


def line(n: int) -> str:
    return f"g {n:07d} {'.' * (WIDTH - 11)}"


def drop(st: Stack, seqs: set[int]) -> list[tuple[int, int]]:
    """Take segments `seqs` out of the manifest into `dropped` (as the spool quota does): the line numbers
    [first, last] each run of them held."""

    async def edit() -> list[tuple[int, int]]:
        store = open_store(st.cfg.store)
        try:
            key = names.manifest_key("g", "h1")
            doc = Manifest.load(await store.get(key))
            gone = [s for s in doc.segments if s.seq in seqs]
            dropped = doc.dropped + tuple(Dropped(s.seq, s.offset, s.raw_size, {"lines": s.lines, "reason": "quota"})
                                          for s in gone)
            doc = doc.replace(segments=tuple(s for s in doc.segments if s.seq not in seqs), dropped=dropped,
                              dropped_bytes=sum(d.raw_size for d in dropped))
            await store.put(key, doc.dump())
            return [(s.offset // WIDTH + 1, s.end // WIDTH) for s in gone]
        finally:
            await store.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's own loop runs in this thread
        return pool.submit(asyncio.run, edit()).result()


def index_back(st: Stack, query: str) -> Any:
    with urllib.request.urlopen(f"{st.base}/api/v1/tasks/g/hosts/h1/index?{query}", timeout=30) as r:
        return json.loads(r.read())


def shown(page: Page) -> list[tuple[int | None, str]]:
    """(line number or None for a marker, text) of each row."""
    got: list[tuple[int | None, str]] = [tuple(r) for r in page.eval_on_selector_all("#rows .r", """els => els.map(e =>
        [e.dataset.n ? Number(e.dataset.n) : null, e.querySelector('.x').textContent])""")]
    return got


def expected(holes: list[tuple[int, int]], lo: int = 1, hi: int = LINES) -> list[int | None]:
    """The rows for lines lo..hi: each line a hole does not hold, one None per hole (runs merged)."""
    out: list[int | None] = []
    for n in range(lo, hi + 1):
        if any(a <= n <= b for a, b in holes):
            if not out or out[-1] is not None:
                out.append(None)
        else:
            out.append(n)
    return out


def strip(ns: list[int | None]) -> list[int | None]:
    """Without markers at either end (a window may begin or end at a hole)."""
    a, b = 0, len(ns)
    while a < b and ns[a] is None:
        a += 1
    while b > a and ns[b - 1] is None:
        b -= 1
    return ns[a:b]


def check(page: Page, holes: list[tuple[int, int]]) -> list[int | None]:
    """Every row is the line its number says or a hole's marker, in the order of the log, one marker per hole."""
    rows = shown(page)
    for n, text in rows:
        assert ("dropped at the spool quota" in text) if n is None else text == line(n), (n, text)
    ns = strip([n for n, _ in rows])
    assert ns and ns == expected(holes, ns[0] or 1, ns[-1] or LINES), (ns[:5], ns[-5:])
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    return ns


def test_a_log_with_holes_reads_around_them(stack: Callable[..., Stack], page: Page) -> None:
    st = stack(LOGSHIP_SPOOL_SEGMENT_BYTES="64KiB", LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    assert st.run("g", TASK).returncode == 0
    res = watch_once(st.env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list((st.spool / "g" / "h1").glob("*.log")), "the spool still holds segments: the API would read them"
    holes = drop(st, {3, 4, 5, 6, 7, 12})  # 320 KiB (longer than one read of the page) and 64 KiB near the end
    holes = [(holes[0][0], holes[4][1]), holes[5]]
    st.serve()
    # the index scanned back (`last`, the page's walk to a line's start) stops at a hole: it ends every line
    hole = ((holes[0][0] - 1) * WIDTH, holes[0][1] * WIDTH)
    back = index_back(st, f"end={hole[1] + 10 * WIDTH}&stream=stdout&last=20000")
    assert [c[0] for c in back["chunks"]][:1] == [hole[1]] and (back["from"], back["more"]) == (hole[1], False)
    back = index_back(st, f"end={hole[1] - WIDTH}&last=5")  # an end inside the hole: nothing held just before it
    assert (back["chunks"], back["from"], back["more"]) == ([], hole[1] - WIDTH, False)
    ahead = index_back(st, f"start={hole[0] - 10 * WIDTH}&stream=stdout")  # forward, for a line's end: the same
    last = ahead["chunks"][-1]
    assert last[0] + last[1] == hole[0] and (ahead["to"], ahead["more"]) == (hole[0], False)
    page.goto(f"{st.base}/#/t/g/h1")
    wait_for(lambda: edge_n(page) == LINES, 15, "the log's end did not show")
    ns = check(page, holes)
    assert ns.count(None) == 1  # the window at the end holds the short hole, marked once

    for _ in range(40):  # scroll up to the first line: across both holes, each marked once
        if edge_n(page, "first") == 1:
            break
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; }")
        page.wait_for_timeout(250)
    assert edge_n(page, "first") == 1, shown(page)[:3]
    assert [n for n, _ in shown(page)] == expected(holes)
    check(page, holes)

    page.evaluate("() => { location.hash = '#/t/g/h1?at=100'; }")  # a window at the start, then down to the end
    page.wait_for_selector("#rows .r.hit[data-n='1']")
    assert 1 < edge_n(page) < holes[0][0]
    for _ in range(40):
        if edge_n(page) == LINES and page.locator("#bottom-edge").is_hidden():
            break
        page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight; }")
        page.wait_for_timeout(250)
    assert [n for n, _ in shown(page)] == expected(holes)
    check(page, holes)
