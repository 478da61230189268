"""Is it hung? The page shows a running log's silence and its task's processes, marks silent logs in the task
list, and says when the silence policy ended a log (issue 15), in Chromium against `logship run` and the API
beside its spool."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.format import names

from .browser import Page, Stack, texts, wait_for
from .support import LOGSHIP, start_agent

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the agent samples Linux /proc")]

FAST = {"LOGSHIP_AGENT_SAMPLE_SECONDS": "0.5"}  # a sample every half second (5 s by default)
FINISHED = "#log-status[data-status=finished]"
MARK = "#silence:not([hidden])"


def tree(page: Page) -> list[dict[str, Any]]:
    """The process table the page shows: pid, state, depth in the tree and the cells as shown."""
    got: list[dict[str, Any]] = page.eval_on_selector_all("#liveness tbody tr", """trs => trs.map(tr => ({
        pid: Number(tr.dataset.pid), state: tr.dataset.state, depth: Number(tr.dataset.depth),
        cells: [...tr.cells].map(c => c.textContent)}))""")
    return got


def listed(page: Page) -> list[str]:
    got: list[str] = page.eval_on_selector_all("#tasks tbody tr", "trs => trs.map(tr => tr.dataset.task)")
    return got


def seconds(page: Page) -> int:
    return int(page.get_attribute("#silence", "data-seconds"))


def test_a_silent_task_shows_its_silence_and_processes_until_output_resumes(stack: Callable[..., Stack],
                                                                              page: Page) -> None:
    # a policy of 10 s (warn) shows the silence from 5 s on, instead of the 30 s of a run without one
    st = stack(**FAST, LOGSHIP_AGENT_SILENCE_TIMEOUT="10", LOGSHIP_AGENT_ON_SILENCE="warn")
    st.serve()
    script = "echo started; sleep 600; echo resumed; while :; do echo tick; sleep 0.3; done"
    agent = start_agent(st.spool, "quiet", ["sh", "-c", script], env=st.env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    st.agents.append((agent, "quiet", "h1"))
    wait_for(lambda: (st.spool / "quiet" / "h1" / names.LIVENESS_FILE).exists(), 20, "no liveness.json")
    loud = st.start("loud", "import time\nwhile True: print('x', flush=True); time.sleep(0.2)")

    # the list marks the silent log, not the one that keeps printing
    page.goto(f"{st.base}/#/")
    mark = page.wait_for_selector("#tasks tr[data-task=quiet] .badge.silent", timeout=30_000)
    assert re.fullmatch(r"silent \d+ s", mark.inner_text()), mark.inner_text()
    assert page.locator("#tasks tr[data-task=loud] .badge.silent").count() == 0
    assert page.locator("#tasks tr[data-task=loud]").get_attribute("data-status") == "running"
    page.select_option("#f-silent", "now")  # the "Output" filter: the silent ones only
    wait_for(lambda: listed(page) == ["quiet"], 10, "the filter does not keep only the silent log")
    page.select_option("#f-silent", "10m")  # none has been silent that long (the API's silent_since=, and the page)
    wait_for(lambda: listed(page) == [], 10, "silent 10 min+ lists a log")
    page.select_option("#f-silent", "")
    wait_for(lambda: sorted(listed(page)) == ["loud", "quiet"], 10, "the filter does not go")

    # the log's view: "silent N s", counting on between samples, and the tree as ps shows it
    page.evaluate("() => { location.hash = '#/t/quiet/h1'; }")  # as a click in the list does
    page.wait_for_selector(MARK)
    assert re.fullmatch(r"silent \d+ s", page.inner_text("#silence"))
    first = seconds(page)
    assert first >= 5
    wait_for(lambda: seconds(page) >= first + 2, 10, "the silence shown does not count on")
    page.wait_for_selector("#liveness:not([hidden]) tbody tr")
    heads = page.eval_on_selector_all("#liveness thead th", "ths => ths.map(t => t.textContent)")
    assert heads == ["PID", "STAT", "TIME", "RSS", "WCHAN", "COMMAND"]
    procs = tree(page)
    sh, sleep = procs[0], next(p for p in procs if p["cells"][5].endswith("sleep 600"))
    assert sh["depth"] == 0 and sh["cells"][5] == f"sh -c {script}"
    assert (sleep["state"], sleep["depth"]) == ("S", 1)  # asleep, under its shell
    assert sleep["cells"][1] == "S sleeping" and sleep["cells"][5] == "└ sleep 600"
    assert re.fullmatch(r"\d+\.\d{2} s", sleep["cells"][2]), sleep["cells"]  # CPU time, human
    assert re.fullmatch(r"[\d.]+ (KiB|MiB)", sleep["cells"][3]), sleep["cells"]  # RSS, human
    assert "nanosleep" in sleep["cells"][4] or sleep["cells"][4] == "—"  # wchan where readable
    assert "last output" in page.inner_text("#liveness summary")
    assert texts(page) == ["started"]

    # output resumes: the mark and the tree go at once (the tail says so before the next sample)
    os.kill(sleep["pid"], signal.SIGTERM)
    page.wait_for_selector("#rows .r >> text=resumed", timeout=5000)
    started = time.monotonic()
    page.wait_for_selector("#silence", state="hidden", timeout=5000)
    assert page.locator("#liveness").is_hidden()
    assert time.monotonic() - started < 2
    time.sleep(4)  # samples and polls come and go: it stays unmarked while output flows
    assert page.locator("#silence").is_hidden() and page.locator("#liveness").is_hidden()
    page.goto(f"{st.base}/#/")
    page.wait_for_selector("#tasks tr[data-task=quiet]")
    time.sleep(3.5)  # one more refresh of the list
    assert page.locator("#tasks tr[data-task=quiet] .badge.silent").count() == 0
    page.select_option("#f-silent", "now")
    wait_for(lambda: listed(page) == [], 10, "a log printing again is still listed as silent")
    assert agent.poll() is None and loud.poll() is None


def test_a_task_killed_for_its_silence_says_so(stack: Callable[..., Stack], page: Page) -> None:
    st = stack(**FAST)
    st.serve()
    # the task ignores TERM: KILL ends it after the grace (6 s), while the view shows a kill under way
    agent = subprocess.Popen([*LOGSHIP, "run", "--task", "hung", "--host", "h1", "--silence-timeout", "2",
                              "--on-silence", "kill", "--silence-grace", "6", "--", "sh", "-c",
                              "trap '' TERM; echo working; sleep 600"], env=st.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (st.spool / "hung" / "h1" / names.RUN_FILE).exists(), 20, "the agent did not start")
        page.goto(f"{st.base}/#/t/hung/h1")  # open while it runs: the tail's end brings the reason
        page.wait_for_selector("#liveness summary >> text=Being killed for its silence", timeout=20_000)
        page.wait_for_selector(FINISHED, timeout=30_000)
        assert agent.wait(30) == 124
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    want = "killed after 2 s of silence · exit 124"
    wait_for(lambda: page.inner_text("#log-status") == want, 10, f"badge {page.inner_text('#log-status')!r}")
    time.sleep(1.5)  # longer than the view's count of the silence ticks: it stopped at the end
    for fresh in (False, True):  # as it ended, then opened again
        if fresh:
            page.reload()
            page.wait_for_selector(FINISHED)
            assert page.inner_text("#log-status") == want
        assert page.get_attribute("#log-status", "data-reason") == "silence"  # shown as a warning, not green
        assert page.locator("#silence").is_hidden()  # a finished log is not "silent"
        page.wait_for_selector("#liveness:not([hidden]) tbody tr")
        assert "when they were killed" in page.inner_text("#liveness summary")
        page.select_option("#tz", "utc")  # its time follows the zone toggle
        killed_at = page.locator("#liveness summary [data-ts]")
        assert killed_at.inner_text() == killed_at.get_attribute("title").removesuffix(" UTC")[:19]
        assert "└ sleep 600" in [p["cells"][5] for p in tree(page)]  # the tree at the kill
        assert texts(page) == ["working"]
    # the list: finished, not marked silent, one badge for what ended it (the listing's end_reason); none for a
    # task that exited by itself
    assert st.run("signalled", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)").returncode == 143
    assert st.run("exits", "raise SystemExit(3)").returncode == 3
    page.goto(f"{st.base}/#/")
    page.wait_for_selector("#tasks tr[data-task=hung][data-status=finished]")
    page.wait_for_selector("#tasks tr[data-task=exits]")
    assert page.locator("#tasks tr[data-task=hung] .badge.silent").count() == 0
    ended = {t: page.locator(f"#tasks tr[data-task={t}] .badge.end").all_inner_texts()
             for t in ("hung", "signalled", "exits")}
    assert ended == {"hung": ["killed: silence"], "signalled": ["killed: signal"], "exits": []}, ended


def test_a_silent_task_that_computes_shows_it(stack: Callable[..., Stack], page: Page) -> None:
    """Silent is not hung when it computes: the spinning process is R, its CPU time grows, the summary says
    how busy the tree is now."""
    st = stack(**FAST, LOGSHIP_AGENT_SILENCE_TIMEOUT="10", LOGSHIP_AGENT_ON_SILENCE="warn")  # marks from 5 s
    st.serve()
    st.start("spin", "print('thinking', flush=True)\nwhile True: pass")
    page.goto(f"{st.base}/#/t/spin/h1")
    page.wait_for_selector(MARK, timeout=30_000)
    page.wait_for_selector("#liveness tbody tr[data-state=R]")
    row = page.locator("#liveness tbody tr").first
    assert row.locator("td.stat").inner_text() == "R running"
    wait_for(lambda: "% now" in page.inner_text("#liveness summary"), 15, "no CPU rate")
    busy = int(re.search(r"(\d+)% now", page.inner_text("#liveness summary")).group(1))  # type: ignore[union-attr]
    assert busy >= 3, page.inner_text("#liveness summary")  # not idle (a shared, busy machine gives it little)
    cpu = float(row.locator("td").nth(2).inner_text().removesuffix(" s"))
    wait_for(lambda: float(page.locator("#liveness tbody tr").first.locator("td").nth(2).inner_text()
                           .removesuffix(" s")) > cpu, 15, "its CPU time does not grow")


def test_the_all_hosts_view_marks_the_silent_host(stack: Callable[..., Stack], page: Page) -> None:
    st = stack(**FAST, LOGSHIP_AGENT_SILENCE_TIMEOUT="10", LOGSHIP_AGENT_ON_SILENCE="warn")  # marks from 5 s
    st.serve()
    st.start("pair", "import time\nprint('waiting', flush=True)\ntime.sleep(600)", host="h1")
    st.start("pair", "import time\nwhile True: print('x', flush=True); time.sleep(0.2)", host="h2")
    page.goto(f"{st.base}/#/t/pair")
    mark = page.wait_for_selector("#host-filter .host[data-host=h1] .badge.silent", timeout=30_000)
    assert re.fullmatch(r"silent \d+ s", mark.inner_text())
    time.sleep(1.5)
    assert page.locator("#host-filter .host[data-host=h2] .badge.silent").count() == 0
    assert page.locator(MARK).count() == 0  # the one-log mark and panel are not the all-hosts view's
    assert page.locator("#liveness").is_hidden()


def test_the_page_formats_silence_and_trees_at_a_glance(stack: Callable[..., Stack], page: Page) -> None:
    """The helpers of liveness.js, in the browser: durations, the default threshold, and a hostile sample
    (a parent loop, a process its own parent) that still shows every process once."""
    st = stack()
    st.serve()
    page.goto(f"{st.base}/#/")
    got = page.evaluate("""async () => {
        const m = await import('./web/liveness.js');
        const p = (pid, ppid) => ({ pid, ppid });
        return {
            silence: [5, 59.9, 60, 720, 3600, 3660, 86400 + 7200].map(m.fmtSilence),
            cpu: [0.031, 65, 3723].map(m.fmtCpu),
            after: [m.silentAfter(null), m.silentAfter({ silence: { timeout_seconds: 600 } }),
                    m.silentAfter({ silence: { timeout_seconds: 8 } })],
            forest: m.forest([p(10, 1), p(12, 11), p(11, 10), p(13, 10), p(20, 21), p(21, 20), p(30, 30)])
                .map(({ p, depth }) => [p.pid, depth]),
        };
    }""")
    assert got["silence"] == ["5 s", "59 s", "1 min", "12 min", "1 h", "1 h 1 min", "1 d 2 h"]
    assert got["cpu"] == ["0.03 s", "1:05", "1:02:03"]
    assert got["after"] == [30, 30, 4]
    assert got["forest"] == [[10, 0], [11, 1], [12, 2], [13, 1], [30, 0], [20, 0], [21, 0]]
