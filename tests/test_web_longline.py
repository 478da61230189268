"""The page over a line longer than any read, that the other stream split: a stdout line written in parts, each
stored as a partial chunk, with stderr lines stored between them. Wherever a view opens (inside the line, at
the end, at the start), the row shows the right bytes of the line, and its "N more characters" counts the
whole line, not only the part the view holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .browser import SHOWN, Page, Stack, spool_put
from .support import spooled

pytestmark = pytest.mark.timeout(180)

PIECE, PIECES = 100_000, 12  # the stdout line: 12 runs of one letter, 1.2 MB, far longer than a read
ERRS = 150  # stderr lines between two of its parts: a read holds more rows than a screen (no read goes on by itself)
LONG = "".join(chr(ord("a") + k) * PIECE for k in range(PIECES))


def task(st: Stack) -> str:
    """Each write reaches the spool before the next is made (its partial chunk stored after 50 ms without the
    line's end), so the stderr lines lie between the stdout line's parts in a known order."""
    return spool_put(st.spool / "split" / "h1") + f"""
put(sys.stdout, 'first line\\n')
for k in range({PIECES}):
    put(sys.stdout, chr(ord('a') + k) * {PIECE})
    put(sys.stderr, ''.join('err %02d %03d\\n' % (k, j) for j in range({ERRS})))
put(sys.stdout, '\\n')
put(sys.stdout, 'last line\\n')
"""


def long_rows(page: Page) -> list[dict[str, Any]]:
    """The rows (numbered ones and the partial ones below them) that show a part of the long line."""
    got: list[dict[str, Any]] = page.eval_on_selector_all("#rows .r, #partial .r", """els => els.map(e => {
        const x = e.querySelector('.x'), cut = [...x.querySelectorAll('.cut')].map((c) => c.textContent);
        let text = '';
        for (const n of x.childNodes) if (!(n.classList && n.classList.contains('cut'))) text += n.textContent;
        return {n: e.dataset.n ? Number(e.dataset.n) : null, partial: e.classList.contains('partial'), text, cut,
                cont: e.classList.contains('cont')};
    })""")
    return [r for r in got if r["text"][:1] in "abcdefghijkl" and len(r["text"]) > 100]


def more(row: dict[str, Any]) -> int:
    """The count of a row's "… N more characters" (0 when it has none)."""
    found = [c for c in row["cut"] if "more characters" in c]
    return int(found[0].split("more characters")[0].strip(" …").replace(",", "")) if found else 0


def test_a_view_inside_a_long_split_line_counts_the_whole_line(stack: Callable[..., Stack], page: Page) -> None:
    st = stack()
    assert st.run("split", task(st)).returncode == 0
    data = spooled(st.spool, "split")
    # the log's bytes: each stderr line between two parts of the stdout line
    errs = [[f"err {k:02d} {j:03d}" for j in range(ERRS)] for k in range(PIECES)]
    parts = [chr(ord("a") + k).encode() * PIECE + "".join(e + "\n" for e in errs[k]).encode() for k in range(PIECES)]
    assert data == b"first line\n" + b"".join(parts) + b"\nlast line\n"
    # its lines, numbered by their newlines: the stderr lines end before the stdout line does
    lines = ["first line", *[e for k in range(PIECES) for e in errs[k]], LONG, "last line"]
    long_n = lines.index(LONG) + 1
    st.serve()

    def check(where: str) -> list[dict[str, Any]]:
        got = long_rows(page)
        assert got, f"{where}: no row shows the long line"
        for r in got:
            assert r["text"] in LONG and len(r["text"]) == SHOWN, (where, r["text"][:20], len(r["text"]))
            assert more(r) == len(LONG) - SHOWN, (where, r["cut"])
            assert r["n"] in (None, long_n), (where, r["n"])
        return got

    def open_at(where: str, at: int | None) -> list[dict[str, Any]]:
        page.goto(f"{st.base}/#/t/split/h1" + (f"?at={at}" if at is not None else ""))
        page.wait_for_selector("#log-status[data-status=finished]")
        page.wait_for_selector("#rows .r")
        numbered = page.eval_on_selector_all("#rows .r", "els => els.map(e => [Number(e.dataset.n), "
                                             "e.querySelector('.x').textContent])")
        assert all(lines[n - 1] == text for n, text in numbered if len(text) < 100), (where, numbered[:3])
        return check(where)

    # at the start: the line's beginning, and the rest of it past the window's end
    got = open_at("start", 0)
    assert got[0]["partial"] and not got[0]["cont"] and got[0]["text"].startswith("a" * 100), got[0]["text"][:5]
    # inside it, in its 7th part: a part from its middle, the line going on both ways
    got = open_at("inside", data.index(b"g" * PIECE) + PIECE // 2)
    assert got[0]["cont"] and got[0]["text"][:1] in "efg", got[0]["text"][:5]  # marked as begun before the window
    # at the end: its end, begun long before the window
    got = open_at("end", None)
    assert [r["n"] for r in got] == [long_n] and got[0]["cont"]

    # then scrolled up to the top: the parts of the line read earlier join its row, which shows its first part
    for _ in range(80):
        if page.locator("#top-edge").is_hidden():
            break
        page.eval_on_selector("#log", "e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
        page.wait_for_timeout(250)
    numbered = page.eval_on_selector_all("#rows .r", "els => els.map(e => Number(e.dataset.n))")
    assert numbered == list(range(1, len(lines) + 1)) and not page.eval_on_selector_all("#partial .r", "e => e.length")
    got = check("scrolled up")
    assert len(got) == 1 and got[0]["text"] == LONG[:SHOWN] and not got[0]["cont"], got[0]["text"][:5]
