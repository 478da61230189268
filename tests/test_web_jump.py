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


def lands(page: Page, key: str, jump: str, wait: int, n: int) -> None:
    """From the middle, `key`, then `jump` (Home or End) `wait` ms into the key's smooth scroll: the view shows line
    `n` (0: not checked) first or last, stays at the top (not following) or the end (following) every frame."""
    home = jump == "Home"
    somewhere_in_the_middle(page)
    page.keyboard.press(key)
    if wait:
        page.wait_for_timeout(wait)  # the key's smooth scroll under way
    page.keyboard.press(jump)
    if n:
        which = "first" if home else "last"
        wait_for(lambda: edge_n(page, which) == n, 30, f"{jump} did not show the {which} line")
    seen = frames(page)
    held = all(top == 0 for top, _ in seen) if home else all(to_end < 4 for _, to_end in seen)
    assert held, f"{key} then {jump} after {wait} ms: carried off the {'top' if home else 'end'} {seen}"
    assert following(page) != home


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
            lands(page, down, "Home", wait, 1)
            lands(page, up, "End", wait, LINES)
    lands(page, "PageDown", "End", 0, LINES)  # at the end already: the key scrolls nothing
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
        lands(page, key, "Home", 0, 1)
        wait_for(lambda: edge_n(page) < BIG, 30, "the window still holds the end")
        lands(page, key, "End", 0, BIG)


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
        lands(page, down, "Home", 0, 0)
        lands(page, up, "End", 0, 0)
    gate.touch()
