"""The page scrolled up into a line longer than a read: opened at the log's end, the window begins inside the long
line (its row shows the part the window holds, "begun before"); scrolling up loads earlier reads, whose bytes of
that line join its row. Once at the top, each line of the log is exactly one row, in order, numbered right: a
long one shows its first part and counts the rest, no byte shown twice, none left out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from .browser import SHOWN, Page, Stack, all_rows, expected_rows, spool_put, wait_for
from .support import spooled

pytestmark = pytest.mark.timeout(180)

SHORT = 200  # short lines on each side: more rows than a screen, fewer than a read


def long_line(tag: str, size: int) -> str:
    """`size` characters, each 8 of them naming their place: a part shown twice or out of place shows."""
    return "".join(f"{tag}{i:06d}." for i in range(size // 8))


def shorts(first: int) -> list[str]:
    return [f"short {i:05d} ............" for i in range(first, first + SHORT)]


# the log's lines, by case, as the expressions the task evaluates: long ones (several hundred KB) longer than a
# read (256 KiB)
LOGS = {
    "middle": '[*shorts(0), long_line("A", 600_000), *shorts(SHORT)]',
    "first": '[long_line("A", 600_000), *shorts(0)]',
    "two": '[*shorts(0), long_line("A", 400_000), long_line("B", 520_000), *shorts(SHORT)]',
}


# The log written 100 KB at a time.
WRITE = """
for k in range(0, len(out), 100_000):
    put(sys.stdout, out[k:k + 100_000])
"""


def scroll_to_top(page: Page, each: Callable[[], None] = lambda: None) -> None:
    """Scroll up until the window holds the log's first byte (its top edge gone), calling `each` at each step."""
    for _ in range(80):
        each()
        if page.locator("#top-edge").is_hidden():
            return
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
        page.wait_for_timeout(250)
    raise AssertionError("scrolling up did not reach the log's start")


@pytest.mark.parametrize("case", sorted(LOGS))
def test_scrolling_up_into_a_long_line_joins_its_rows(stack: Callable[..., Stack], page: Page, case: str) -> None:
    st = stack()
    lines: list[str] = eval(LOGS[case])  # noqa: S307  (this file's own expressions)
    script = "\n".join([spool_put(st.spool / "up" / "h1"), f"SHORT = {SHORT}", inspect.getsource(long_line),
                         inspect.getsource(shorts), f"out = ''.join(s + '\\n' for s in {LOGS[case]})", WRITE])
    assert st.run("up", script).returncode == 0
    assert spooled(st.spool, "up") == "".join(s + "\n" for s in lines).encode()
    st.serve()
    page.goto(f"{st.base}/#/t/up/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: bool(page.eval_on_selector_all("#rows .r", "els => els.length")), 15, "no rows shown")
    # at the end: the window begins inside the last long line, whose row says so
    at_end = all_rows(page)
    assert at_end[-1]["n"] == len(lines) and not at_end[-1]["partial"], at_end[-1]
    assert page.locator("#top-edge").is_visible(), "the window at the end holds the whole log"
    assert at_end[0]["cont"] and at_end[0]["text"] in lines[at_end[0]["n"] - 1], at_end[0]["text"][:40]

    def counted() -> None:  # at each step, a long line's row counts all of it but what it shows
        for r in all_rows(page):
            if r["n"] and len(lines[r["n"] - 1]) > SHOWN:
                assert r["cut"] == expected_rows(lines)[r["n"] - 1]["cut"], (r["n"], r["cut"])

    scroll_to_top(page, counted)
    got = all_rows(page)
    want = expected_rows(lines)
    assert [r["n"] for r in got] == [r["n"] for r in want]  # one row a line, in order, none partial
    for g, w in zip(got, want, strict=True):
        assert g == w, ({k: (v[:40] if isinstance(v, str) else v) for k, v in g.items()},
                        {k: (v[:40] if isinstance(v, str) else v) for k, v in w.items()})


def scroll_to_end(page: Page) -> None:
    """Scroll down until the window holds the log's last byte (its bottom edge gone)."""
    for _ in range(80):
        if page.locator("#bottom-edge").is_hidden():
            return
        page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight; e.dispatchEvent(new Event('scroll')); }")
        page.wait_for_timeout(250)
    raise AssertionError("scrolling down did not reach the log's end")


def test_a_view_opened_inside_a_long_line_joins_it_both_ways(stack: Callable[..., Stack], page: Page) -> None:
    """Opened in the middle of a long line, the window holds no line end: the line is the open one below the rows.
    Scrolled up, its earlier bytes join it; scrolled down, its end does: one row, from its first byte."""
    st = stack()
    lines: list[str] = eval(LOGS["middle"])  # noqa: S307  (this file's own expressions)
    script = "\n".join([spool_put(st.spool / "up" / "h1"), f"SHORT = {SHORT}", inspect.getsource(long_line),
                        inspect.getsource(shorts), f"out = ''.join(s + '\\n' for s in {LOGS['middle']})", WRITE])
    assert st.run("up", script).returncode == 0
    at = spooled(st.spool, "up").index(b"A037500.")  # the line's middle
    st.serve()
    page.goto(f"{st.base}/#/t/up/h1?at={at}")
    page.wait_for_selector("#log-status[data-status=finished]")
    scroll_to_top(page)
    scroll_to_end(page)
    assert all_rows(page) == expected_rows(lines)


# A stdout line written in three parts, stderr lines between them: 6 MB between its first two parts, far more than
# the page once walked back past without a byte of the line (4 reads of the index), and 400 KB between its last two,
# more than one read.
ERR_W, ERR_GAP, ERR_LINES = 5000, 1200, 1280


def split_task(log_dir: Path, middle: str = "B" * 1000) -> str:
    """The line's parts: A, `middle` (none when empty), C."""
    return spool_put(log_dir) + f"""
def errs(a, b):
    put(sys.stderr, ''.join('e %05d %s\\n' % (i, '.' * {ERR_W - 8}) for i in range(a, b)))
put(sys.stdout, 'first\\n')
put(sys.stdout, 'A' * 1000)
errs(0, {ERR_GAP})
if {middle!r}: put(sys.stdout, {middle!r})
errs({ERR_GAP}, {ERR_LINES})
put(sys.stdout, 'C\\n')
"""


@pytest.mark.parametrize("middle", ["B" * 1000, ""])
def test_a_line_split_by_megabytes_of_the_other_stream_is_counted_exactly(stack: Callable[..., Stack], page: Page,
                                                                          middle: str) -> None:
    """Opened at the end, the line's row holds its last part; the walk back finds its earlier parts however many
    of the other stream's lines lie between (the index scanned back for the line's stream): the row counts them
    exactly, and says the line began before, not that it may have. Scrolled to the top, the row holds the whole
    line, exactly."""
    st = stack()
    assert st.run("split", split_task(st.spool / "split" / "h1", middle)).returncode == 0
    errs = [f"e {i:05d} {'.' * (ERR_W - 8)}" for i in range(ERR_LINES)]
    assert spooled(st.spool, "split") == ("first\n" + "A" * 1000 + "".join(e + "\n" for e in errs[:ERR_GAP])
                                          + middle + "".join(e + "\n" for e in errs[ERR_GAP:]) + "C\n").encode()
    lines = ["first", *errs, "A" * 1000 + middle + "C"]
    st.serve()
    page.goto(f"{st.base}/#/t/split/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: bool(page.eval_on_selector_all("#rows .r", "els => els.length")), 15, "no rows shown")
    got = all_rows(page)
    assert got[-1] == {"n": len(lines), "text": "C", "partial": False, "cont": True, "maybe": False,
                       "cut": f" … {1000 + len(middle)} more characters (in the download)"}, got[-1]
    assert not any(r["cont"] or r["maybe"] for r in got[:-1])  # a stderr line begins each row but the first
    scroll_to_top(page)
    assert all_rows(page) == expected_rows(lines)
    # the other way: a window at the log's start holds the line's first part, open at its end; the walk forward
    # finds the rest however far (the index scanned forward for stdout), and counts it exactly
    page.goto(f"{st.base}/#/t/split/h1?at=0")
    page.wait_for_selector("#rows .r.hit")
    assert all_rows(page)[-1] == {"n": None, "text": "A" * 1000, "partial": True, "cont": False, "maybe": False,
                                  "cut": f" … {len(middle) + 1} more characters (in the download)"}


def test_a_line_open_across_the_whole_window_joins_it_from_above(stack: Callable[..., Stack], page: Page) -> None:
    """A stdout line begun, then 600 KB of stderr lines, then its end: a view opened in the stderr lines holds no
    byte of it. Scrolled up, its first part is read: it shows as the line open at the window's end, with how
    much of it lies after; scrolled down, its end joins it: one row, whole. Scrolled down first, its end shows
    as a line begun before, counted; then up, its first part joins it."""
    st = stack()
    errs = [f"e {i:05d} {'.' * 992}" for i in range(600)]
    assert st.run("across", spool_put(st.spool / "across" / "h1") + """
put(sys.stdout, 'first\\n')
put(sys.stdout, 'A' * 1000)
for k in range(0, 600, 100):
    put(sys.stderr, ''.join('e %05d %s\\n' % (i, '.' * 992) for i in range(k, k + 100)))
put(sys.stdout, 'B\\n')
put(sys.stdout, 'last\\n')
""").returncode == 0
    data = spooled(st.spool, "across")
    assert data == ("first\n" + "A" * 1000 + "".join(e + "\n" for e in errs) + "B\nlast\n").encode()
    lines = ["first", *errs, "A" * 1000 + "B", "last"]
    st.serve()
    page.goto(f"{st.base}/#/t/across/h1?at={data.index(errs[300].encode())}")
    page.wait_for_selector("#log-status[data-status=finished]")
    page.wait_for_selector("#rows .r.hit")
    assert {lines[r["n"] - 1][:1] for r in all_rows(page)} == {"e"}  # the window holds stderr lines only
    scroll_to_top(page)
    got = all_rows(page)
    assert got[-1] == {"n": None, "text": "A" * 1000, "partial": True, "cont": False, "maybe": False,
                       "cut": " … 1 more characters (in the download)"}, got[-1]
    scroll_to_end(page)
    assert all_rows(page) == expected_rows(lines)

    # the other way: scrolled down first, the line's end shows, begun before (its first part counted); then up
    page.goto(f"{st.base}/#/t/across/h1?at={data.index(errs[301].encode())}")
    page.wait_for_selector("#rows .r.hit")
    scroll_to_end(page)
    row = next(r for r in all_rows(page) if r["n"] == len(lines) - 1)
    assert row == {"n": len(lines) - 1, "text": "B", "partial": False, "cont": True, "maybe": False,
                   "cut": " … 1000 more characters (in the download)"}, row
    scroll_to_top(page)
    assert all_rows(page) == expected_rows(lines)
