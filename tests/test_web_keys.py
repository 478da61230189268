"""The log view's keys (PageUp, PageDown, the arrows, Home, End) move the log wherever the focus is, but in a text
field: a toolbar box just clicked keeps the focus, and the browser alone would scroll nothing from there. """

from __future__ import annotations

from collections.abc import Callable

import pytest

from .browser import Page, Stack, edge_n, wait_for

pytestmark = pytest.mark.timeout(120)

LINES = 3000  # more than a screen, fewer than a read (range.js CHUNK): one window holds the whole log
TASK = f"""
import sys
sys.stdout.write(''.join('k %05d\\n' % i for i in range(1, {LINES} + 1)))
"""


def top(page: Page) -> float:
    got: float = page.eval_on_selector("#log", "e => e.scrollTop")
    return got


def at_bottom(page: Page) -> bool:
    return bool(page.eval_on_selector("#log", "e => e.scrollHeight - e.scrollTop - e.clientHeight < 4"))


def stays(page: Page, where: Callable[[], bool]) -> bool:
    """`where` holds now and for longer than a key's smooth scroll runs (~150 ms)."""
    for _ in range(8):
        if not where():
            return False
        page.wait_for_timeout(50)
    return True


def test_the_logs_keys_work_with_a_toolbar_box_focused(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    assert st.run("keys", TASK).returncode == 0
    st.serve()
    page.goto(f"{st.base}/#/t/keys/h1")
    page.wait_for_selector("#log-status[data-status=finished]")
    wait_for(lambda: edge_n(page) == LINES, 15, "the log's end did not show")
    page.click("#show-ts")  # times shown: the box keeps the focus
    assert page.evaluate("document.activeElement.id") == "show-ts"
    at_end = top(page)
    page.keyboard.press("PageUp")
    wait_for(lambda: top(page) < at_end - 100, 10, "PageUp from the toolbar did not scroll the log")
    assert page.evaluate("document.activeElement.id") == "log"
    up = top(page)
    page.click("#show-n")  # line numbers hidden: the focus in the toolbar again
    page.keyboard.press("ArrowDown")
    wait_for(lambda: top(page) > up, 10, "ArrowDown from the toolbar did not scroll the log")
    # Home while the arrow's smooth scroll still runs: what is left of it does not carry the log off the first line
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Home")
    assert edge_n(page, "first") == 1
    assert stays(page, lambda: top(page) == 0), "Home from the toolbar did not stay on the first line"
    page.click("#show-n")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("End")
    assert stays(page, lambda: at_bottom(page)), "End from the toolbar did not stay on the last line"
    page.click("#q")  # a text field keeps its keys: Home moves its caret, not the log
    at_end = top(page)
    page.keyboard.press("Home")
    page.keyboard.press("PageUp")
    page.wait_for_timeout(500)
    assert top(page) == at_end and page.evaluate("document.activeElement.id") == "q"
