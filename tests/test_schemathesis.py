"""Schemathesis against a real `logship serve`: every operation of the OpenAPI document, fuzzed from the
document itself (examples, coverage and fuzzing phases; valid and invalid data), answers within the
document: no 5xx, only documented status codes and content types, bodies and headers that conform,
invalid data refused and valid data taken. The store holds a finished log and an ibex log; a running log
is served from the spool beside the API. Bounded and seeded, so a run is the same run every time.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.openapi import DOCUMENT

from .support import Api, run_agent, start_agent, stop_agent, watch_once

SEED = 20261204
# Per operation and phase: ~20 operations in ~30 s on an idle machine. The run is bounded by this count (and
# seeded), not by the clock: a loaded CI machine takes several times as long for the same run.
MAX_EXAMPLES = 20
LIVE = "import time\nfor i in range(100000):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"


class Served(Api):
    """`logship serve` (tokens on) over a file store holding two finished logs, beside a spool with a running one."""

    def __init__(self, tmp: Path) -> None:
        self.token = secrets.token_urlsafe(24)  # of the query scope: it reads logs and runs SQL
        super().__init__(tmp, LOGSHIP_API_QUERY_TOKENS=self.token)
        self.tmp = tmp

    def schemathesis(self, config: str, *args: str) -> subprocess.CompletedProcess[str]:
        (self.tmp / "schemathesis.toml").write_text(config)
        cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(self.tmp / "schemathesis.toml"),
               "run", f"{self.url}/api/v1/openapi.json", "--url", self.url,
               "-H", f"Authorization: Bearer {self.token}", "--seed", str(SEED), "-n", str(MAX_EXAMPLES),
               "--generation-database", "none", "--request-timeout", "60", "--workers", "1",
               "--continue-on-failure", "--no-color", "--output-truncate", "false", *args]
        return subprocess.run(cmd, cwd=self.tmp, capture_output=True, text=True, timeout=900,  # a hang guard
                              env={**self.env, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("schemathesis"))
    for task, script in [("done", "import sys\nprint('hello')\nsys.stderr.write('oops\\n')\nprint('world')\n"),
                         ("ibex-7", "print('ibex says hi')")]:
        res = run_agent(s.spool, task, [sys.executable, "-c", script], env=s.env)
        assert res.returncode == 0, res.stderr
    assert watch_once(s.env).returncode == 0  # into the store, the query copies too
    live = start_agent(s.spool, "live", [sys.executable, "-c", LIVE], env=s.env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list((s.spool / "live" / "h1").glob("*.log*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        s.start()
        yield s
    finally:
        s.stop()
        stop_agent(live, s.spool, "live")


CHECKS = """
[checks]
enabled = true  # every check
# No stateful API here (nothing is created or deleted), so these have nothing to look at.
use_after_free.enabled = false
ensure_resource_availability.enabled = false
# A well-formed offset past the end of a log is a 416 (documented): it depends on the log, not the schema.
positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "416", "429"]

[[operations]]
include-operation-id = ["getLogBytes", "headLogBytes", "tailLog"]
# stream= with start= (/log) and from= with lines= (/tail) are a 400 by design, as their descriptions say
# (OpenAPI cannot say two parameters exclude each other). The fuzzing phase leaves those pairs out
# (tests/schemathesis_hooks.py); the coverage phase takes no hooks, so there this one check is off here.
phases.coverage.checks.positive_data_acceptance.enabled = false
"""
# Which log each operation with ids is pointed at: the finished one for the routes that stream until a log
# ends (tail, follow=true); the running one for its metadata and index (live size, a log that grows).
CONFIG = CHECKS + """

[[operations]]
include-operation-id = ["getLog", "getLogIndex"]
parameters = { "path.task" = "live", "path.host" = "h1" }

[[operations]]
include-operation-id = ["getLogBytes", "headLogBytes", "tailLog", "getTaskLogs"]
parameters = { "path.task" = "done", "path.host" = "h1" }

[[operations]]
include-path-regex = "^/ibex/"
parameters = { "path.id" = "7" }

[[operations]]
include-operation-id = "query"
# Any string is a schema-valid `sql`, but only real SQL runs: a 400 for "0" is right, not a mismatch.
checks.positive_data_acceptance.enabled = false
"""


@pytest.mark.timeout(1200)
def test_every_operation_answers_within_the_document(served: Served) -> None:
    res = served.schemathesis(CONFIG, "--phases", "examples,coverage,fuzzing")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-20000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    assert selected and selected[1] == selected[2] and f"Tested: {selected[1]}" in out, out[-5000:]  # every one
    assert int(selected[1]) >= len(DOCUMENT["paths"]) and "Missing test data" not in out, out[-5000:]  # real logs


@pytest.mark.timeout(1200)
def test_random_ids_are_fuzzed_too(served: Served) -> None:
    """The same without pointing the routes at real logs: ids of every shape, valid and not."""
    res = served.schemathesis(CHECKS, "--phases", "coverage,fuzzing", "--include-path-regex", "[{]", "-n", "10")
    assert res.returncode == 0, (res.stdout + res.stderr)[-20000:]
