"""The page's `…?` mark (a line that may have begun before the bytes read: a walk back for its start gave up) is
only where it is true. A stream met for the first time scrolling down has its first line begin where it does when
its stream's last chunk before ends a line, or it has none, or the window began at byte 0: no mark, however long
the stream was silent (the index scanned back for one stream, GET …/index?last=&stream=, finds its last chunk in
one request)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .browser import Page, Stack, all_rows, edge_n, expected_rows, spool_put, wait_for

pytestmark = pytest.mark.timeout(240)

OUT, OUT_W = 2000, 1000  # 2 MB of stdout lines: 8 reads (range.js CHUNK, 256 KiB), more than a walk once looked at
ERR, ERR_W = 500, 100  # then stderr lines: the stream met first scrolling down
LINE = "'%s %05d %s' % (s, i, '.' * (w - 9))"  # line i of stream s ("o" or "e"), w bytes with its newline
LINES = [*(f"o {i:05d} {'.' * (OUT_W - 9)}" for i in range(OUT)),
         *(f"e {i:05d} {'.' * (ERR_W - 9)}" for i in range(ERR)), "o last"]
TASK = f"""
s, w = 'o', {OUT_W}
out = ''.join({LINE} + '\\n' for i in range({OUT}))
for k in range(0, len(out), 100_000):
    put(sys.stdout, out[k:k + 100_000])
s, w = 'e', {ERR_W}
put(sys.stderr, ''.join({LINE} + '\\n' for i in range({ERR})))
put(sys.stdout, 'o last\\n')
"""


@pytest.mark.parametrize("where", ["top", "middle"])
def test_a_stream_met_scrolling_down_begins_where_it_does(stack: Callable[..., Stack], page: Page, where: str) -> None:
    st = stack()
    assert st.run("m", spool_put(st.spool / "m" / "h1") + TASK).returncode == 0
    st.serve()
    if where == "top":  # a window from byte 0 (the Top button)
        page.goto(f"{st.base}/#/t/m/h1")
        page.wait_for_selector("#log-status[data-status=finished]")
        page.click("#top")
        page.wait_for_selector("#rows .r[data-n='1']")
    else:  # a window in the middle of the stdout lines (a search hit's link), 1 MB before the stderr lines
        page.goto(f"{st.base}/#/t/m/h1?at={OUT * OUT_W // 2}")
        page.wait_for_selector("#rows .r.hit")
    maybe: set[int] = set()
    for _ in range(80):  # down to the end, read by read
        maybe.update(r["n"] for r in all_rows(page) if r["maybe"])
        if edge_n(page) == len(LINES) and page.locator("#bottom-edge").is_hidden():
            break
        page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight; e.dispatchEvent(new Event('scroll')); }")
        page.wait_for_timeout(250)
    wait_for(lambda: edge_n(page) == len(LINES), 30, "scrolling down did not reach the log's end")
    maybe.update(r["n"] for r in all_rows(page) if r["maybe"])
    assert maybe == set(), maybe
    got = all_rows(page)
    first = got[0]["n"]
    assert got == expected_rows(LINES)[first - 1:], [r["n"] for r in got[:3]]
    assert where == "middle" or first == 1
