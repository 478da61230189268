"""The page over a log whose window at the end does not fill the view (a few long lines there, or rows hidden by a
toggle): nothing scrolls, so no scroll event asks for earlier bytes. The view reads earlier ones until it is
filled, following the end all the while; and a wheel or key up at its top reads them, whatever stops the filling.
Either way the wheel alone reaches line 1: each line once, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .browser import MAX_ROWS, Browser, Page, Stack, all_rows, expected_rows, new_page, spool_put, swipe, wait_for
from .support import spooled

pytestmark = pytest.mark.timeout(240)

SHORT, SHORT_W = 2000, 1000  # 2 MB of short stdout lines: 8 reads (range.js CHUNK, 256 KiB) before the end
LONG, LONG_W = 4, 80_000  # long lines at the end: more than a read, 4 rows, far fewer than a screen (720 px)
# stderr lines at the end: 270 KB, more than a read, so the window holds no stdout line; and more rows than the
# view fills itself with (logview.js checkEdges: MAX_ROWS / 2), so only the user's up reads earlier ones
ERR, ERR_W = 2700, 100


def shorts_py(n: int) -> str:
    return f"''.join('short %05d %s\\n' % (i, '.' * {SHORT_W - 12}) for i in range({n}))"


ERRS = f"''.join('e %05d %s\\n' % (i, '.' * {ERR_W - 8}) for i in range({ERR}))"


def shorts(n: int = SHORT) -> list[str]:
    return [f"short {i:05d} {'.' * (SHORT_W - 12)}" for i in range(n)]


def longs() -> list[str]:
    return [chr(ord("A") + k) * LONG_W for k in range(LONG)]


def filled(page: Page) -> bool:
    return bool(page.eval_on_selector("#log", "e => e.scrollHeight > e.clientHeight"))


def at_bottom(page: Page) -> bool:
    return bool(page.eval_on_selector("#log", "e => e.scrollHeight - e.scrollTop - e.clientHeight < 4"))


def wheel_to_top(page: Page, each: Callable[[], None] = lambda: None) -> None:
    """Wheel up over the log until its window holds the log's first byte (its top edge gone), calling `each` at
    each step."""
    box: dict[str, Any] = page.locator("#log").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(400):
        each()
        if page.locator("#top-edge").is_hidden():
            return
        page.mouse.wheel(0, -3000)
        page.wait_for_timeout(100)
    raise AssertionError("wheeling up did not reach the log's start")


def test_a_view_its_end_does_not_fill_reads_earlier_bytes_and_follows(stack: Callable[..., Stack],
                                                                        page: Page) -> None:
    st = stack()
    go = st.tmp / "go"
    st.serve()
    st.start("few", spool_put(st.spool / "few" / "h1") + f"""
out = {shorts_py(SHORT)}
for k in range(0, len(out), 100_000):
    put(sys.stdout, out[k:k + 100_000])
for k in range({LONG}):
    put(sys.stdout, chr(ord('A') + k) * {LONG_W} + '\\n')
while not os.path.exists({str(go)!r}): time.sleep(0.01)
put(sys.stdout, 'last line\\n')
""")
    lines = [*shorts(), *longs(), "last line"]
    wait_for(lambda: len(spooled(st.spool, "few")) >= SHORT * SHORT_W + LONG * (LONG_W + 1), 30, "not written")
    page.goto(f"{st.base}/#/t/few/h1")
    page.wait_for_selector("#log-status[data-status=running]")
    # the window read at the end holds the long lines only: the view reads earlier bytes until it is filled,
    # and stays at the end, following
    wait_for(lambda: filled(page), 30, "the view was not filled")
    assert page.locator("#top-edge").is_visible(), "the whole log was read to fill one screen"
    assert page.get_attribute("#follow", "aria-pressed") == "true" and at_bottom(page)
    got = all_rows(page)
    assert got[-1]["n"] == SHORT + LONG and got[0]["n"] and got[0]["n"] < SHORT, (got[0]["n"], got[-1]["n"])
    # a new line comes at the end: still followed
    go.touch()
    page.wait_for_selector(f"#rows .r[data-n='{len(lines)}']")
    page.wait_for_selector("#log-status[data-status=finished]")
    assert at_bottom(page), "the view left the end"
    wheel_to_top(page)
    assert all_rows(page) == expected_rows(lines)


@pytest.mark.parametrize("how", ["wheel", "PageUp", "ArrowUp", "swipe"])
def test_up_at_the_top_of_a_view_its_rows_do_not_fill_reads_earlier(stack: Callable[..., Stack], browser: Browser,
                                                                    how: str) -> None:
    """The window at the end holds stderr lines only; hidden (the stderr toggle), the view shows nothing and has
    nothing to scroll. Up at its top (a wheel, a key, a finger drawn down a touchscreen) reads earlier bytes
    (stdout lines) and ends following; wheeled up from there, line 1 comes, each line once, in order."""
    with new_page(browser, has_touch=how == "swipe") as page:
        up_at_the_top(stack(), page, how)


def up_at_the_top(st: Stack, page: Page, how: str) -> None:
    assert st.run("hid", spool_put(st.spool / "hid" / "h1") + f"""
out = {shorts_py(SHORT)}
for k in range(0, len(out), 100_000):
    put(sys.stdout, out[k:k + 100_000])
put(sys.stderr, {ERRS})
""").returncode == 0
    lines = [*shorts(), *[f"e {i:05d} {'.' * (ERR_W - 8)}" for i in range(ERR)]]
    st.serve()
    page.goto(f"{st.base}/#/t/hid/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: bool(page.eval_on_selector_all("#rows .r", "els => els.length")), 15, "no rows shown")
    at_end = all_rows(page)
    assert {lines[r["n"] - 1][:1] for r in at_end} == {"e"}  # the window holds stderr lines only
    assert len(at_end) >= MAX_ROWS / 2, len(at_end)  # more than the view fills itself with
    page.uncheck("#show-err")
    assert not filled(page) and page.get_attribute("#follow", "aria-pressed") == "true"
    if how == "wheel":
        box: dict[str, Any] = page.locator("#log").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
    elif how == "swipe":
        swipe(page, "#log", 300)
    elif how == "PageUp":
        page.click("#log")
        page.keyboard.press(how)
    else:  # the stderr box just unticked keeps the focus: a key the box does nothing with is the log's
        assert page.evaluate("document.activeElement.id") == "show-err"
        page.keyboard.press(how)
    wait_for(lambda: filled(page), 30, f"{how} up read no earlier rows")
    assert page.get_attribute("#follow", "aria-pressed") == "false"
    assert not at_bottom(page), "the view did not move up into the rows read"
    # the first stderr line, read with the 256 KiB before it: the walk back for an earlier stderr byte finds none
    # in the 2 MB of stdout lines before it (the index scanned back for stderr: one request), so its row never
    # says it may have begun before
    maybe: set[int] = set()
    wheel_to_top(page, lambda: maybe.update(r["n"] for r in all_rows(page) if r["maybe"]))
    assert maybe == set(), maybe
    assert all_rows(page) == expected_rows(lines)


def test_a_log_ending_in_an_enormous_line_is_not_read_back_unasked(stack: Callable[..., Stack], page: Page) -> None:
    """The view fills itself with at most 8 reads (logview.js FILL_READS, 2 MiB): a 4 MB line at the end is not
    all read back to its start unasked. A wheel up goes on, to line 1."""
    st = stack()
    big = "".join(f"X{i:07d}" for i in range(500_000))  # 4 MB, each 8 characters naming their place
    assert st.run("big", spool_put(st.spool / "big" / "h1") + """
put(sys.stdout, 'first\\n')
for i in range(0, 500_000, 12_500):
    put(sys.stdout, ''.join('X%07d' % k for k in range(i, i + 12_500)))
put(sys.stdout, '\\n')
""").returncode == 0
    st.serve()
    page.goto(f"{st.base}/#/t/big/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: bool(page.eval_on_selector_all("#rows .r", "els => els.length")), 15, "no rows shown")

    def before() -> str:
        text: str = page.inner_text("#top-edge")
        return text.split(" before")[0].lstrip("⇡ ")

    def settled() -> bool:  # the same for 2 s: no read under way
        was = before()
        page.wait_for_timeout(2000)
        return before() == was

    wait_for(settled, 30, "the view kept reading")
    mib = float(before().split()[0]) if before().endswith("MiB") else 0.0
    # 3.8 MiB less 9 reads (the window's own, and 8), each of 256 KiB and the rest of the 100 KB chunk it begins in
    assert 0.5 <= mib <= 1.6, before()
    assert page.get_attribute("#follow", "aria-pressed") == "true"
    wheel_to_top(page)
    assert all_rows(page) == expected_rows(["first", big])
