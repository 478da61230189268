"""Home and End pressed while the browser still runs the smooth scroll of a key pressed just before (an arrow,
PageUp, PageDown) land on the first or last line and stay there: what is left of that scroll does not carry the log
away (Chromium goes on with it after scrollTop is set; pane.js stopScroll)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .browser import Page, Stack, edge_n, wait_for

pytestmark = pytest.mark.timeout(180)

LINES = 3000  # more than a screen, fewer than a read (range.js CHUNK): one window holds the whole log
BIG = 60_000  # ~4.5 MB: far more than a window, so Home and End read a new one


def quiet(gate: Path, n: int = LINES) -> str:
    """n numbered lines at once, then nothing until `gate` exists: a running log that stands still."""
    return f"""
import os, sys, time
sys.stdout.write(''.join('j %05d\\n' % i for i in range(1, {n} + 1))); sys.stdout.flush()
while not os.path.exists({str(gate)!r}): time.sleep(0.05)
"""


BIG_TASK = f"""
import sys
pad = '.' * 60
for k in range(1, {BIG} + 1, 5000):
    sys.stdout.write(''.join('b %06d %s\\n' % (i, pad) for i in range(k, min(k + 5000, {BIG} + 1))))
"""


def frames(page: Page, ms: int = 700) -> list[tuple[float, float]]:
    """How far the log is from its top, and from its end, at each frame for `ms` ms (longer than a key's smooth
    scroll): [(top, to_end), ...]."""
    got: list[tuple[float, float]] = page.evaluate("""ms => new Promise((done) => {
        const seen = [], t0 = performance.now();
        const step = () => {
            const log = document.querySelector('#log');
            seen.push([log.scrollTop, log.scrollHeight - log.scrollTop - log.clientHeight]);
            if (performance.now() - t0 < ms) requestAnimationFrame(step); else done(seen);
        };
        requestAnimationFrame(step);
    })""", ms)
    return got


def following(page: Page) -> bool:
    return bool(page.get_attribute("#follow", "aria-pressed") == "true")


def somewhere_in_the_middle(page: Page) -> None:
    page.eval_on_selector("#log", "e => { e.scrollTop = e.scrollHeight / 2; }")
    wait_for(lambda: not following(page), 10, "the log still follows")
    page.wait_for_timeout(300)  # the scroll event handled, nothing moving


def home_lands(page: Page, key: str, wait: int, first: int = 1) -> None:
    somewhere_in_the_middle(page)
    page.keyboard.press(key)
    if wait:
        page.wait_for_timeout(wait)  # the key's smooth scroll under way
    page.keyboard.press("Home")
    if first:
        wait_for(lambda: edge_n(page, "first") == first, 30, "Home did not show the first line")
    seen = frames(page)
    assert all(top == 0 for top, _ in seen), f"{key} then Home after {wait} ms: carried off the top {seen}"
    assert not following(page)


def end_lands(page: Page, key: str, wait: int, last: int) -> None:
    somewhere_in_the_middle(page)
    page.keyboard.press(key)
    if wait:
        page.wait_for_timeout(wait)
    page.keyboard.press("End")
    if last:
        wait_for(lambda: edge_n(page) == last, 30, "End did not show the last line")
    seen = frames(page)
    assert all(to_end < 4 for _, to_end in seen), f"{key} then End after {wait} ms: carried off the end {seen}"
    assert following(page)


def test_home_and_end_right_after_a_scrolling_key(stack: Callable[..., Stack], page: Page, tmp_path: Path) -> None:
    st = stack()
    st.watcher()
    st.serve()
    gate = tmp_path / "gate"
    st.start("jump", quiet(gate))
    page.goto(f"{st.base}/#/t/jump/h1")
    page.wait_for_selector("#log-status[data-status=running]")
    wait_for(lambda: edge_n(page) == LINES, 30, "the log's end did not show")
    page.click("#log")
    for wait in (0, 60):  # at once, and halfway through the key's scroll
        for down, up in (("ArrowDown", "ArrowUp"), ("PageDown", "PageUp")):
            home_lands(page, down, wait)
            end_lands(page, up, wait, LINES)
    end_lands(page, "PageDown", 0, LINES)  # at the end already: the key scrolls nothing
    # the user moving the log right after a jump moves it: the jump holds its target only until then
    page.keyboard.press("Home")
    page.keyboard.press("ArrowDown")
    wait_for(lambda: frames(page, 100)[-1][0] > 0, 10, "ArrowDown right after Home did not scroll")
    page.keyboard.press("End")
    page.keyboard.press("ArrowUp")
    wait_for(lambda: frames(page, 100)[-1][1] > 4 and not following(page), 10, "ArrowUp right after End did not scroll")
    page.keyboard.press("Home")
    box = page.locator("#log").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 300)
    wait_for(lambda: frames(page, 100)[-1][0] > 0, 10, "the wheel right after Home did not scroll")
    gate.touch()


def test_home_and_end_that_read_a_new_window(stack: Callable[..., Stack], page: Page) -> None:
    """The window holds neither end: Home and End read one, and the key's scroll stops at the key, not after."""
    st = stack()
    assert st.run("big", BIG_TASK).returncode == 0
    st.serve()
    page.goto(f"{st.base}/#/t/big/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: edge_n(page) == BIG, 30, "the log's end did not show")
    page.click("#log")
    for key in ("ArrowDown", "PageDown"):
        home_lands(page, key, 0)
        wait_for(lambda: edge_n(page) < BIG, 30, "the window still holds the end")
        end_lands(page, key, 0, BIG)


def test_home_and_end_on_all_hosts(stack: Callable[..., Stack], page: Page, tmp_path: Path) -> None:
    st = stack()
    st.watcher()
    st.serve()
    gate = tmp_path / "gate"
    for host in ("h1", "h2"):
        st.start("pair", quiet(gate, LINES // 2), host=host)
    page.goto(f"{st.base}/#/t/pair")
    wait_for(lambda: page.locator("#rows .r").count() == 400, 30, "both hosts' last lines did not show")  # 200 each
    page.click("#log")
    for down, up in (("ArrowDown", "ArrowUp"), ("PageDown", "PageUp")):
        home_lands(page, down, 0, first=0)
        end_lands(page, up, 0, last=0)
    gate.touch()
